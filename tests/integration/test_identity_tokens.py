"""Token validation against the real provider process: its discovery, its key set, its tokens.

The appliance's verifier (the same code `sluice serve` runs for Bearer JWTs
and ID tokens) is pointed at the provider and given the provider's own
tokens: valid ones pass; wrong audience, wrong issuer, expired, not yet
valid, tampered, ``alg: none`` and HS256-with-the-public-key ones do not.
Times are judged by the verifier's clock, which these tests move, so
"expired" and "not yet valid" need no sleeping.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx2
import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from appliance.auth.provider import Provider
from appliance.auth.tokens import TokenRejected, TokenVerifier
from tests.services.oidc import OidcProvider, start_oidc_provider

pytestmark = pytest.mark.integration

AUDIENCE = "sluice-api"


@pytest.fixture(scope="module")
def provider() -> Iterator[OidcProvider]:
    running = start_oidc_provider({"sub": "alice", "groups": ["staff"]})
    try:
        yield running
    finally:
        running.stop()


def verify(provider: OidcProvider, token: str, offset: float = 0.0, **kwargs: Any) -> dict[str, Any]:
    async def run() -> dict[str, Any]:
        async with httpx2.AsyncClient() as client:
            discovered = Provider(provider.issuer, client)
            verifier = TokenVerifier(provider.issuer, discovered.jwks, ("RS256",), leeway=0, clock=lambda: time.time() + offset)
            return await verifier.verify(token, AUDIENCE, **kwargs)

    return asyncio.run(run())


def rejected(provider: OidcProvider, token: str, offset: float = 0.0, **kwargs: Any) -> str:
    with pytest.raises(TokenRejected) as info:
        verify(provider, token, offset, **kwargs)
    return info.value.reason


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_valid_token_and_nonce(provider: OidcProvider) -> None:
    token = provider.tokens(AUDIENCE, "alice", nonce="n-123")["id_token"]
    claims = verify(provider, token, nonce="n-123")
    assert claims["sub"] == "alice" and claims["groups"] == ["staff"]
    assert rejected(provider, token, nonce="n-456") == "wrong_nonce"


def test_reject_wrong_audience_and_issuer(provider: OidcProvider) -> None:
    assert rejected(provider, provider.tokens("another-client", "alice")["id_token"]) == "wrong_audience"
    # Same key, same provider, reached as "localhost": a different issuer.
    assert rejected(provider, provider.tokens(AUDIENCE, "alice", host="localhost")["id_token"]) == "wrong_issuer"


def test_reject_expired_and_not_yet_valid(provider: OidcProvider) -> None:
    token = provider.tokens(AUDIENCE, "alice")["id_token"]
    lifetime = jwt.decode(token, options={"verify_signature": False})["exp"] - time.time()
    assert rejected(provider, token, offset=lifetime + 1) == "expired"
    assert rejected(provider, token, offset=-60) == "not_yet_valid"
    assert verify(provider, token, offset=lifetime - 5)["sub"] == "alice"


def test_reject_tampered_none_and_key_confusion(provider: OidcProvider) -> None:
    token = provider.tokens(AUDIENCE, "alice")["id_token"]
    head, payload, signature = token.split(".")
    claims = jwt.decode(token, options={"verify_signature": False})
    elevated = b64(json.dumps({**claims, "groups": ["admins"]}).encode())
    assert rejected(provider, f"{head}.{elevated}.{signature}") == "bad_signature"
    none = b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    assert rejected(provider, f"{none}.{payload}.") == "algorithm_not_allowed"
    public = jwt.PyJWK(provider.jwks()["keys"][0]).key.public_bytes(  # type: ignore[union-attr]
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    unsigned = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode()) + "." + payload
    confused = unsigned + "." + b64(hmac.new(public, unsigned.encode(), hashlib.sha256).digest())
    assert rejected(provider, confused) == "algorithm_not_allowed"
