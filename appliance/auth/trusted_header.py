"""Trusted-header mode: a reverse proxy that authenticates users tells us who they are.

Institutions that already run an authenticating proxy (Apache with
mod_auth_openidc, as the published system did) set a header with the user
and their groups.  That header is believed only from the proxies' own
addresses: the TCP peer (``request.client.host``) must be inside one of the
configured networks.  ``X-Forwarded-For`` and similar headers are never read
for this decision -- a client can write anything into them.

Any identity header from another peer is a spoofing attempt: it is refused
(the request gets 401, whatever other credentials it carries) and logged as
a ``trusted_header_spoofed`` security event.

The proxy must strip these headers from what clients send (mod_auth_openidc
does so for its own ``OIDC_CLAIM_*`` headers; with ``RequestHeader set`` the
configured value replaces the client's).
"""

from __future__ import annotations

import ipaddress
from typing import Final

from starlette.requests import HTTPConnection

from policy.errors import PeerError

from .base import Principal
from .config import TrustedHeaderSettings
from .events import security_event
from .identity import Identity, clean_groups, user_id
from .users import UserDirectory

__all__ = ["HeaderSpoofed", "TrustedHeaderAuthenticator"]

# Header values longer than this are not a user name or a group list we would accept.
MAX_HEADER_CHARS: Final = 8192


class HeaderSpoofed(PeerError):
    """An identity header came from a peer that is not a trusted proxy."""

    code = "header_spoofed"
    status = 401


def _peer(connection: HTTPConnection) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    client = connection.client
    if client is None:
        return None
    try:
        address = ipaddress.ip_address(client.host)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class TrustedHeaderAuthenticator:
    def __init__(self, settings: TrustedHeaderSettings, users: UserDirectory | None = None) -> None:
        self._settings = settings
        self._users = users
        self._headers = tuple(
            h for h in (settings.user_header, settings.groups_header, settings.email_header, settings.name_header) if h
        )

    def trusted_peer(self, connection: HTTPConnection) -> bool:
        peer = _peer(connection)
        return peer is not None and any(peer in network for network in self._settings.proxies)

    def identity(self, connection: HTTPConnection) -> Identity | None:
        """The identity the proxy asserts; None when there is none; raises HeaderSpoofed."""
        headers = connection.headers
        present = [h for h in self._headers if h in headers]
        if not present:
            return None
        if not self.trusted_peer(connection):
            client = connection.client
            security_event(
                "trusted_header_spoofed", peer=client.host if client else None, header=present[0], path=connection.url.path
            )
            raise HeaderSpoofed
        settings = self._settings
        value = headers.get(settings.user_header, "").strip()
        if not value or len(value) > MAX_HEADER_CHARS:
            return None
        try:
            user = user_id(settings.issuer, value)
            groups = frozenset[str]()
            if settings.groups_header:
                raw = headers.get(settings.groups_header, "")
                if len(raw) > MAX_HEADER_CHARS:
                    raise ValueError("groups header too long")
                groups = clean_groups(raw.split(settings.groups_separator))
        except ValueError:
            security_event("trusted_header_invalid", peer=connection.client.host if connection.client else None)
            return None
        email = headers.get(settings.email_header) if settings.email_header else None
        name = headers.get(settings.name_header) if settings.name_header else None
        return Identity(user, _short(email), _short(name), groups)

    async def principal(self, connection: HTTPConnection) -> Principal | None:
        """As :meth:`identity`, recorded for the user's keys and made a principal; raises HeaderSpoofed."""
        identity = self.identity(connection)
        if identity is None:
            return None
        if self._users is not None:
            await self._users.seen(identity, "header")
        return Principal(identity.user, groups=identity.groups)

    async def authenticate(self, connection: HTTPConnection) -> Principal | None:
        try:
            return await self.principal(connection)
        except HeaderSpoofed:
            return None


def _short(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    return value if 0 < len(value) <= 256 and value.isprintable() else None
