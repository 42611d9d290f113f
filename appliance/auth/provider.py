"""The OpenID provider as discovery describes it, and its signing keys (JWKS) with rotation.

Discovery (``<issuer>/.well-known/openid-configuration``) is fetched on first
use and refreshed hourly; the issuer it names must equal the configured one
exactly (a mix-up defence), and every endpoint must be https (http only on a
loopback host, for tests).

The key set is cached.  A token signed with a key id we do not know makes us
fetch the set again -- that is how rotation is picked up -- but at most once
per ``min_refresh`` seconds, so tokens with made-up key ids cannot turn the
appliance into a load generator against the provider.  A failed fetch keeps
the keys we had.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

import httpx2
from jwt import PyJWK
from jwt.exceptions import PyJWKError

from policy.errors import InternalError
from policy.events import event_line

from .config import ConfigError, check_url

__all__ = ["KTY_FOR_ALG", "JwksCache", "Provider", "ProviderError", "ProviderMetadata"]

log = logging.getLogger("sluice.auth")

# Discovery documents and key sets are a few KiB; anything near this is not one.
MAX_DOCUMENT_BYTES: Final = 512 * 1024
# How long discovery is trusted before it is fetched again.
METADATA_TTL: Final = 3600.0
# How long a key set is used before it is fetched again (keys also refresh on an unknown kid).
JWKS_TTL: Final = 600.0
# The least time between two key-set fetches triggered by unknown key ids.
JWKS_MIN_REFRESH: Final = 30.0
# Timeout for every request to the provider.
PROVIDER_TIMEOUT: Final = 10.0

# Which JWK key type (and curve) each allowed algorithm needs: HS/RS confusion is refused here too.
KTY_FOR_ALG: Final = {
    "RS256": ("RSA", None),
    "RS384": ("RSA", None),
    "RS512": ("RSA", None),
    "PS256": ("RSA", None),
    "PS384": ("RSA", None),
    "PS512": ("RSA", None),
    "ES256": ("EC", "P-256"),
    "ES384": ("EC", "P-384"),
    "ES512": ("EC", "P-521"),
    "EdDSA": ("OKP", None),
}


class ProviderError(InternalError):
    """The provider could not be reached or answered something unusable."""


@dataclass(frozen=True, slots=True)
class ProviderMetadata:
    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    userinfo_endpoint: str | None
    end_session_endpoint: str | None


async def get_json(client: httpx2.AsyncClient, url: str, **kwargs: Any) -> Any:
    """GET ``url`` as JSON, bounded; raises ProviderError."""
    try:
        async with client.stream("GET", url, timeout=PROVIDER_TIMEOUT, **kwargs) as response:
            if response.status_code != 200:
                raise ProviderError(f"HTTP {response.status_code}")
            data = bytearray()
            async for chunk in response.aiter_bytes():
                data += chunk
                if len(data) > MAX_DOCUMENT_BYTES:
                    raise ProviderError("document too large")
    except httpx2.HTTPError as exc:
        raise ProviderError(type(exc).__name__) from None
    try:
        return json.loads(data)
    except ValueError:
        raise ProviderError("not JSON") from None


def _optional_endpoint(document: dict[str, Any], key: str) -> str | None:
    return None if document.get(key) is None else _endpoint(document, key)


def _endpoint(document: dict[str, Any], key: str) -> str:
    value = document.get(key)
    if not isinstance(value, str):
        raise ProviderError(f"discovery lacks {key}")
    try:
        return check_url(value, key)
    except ConfigError as exc:
        raise ProviderError(str(exc)) from None


def parse_metadata(issuer: str, document: Any) -> ProviderMetadata:
    if not isinstance(document, dict) or document.get("issuer") != issuer:
        raise ProviderError("discovery names another issuer")
    return ProviderMetadata(
        issuer,
        _endpoint(document, "authorization_endpoint"),
        _endpoint(document, "token_endpoint"),
        _endpoint(document, "jwks_uri"),
        _optional_endpoint(document, "userinfo_endpoint"),
        _optional_endpoint(document, "end_session_endpoint"),
    )


class Provider:
    """Discovery for one issuer, cached."""

    def __init__(self, issuer: str, client: httpx2.AsyncClient, clock: Callable[[], float] = time.monotonic) -> None:
        self.issuer = issuer
        self.client = client
        self._clock = clock
        self._metadata: ProviderMetadata | None = None
        self._fetched = float("-inf")
        self._lock = asyncio.Lock()
        self.jwks = JwksCache(self._fetch_jwks, clock=clock)

    async def metadata(self) -> ProviderMetadata:
        if self._metadata is not None and self._clock() - self._fetched < METADATA_TTL:
            return self._metadata
        async with self._lock:
            if self._metadata is None or self._clock() - self._fetched >= METADATA_TTL:
                url = self.issuer.rstrip("/") + "/.well-known/openid-configuration"
                try:
                    self._metadata = parse_metadata(self.issuer, await get_json(self.client, url))
                    self._fetched = self._clock()
                except ProviderError as exc:
                    log.error(event_line("oidc_discovery_failed", reason=str(exc)))
                    if self._metadata is None:
                        raise
        return self._metadata

    async def _fetch_jwks(self) -> Any:
        return await get_json(self.client, (await self.metadata()).jwks_uri)


def _keys(document: Any) -> list[tuple[str | None, str, str | None, str | None, PyJWK]]:
    """(kid, kty, crv, alg, key) for each usable signing key of a JWKS document."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ProviderError("not a key set")
    keys = []
    for jwk in document["keys"][:64]:
        if not isinstance(jwk, dict) or jwk.get("use", "sig") != "sig" or jwk.get("kty") not in ("RSA", "EC", "OKP"):
            continue  # encryption keys, symmetric keys ("oct") and the unknown are never used
        if "d" in jwk:
            continue  # a private key published by mistake: do not use it
        try:
            key = PyJWK(jwk)
        except (PyJWKError, ValueError, TypeError):
            continue
        kid = jwk.get("kid")
        alg = jwk.get("alg")
        keys.append(
            (kid if isinstance(kid, str) else None, jwk["kty"], jwk.get("crv"), alg if isinstance(alg, str) else None, key)
        )
    return keys


