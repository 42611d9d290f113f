"""OpenID Connect sign-in: authorization code flow with PKCE, state and nonce, via authlib.

:meth:`OidcClient.begin` makes the authorization request and the values the
browser's (signed) session must keep until the callback: a fresh ``state``
(bound to this browser: login CSRF), ``nonce`` (bound to the ID token:
replay) and PKCE ``code_verifier`` (bound to the code: interception), with
``code_challenge_method=S256`` always.  :meth:`OidcClient.finish` checks the
callback against them -- once: the values are consumed -- exchanges the code
with the verifier, and verifies the ID token (signature against the
provider's key set, issuer, audience, ``azp``, expiry, ``nonce``).  Only an
ID token makes a sign-in; a token response without one is refused.

authlib (``AsyncOAuth2Client``) builds the authorization URL with the PKCE
challenge and performs the token request with client authentication; pyjwt
verifies the token (:mod:`.tokens`).
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import httpx2
from authlib.integrations.base_client import OAuthError
from authlib.integrations.httpx_client import AsyncOAuth2Client

from policy.errors import PeerError

from .config import OidcSettings
from .identity import Identity, identity_from_claims
from .provider import PROVIDER_TIMEOUT, Provider, ProviderError, get_json
from .secret import Secret
from .tokens import TokenRejected, TokenVerifier

__all__ = ["LOGIN_TIMEOUT", "LoginFailed", "OidcClient", "PendingLogin", "SignIn"]

# A sign-in must come back from the provider within this many seconds.
LOGIN_TIMEOUT: Final = 600.0
# Lengths of the random values (characters of base64url): 256 bits each; the
# verifier is 86 characters, inside RFC 7636's 43 to 128.
_STATE_BYTES: Final = 32
_VERIFIER_BYTES: Final = 64
# An authorization code longer than this is not one.
MAX_CODE_CHARS: Final = 4096


class LoginFailed(PeerError):
    """The sign-in did not complete; ``reason`` (also its ``code``) is a short code for
    logs and the error page."""

    status = 401

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class PendingLogin:
    """What the browser's signed session keeps between the redirect and the callback."""

    state: str
    nonce: str
    verifier: str
    started: float

    def to_dict(self) -> dict[str, Any]:
        return {"state": self.state, "nonce": self.nonce, "verifier": self.verifier, "started": self.started}

    @classmethod
    def from_dict(cls, data: Any) -> PendingLogin | None:
        if not isinstance(data, dict):
            return None
        state, nonce, verifier, started = (data.get("state"), data.get("nonce"), data.get("verifier"), data.get("started"))
        if not (isinstance(state, str) and isinstance(nonce, str) and isinstance(verifier, str)) or not isinstance(
            started, int | float
        ):
            return None
        return cls(state, nonce, verifier, started)


@dataclass(frozen=True, slots=True)
class SignIn:
    identity: Identity
    id_token: str


