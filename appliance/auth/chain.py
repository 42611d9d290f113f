"""The API's authenticator: trusted header, then the Bearer credential by its shape.

Order, for each request to ``/v1`` (and the external-model route):

1. An identity header (trusted-header mode): from a trusted proxy it is the
   caller; from anyone else the request is refused outright (401, logged).
2. ``Authorization: Bearer sk-sluice-...``: a persistent API key.
3. ``Authorization: Bearer eyJ...`` (a JWT), when ``[oidc].api_audience`` is
   set: an access token of the provider.
4. Any other bearer token: the operator-provisioned keys of ``[[api_keys]]``
   (and the demo's key).

A credential that fails its check is not tried against the next kind.  When
the identity store cannot be reached, the check raises
:class:`~.base.IdentityUnavailable` (503): it never lets the request through.
"""

from __future__ import annotations

from starlette.requests import HTTPConnection

from .api_keys import ApiKeyStore, bearer_token
from .base import Principal
from .events import security_event
from .identity import ClaimNames, identity_from_claims
from .keystore import KEY_PREFIX, KeyStore
from .tokens import TokenRejected, TokenVerifier, looks_like_jwt
from .trusted_header import HeaderSpoofed, TrustedHeaderAuthenticator
from .users import UserDirectory

__all__ = ["ChainAuthenticator", "JwtAuthenticator"]


class JwtAuthenticator:
    """Bearer JWT access tokens of the provider, for API users."""

    def __init__(
        self,
        verifier: TokenVerifier,
        audience: str,
        claims: ClaimNames,
        scope: str | None = None,
        users: UserDirectory | None = None,
    ) -> None:
        self._verifier = verifier
        self._audience = audience
        self._claims = claims
        self._scope = scope
        self._users = users

    async def principal(self, connection: HTTPConnection, token: str) -> Principal | None:
        try:
            claims = await self._verifier.verify(token, self._audience, scope=self._scope)
            identity = identity_from_claims(self._verifier.issuer, claims, self._claims)
        except TokenRejected as exc:
            security_event("bearer_jwt_rejected", reason=exc.reason, peer=connection.client.host if connection.client else None)
            return None
        except ValueError:
            security_event("bearer_jwt_rejected", reason="bad_claims", peer=connection.client.host if connection.client else None)
            return None
        if self._users is not None:
            await self._users.seen(identity, "jwt")
        return Principal(identity.user, groups=identity.groups)

    async def authenticate(self, connection: HTTPConnection) -> Principal | None:
        token = bearer_token(connection)
        if token is None or not looks_like_jwt(token):
            return None
        return await self.principal(connection, token)


class ChainAuthenticator:
    def __init__(
        self,
        operator_keys: ApiKeyStore,
        keys: KeyStore | None = None,
        jwt: JwtAuthenticator | None = None,
        header: TrustedHeaderAuthenticator | None = None,
    ) -> None:
        self._operator_keys = operator_keys
        self._keys = keys
        self._jwt = jwt
        self._header = header

    async def authenticate(self, connection: HTTPConnection) -> Principal | None:
        if self._header is not None:
            try:
                principal = await self._header.principal(connection)
            except HeaderSpoofed:
                return None
            if principal is not None:
                return principal
        token = bearer_token(connection)
        if token is None:
            return None
        if token.startswith(KEY_PREFIX) and self._keys is not None:
            return await self._keys.verify(token)
        if self._jwt is not None and looks_like_jwt(token):
            return await self._jwt.principal(connection, token)
        return self._operator_keys.verify(token)
