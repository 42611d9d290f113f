"""Build the appliance's authentication, access policy and account pages from its settings.

Which access policy applies:

* ``[access].policy`` set: that group policy file.
* ``[access].unsafe_allow_all = true``: every caller may use every model;
  named unsafe and logged (``unsafe_allow_all``) at every start.
* otherwise: the packaged ``policy/access.toml``, which lists no group, so
  nothing is allowed until the operator says so (default deny, also with
  only operator-provisioned ``[[api_keys]]``, which carry their ``groups``).
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import httpx2
from starlette.routing import BaseRoute

from policy.errors import SluiceError
from policy.events import event_line

from ._db import Database, PostgresDatabase, open_database
from .access import AccessPolicyError, load_access_policy
from .api_keys import ApiKeyStore
from .base import AccessPolicy, Authenticator, Principal, UnsafeAllowAll
from .browser import BrowserSessionAuthenticator
from .chain import ChainAuthenticator, JwtAuthenticator
from .config import DEFAULT_ACCESS_POLICY, ConfigError, IdentitySettings
from .keystore import KeyStore
from .oidc import OidcClient
from .provider import PROVIDER_TIMEOUT, Provider
from .secret import read_secret_file
from .session_cookie import SessionCookieReader
from .sessions import SessionStore
from .tokens import TokenVerifier
from .trusted_header import TrustedHeaderAuthenticator
from .users import UserDirectory
from .web import AccountPages

if TYPE_CHECKING:
    from ..app import Appliance

__all__ = ["IdentityServices", "build_identity"]

log = logging.getLogger("sluice.auth")


@dataclass
class IdentityServices:
    """What the rest of the appliance uses; also an appliance extension (routes + aclose)."""

    authenticator: Authenticator
    access: AccessPolicy
    keys: KeyStore | None = None
    users: UserDirectory | None = None
    pages: Callable[[Callable[[Principal], Awaitable[list[str] | None]]], AccountPages] | None = None
    # Models beside the clusters' that a principal may use (the external proxy's), for the account page.
    extra_models: Callable[[Principal], list[str]] | None = None
    _http: httpx2.AsyncClient | None = None
    _db: Database | None = field(default=None, repr=False)

    def routes(self, appliance: Appliance) -> list[BaseRoute]:
        if self.pages is None:
            return []

        async def models(principal: Principal) -> list[str] | None:
            extra = self.extra_models(principal) if self.extra_models is not None else []
            try:
                names = await appliance.clusters.models()
            except SluiceError:
                return None
            return sorted({*self.access.visible(principal, names), *extra})

        return self.pages(models).routes()

    async def start(self) -> None:
        """Connect to the identity store (PostgreSQL) and check its schema; raises SchemaError, OSError."""
        if self._db is not None:
            await self._db.start()

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
        if self._db is not None:
            await self._db.aclose()


def build_identity(
    settings: IdentitySettings,
    operator_keys: ApiKeyStore,
    transport: httpx2.AsyncBaseTransport | None = None,
) -> IdentityServices:
    """Everything identity needs, from validated settings; raises ConfigError."""
    auth = settings.auth
    db: Database | None = None
    users = keys = None
    if auth.database_dsn_file is not None:
        try:
            dsn = read_secret_file(auth.database_dsn_file, "auth.database_dsn_file")
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        db = PostgresDatabase(dsn)
    elif auth.database is not None:
        try:
            db = open_database(auth.database)
        except (sqlite3.Error, OSError, ValueError, RuntimeError) as exc:
            raise ConfigError(f"auth.database: cannot open {auth.database}: {exc}") from None
    if db is not None:
        users = UserDirectory(db, auth.groups_max_age)
        keys = KeyStore(db, users)

    access: AccessPolicy
    if settings.unsafe_allow_all:
        log.warning(event_line("unsafe_allow_all", reason="[access] unsafe_allow_all = true: every caller may use every model"))
        access = UnsafeAllowAll()
    else:
        try:
            access = load_access_policy(settings.access_policy or DEFAULT_ACCESS_POLICY)
        except AccessPolicyError as exc:
            raise ConfigError(f"access.policy: {exc}") from None

    http = None
    jwt = oidc = None
    if settings.oidc is not None:
        config = settings.oidc
        http = httpx2.AsyncClient(transport=transport, timeout=PROVIDER_TIMEOUT, follow_redirects=False)
        provider = Provider(config.issuer, http)
        verifier = TokenVerifier(config.issuer, provider.jwks, config.algorithms, config.leeway)
        secret = None
        if config.client_secret_file is not None:
            try:
                secret = read_secret_file(config.client_secret_file, "oidc.client_secret_file")
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
        if auth.public_url is None:
            raise ConfigError("auth.public_url is required with [oidc]")
        oidc = OidcClient(config, provider, verifier, auth.public_url + "/account/callback", secret, transport)
        if config.api_audience is not None:
            jwt = JwtAuthenticator(verifier, config.api_audience, config.claims, config.api_scope, users)

    header = None
    if auth.trusted_header is not None:
        header = TrustedHeaderAuthenticator(auth.trusted_header, users)
        log.info(event_line("trusted_header_mode", proxies=",".join(str(n) for n in auth.trusted_header.proxies)))

    services = IdentityServices(ChainAuthenticator(operator_keys, keys, jwt, header), access, keys, users, _http=http, _db=db)
    if settings.users_sign_in:
        if auth.session_secret_file is None or auth.public_url is None or db is None:  # parse_identity ensures these
            raise ConfigError("auth.database, auth.public_url and auth.session_secret_file are required")
        try:
            session_secret = read_secret_file(auth.session_secret_file, "auth.session_secret_file", min_length=32)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if not auth.cookie_secure:
            log.warning(event_line("unsafe_insecure_cookies", reason="auth.cookie_secure = false (local http only)"))
        sessions = SessionStore(db, auth.session_lifetime)
        public_url = auth.public_url
        if users is None or keys is None:
            raise ConfigError("auth.database is required when users sign in")
        # The web chat calls /v1 with the session cookie plus its CSRF header (appliance/auth/browser.py).
        cookie = SessionCookieReader(session_secret, secure=auth.cookie_secure, max_age=int(sessions.lifetime))
        services.authenticator = BrowserSessionAuthenticator(services.authenticator, cookie, sessions, users, public_url)

        def pages(models: Callable[[Principal], Awaitable[list[str] | None]]) -> AccountPages:
            return AccountPages(
                public_url=public_url,
                session_secret=session_secret,
                cookie_secure=auth.cookie_secure,
                cookie_samesite=auth.cookie_samesite,
                sessions=sessions,
                users=users,
                keys=keys,
                access=access,
                models=models,
                key_max_days=auth.key_max_days,
                oidc=oidc,
                header=header,
                header_logout_url=auth.trusted_header.logout_url if auth.trusted_header else None,
            )

        services.pages = pages
    return services