class OidcClient:
    def __init__(
        self,
        settings: OidcSettings,
        provider: Provider,
        verifier: TokenVerifier,
        redirect_uri: str,
        client_secret: Secret | None = None,
        transport: httpx2.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.provider = provider
        self._verifier = verifier
        self.redirect_uri = redirect_uri
        self._secret = client_secret
        self._transport = transport
        self._clock = clock

    def _oauth_client(self) -> AsyncOAuth2Client:
        extra: dict[str, Any] = {"timeout": PROVIDER_TIMEOUT, "follow_redirects": False}
        if self._transport is not None:
            extra["transport"] = self._transport
        return AsyncOAuth2Client(
            client_id=self.settings.client_id,
            client_secret=None if self._secret is None else self._secret.reveal(),
            token_endpoint_auth_method="client_secret_basic" if self._secret is not None else "none",
            scope=" ".join(self.settings.scopes),
            redirect_uri=self.redirect_uri,
            code_challenge_method="S256",
            **extra,
        )

    async def begin(self) -> tuple[str, PendingLogin]:
        """The authorization URL to redirect to, and what to keep in the session."""
        metadata = await self.provider.metadata()
        pending = PendingLogin(
            secrets.token_urlsafe(_STATE_BYTES),
            secrets.token_urlsafe(_STATE_BYTES),
            secrets.token_urlsafe(_VERIFIER_BYTES),
            self._clock(),
        )
        async with self._oauth_client() as client:
            url, _ = client.create_authorization_url(
                metadata.authorization_endpoint,
                state=pending.state,
                code_verifier=pending.verifier,
                nonce=pending.nonce,
            )
        return url, pending

    async def finish(self, pending: PendingLogin | None, params: Mapping[str, str]) -> SignIn:
        """Check the callback ``params`` against ``pending``, redeem the code, verify the ID token."""
        if pending is None:
            raise LoginFailed("no_login_in_progress")
        if not 0 <= self._clock() - pending.started <= LOGIN_TIMEOUT:
            raise LoginFailed("login_expired")
        state = params.get("state", "")
        if not state or not hmac.compare_digest(state.encode(), pending.state.encode()):
            raise LoginFailed("state_mismatch")
        if "error" in params:
            raise LoginFailed("provider_refused")
        issuer = params.get("iss")  # RFC 9207, where the provider sends it
        if issuer is not None and issuer != self.provider.issuer:
            raise LoginFailed("wrong_issuer")
        code = params.get("code", "")
        if not code or len(code) > MAX_CODE_CHARS:
            raise LoginFailed("no_code")
        metadata = await self.provider.metadata()
        async with self._oauth_client() as client:
            try:
                token = await client.fetch_token(
                    metadata.token_endpoint,
                    grant_type="authorization_code",
                    code=code,
                    code_verifier=pending.verifier,
                    redirect_uri=self.redirect_uri,
                )
            except (OAuthError, httpx2.HTTPError, ValueError):
                raise LoginFailed("token_request_failed") from None
            id_token = token.get("id_token")
            if not isinstance(id_token, str):
                raise LoginFailed("no_id_token")
            try:
                claims = await self._verifier.verify(id_token, self.settings.client_id, nonce=pending.nonce)
            except TokenRejected as exc:
                raise LoginFailed(f"id_token_{exc.reason}") from None
            audiences = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
            azp = claims.get("azp")
            if (len(audiences) > 1 or azp is not None) and azp != self.settings.client_id:
                raise LoginFailed("id_token_wrong_azp")
            claims = await self._with_userinfo(metadata.userinfo_endpoint, token, claims)
        try:
            identity = identity_from_claims(self.provider.issuer, claims, self.settings.claims)
        except ValueError:
            raise LoginFailed("bad_claims") from None
        return SignIn(identity, id_token)

    async def _with_userinfo(self, endpoint: str | None, token: Mapping[str, Any], claims: dict[str, Any]) -> dict[str, Any]:
        """Claims the ID token lacks, from the userinfo endpoint (same subject only)."""
        names = self.settings.claims
        wanted = [n for n in (names.email, names.name, names.groups) if n not in claims]
        access_token = token.get("access_token")
        if not wanted or endpoint is None or not isinstance(access_token, str):
            return claims
        try:
            info = await get_json(self.provider.client, endpoint, headers={"Authorization": f"Bearer {access_token}"})
        except ProviderError:
            return claims  # the sign-in stands; the profile is what the ID token said
        if not isinstance(info, dict) or "sub" not in info:
            return claims  # not a userinfo answer: ignored
        if info["sub"] != claims["sub"]:
            raise LoginFailed("userinfo_wrong_subject")
        return {**claims, **{n: info[n] for n in wanted if n in info}}

    async def logout_url(self, id_token: str | None, post_logout_redirect_uri: str) -> str | None:
        """The provider's end-session URL (RP-initiated logout), or None where it offers none."""
        if not self.settings.rp_logout:
            return None
        try:
            metadata = await self.provider.metadata()
        except ProviderError:
            return None
        if metadata.end_session_endpoint is None:
            return None
        params = {"client_id": self.settings.client_id, "post_logout_redirect_uri": post_logout_redirect_uri}
        if id_token:
            params["id_token_hint"] = id_token
        return str(httpx2.URL(metadata.end_session_endpoint).copy_merge_params(params))