class JwksCache:
    """Signing keys by key id, refreshed on a TTL and on unknown key ids (rate limited)."""

    def __init__(
        self,
        fetch: Callable[[], Awaitable[Any]],
        ttl: float = JWKS_TTL,
        min_refresh: float = JWKS_MIN_REFRESH,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fetch = fetch
        self._ttl = ttl
        self._min_refresh = min_refresh
        self._clock = clock
        self._keys: list[tuple[str | None, str, str | None, str | None, PyJWK]] = []
        self._fetched = float("-inf")  # last successful fetch
        self._attempted = float("-inf")  # last fetch, successful or not
        self._lock = asyncio.Lock()
        self.fetches = 0

    async def _refresh(self, reason: str) -> None:
        async with self._lock:
            now = self._clock()
            if reason == "ttl" and now - self._fetched < self._ttl:
                return  # someone else just did
            if now - self._attempted < self._min_refresh:
                return
            self._attempted = now
            self.fetches += 1
            try:
                self._keys = _keys(await self._fetch())
                self._fetched = now
            except ProviderError as exc:
                log.error(event_line("jwks_fetch_failed", reason=str(exc)))

    def _find(self, kid: str | None, alg: str) -> PyJWK | None:
        kty, crv = KTY_FOR_ALG[alg]
        candidates = [
            key
            for (k, t, c, a, key) in self._keys
            if t == kty and (crv is None or c == crv) and (a is None or a == alg) and (kid is None or k == kid)
        ]
        # Without a kid, only an unambiguous key set will do.
        return candidates[0] if len(candidates) == 1 else None

    async def key(self, kid: str | None, alg: str) -> PyJWK | None:
        """The key for a token's ``kid`` and ``alg``, or None."""
        if self._clock() - self._fetched >= self._ttl:
            await self._refresh("ttl")
        found = self._find(kid, alg)
        if found is None:
            await self._refresh("unknown_kid")
            found = self._find(kid, alg)
        return found
