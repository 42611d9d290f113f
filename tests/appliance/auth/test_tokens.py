"""The JWT verifier and the key-set cache, with keys made here (crafted tokens of every bad kind)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from appliance.auth.provider import JwksCache, ProviderError
from appliance.auth.tokens import (
    ALLOWED_ALGORITHMS,
    TokenRejected,
    TokenVerifier,
    looks_like_jwt,
)

ISSUER = "https://sso.example.org/realms/r"
AUDIENCE = "sluice-api"
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
RSA_KEY_2 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
ED_KEY = ed25519.Ed25519PrivateKey.generate()


def jwk(key: Any, kid: str, **extra: str) -> dict[str, Any]:
    data = json.loads(
        jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key())
        if isinstance(key, rsa.RSAPrivateKey)
        else jwt.algorithms.ECAlgorithm.to_jwk(key.public_key())
        if isinstance(key, ec.EllipticCurvePrivateKey)
        else jwt.algorithms.OKPAlgorithm.to_jwk(key.public_key())
    )
    return {**data, "kid": kid, **extra}


class KeySource:
    """A provider's JWKS endpoint, counted."""

    def __init__(self, *keys: dict[str, Any]) -> None:
        self.keys = list(keys)
        self.fetches = 0
        self.fail = False

    async def __call__(self) -> Any:
        self.fetches += 1
        if self.fail:
            raise ProviderError("down")
        return {"keys": list(self.keys)}


class Clock:
    def __init__(self, now: float | None = None) -> None:
        self.now = time.time() if now is None else now

    def __call__(self) -> float:
        return self.now


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "iat": now, "exp": now + 300, "groups": ["staff"]}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def sign(payload: dict[str, Any], key: Any = RSA_KEY, alg: str = "RS256", kid: str | None = "k1", **headers: Any) -> str:
    header = {"kid": kid, **headers} if kid is not None else dict(headers)
    return jwt.encode(payload, key, algorithm=alg, headers=header)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: dict[str, Any], payload: dict[str, Any], signature: bytes = b"") -> str:
    return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}.{b64(signature)}"


def verifier(
    source: KeySource,
    algorithms: tuple[str, ...] = ("RS256", "ES256", "EdDSA"),
    clock: Clock | None = None,
    monotonic: Clock | None = None,
) -> TokenVerifier:
    cache = JwksCache(source, clock=monotonic or Clock(0.0))
    return TokenVerifier(ISSUER, cache, algorithms, leeway=10, clock=clock or Clock())


def verify(v: TokenVerifier, token: str, **kwargs: Any) -> dict[str, Any]:
    return asyncio.run(v.verify(token, AUDIENCE, **kwargs))


def reason(v: TokenVerifier, token: str, **kwargs: Any) -> str:
    with pytest.raises(TokenRejected) as info:
        verify(v, token, **kwargs)
    return info.value.reason


def test_valid_tokens_of_each_key_type() -> None:
    source = KeySource(jwk(RSA_KEY, "k1"), jwk(EC_KEY, "e1"), jwk(ED_KEY, "o1"))
    v = verifier(source)
    assert verify(v, sign(claims()))["sub"] == "alice"
    assert verify(v, sign(claims(), EC_KEY, "ES256", "e1"))["groups"] == ["staff"]
    assert verify(v, sign(claims(), ED_KEY, "EdDSA", "o1"))["sub"] == "alice"
    assert verify(v, sign(claims(aud=["other", AUDIENCE])))["sub"] == "alice"


def test_reject_alg_none() -> None:
    v = verifier(KeySource(jwk(RSA_KEY, "k1")))
    for alg in ("none", "None", "NONE"):
        assert reason(v, forge({"alg": alg, "kid": "k1"}, claims())) == "algorithm_not_allowed"
    assert reason(v, forge({"kid": "k1"}, claims())) == "algorithm_not_allowed"


def test_reject_hs256_key_confusion() -> None:
    """A token "signed" with HMAC, the provider's public key as the secret."""
    v = verifier(KeySource(jwk(RSA_KEY, "k1")))
    public_pem = RSA_KEY.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    for alg, digest in (("HS256", hashlib.sha256), ("HS384", hashlib.sha384), ("HS512", hashlib.sha512)):
        unsigned = forge({"alg": alg, "kid": "k1", "typ": "JWT"}, claims()).rsplit(".", 1)[0]
        token = unsigned + "." + b64(hmac.new(public_pem, unsigned.encode(), digest).digest())
        assert reason(v, token) == "algorithm_not_allowed"


def test_reject_algorithm_outside_the_allowlist_and_wrong_key_type() -> None:
    source = KeySource(jwk(RSA_KEY, "k1"), jwk(EC_KEY, "e1"))
    v = verifier(source, algorithms=("RS256",))
    assert reason(v, sign(claims(), RSA_KEY, "RS384")) == "algorithm_not_allowed"
    assert reason(v, sign(claims(), EC_KEY, "ES256", "e1")) == "algorithm_not_allowed"
    # ES256 header naming an RSA key id: no key of the right type.
    v2 = verifier(source)
    assert reason(v2, sign(claims(), EC_KEY, "ES256", "k1")) == "unknown_key"
    # A JWK that declares its alg is used for that alg only.
    v3 = verifier(KeySource(jwk(RSA_KEY, "k1", alg="RS512")), algorithms=("RS256", "RS512"))
    assert reason(v3, sign(claims())) == "unknown_key"


def test_allowlist_cannot_hold_symmetric_or_none() -> None:
    assert not {"none", "HS256", "HS384", "HS512"} & ALLOWED_ALGORITHMS
    for bad in (("HS256",), ("none",), ()):
        with pytest.raises(ValueError):
            TokenVerifier(ISSUER, None, bad)


def test_reject_wrong_audience_issuer_and_missing_claims() -> None:
    v = verifier(KeySource(jwk(RSA_KEY, "k1")))
    assert reason(v, sign(claims(aud="other"))) == "wrong_audience"
    assert reason(v, sign(claims(iss="https://evil.example.org"))) == "wrong_issuer"
    assert reason(v, sign(claims(iss=ISSUER + "/"))) == "wrong_issuer"
    for missing in ("exp", "iat", "sub", "aud", "iss"):
        assert reason(v, sign(claims(**{missing: None}))) == "missing_claim"


def test_reject_expired_and_not_yet_valid() -> None:
    now = time.time()
    v = verifier(KeySource(jwk(RSA_KEY, "k1")), clock=Clock(now))
    assert reason(v, sign(claims(exp=int(now) - 11))) == "expired"
    assert verify(v, sign(claims(exp=int(now) - 5)))  # within the leeway
    assert reason(v, sign(claims(nbf=int(now) + 60))) == "not_yet_valid"
    assert reason(v, sign(claims(iat=int(now) + 60))) == "not_yet_valid"
    assert reason(v, sign(claims(exp="soon"))) == "bad_exp"
    assert reason(v, sign(claims(exp=True))) == "bad_exp"


def test_reject_tampered_tokens() -> None:
    v = verifier(KeySource(jwk(RSA_KEY, "k1")))
    token = sign(claims())
    head, payload, signature = token.split(".")
    more_groups = b64(json.dumps(claims(groups=["staff", "admins"])).encode())
    assert reason(v, f"{head}.{more_groups}.{signature}") == "bad_signature"
    flipped = signature[:-2] + ("A" if signature[-2] != "A" else "B") + signature[-1]
    assert reason(v, f"{head}.{payload}.{flipped}") == "bad_signature"
    assert reason(v, sign(claims(), RSA_KEY_2)) == "bad_signature"  # right kid, another key
    assert reason(v, token + "x.y") == "malformed"
    assert reason(v, "eyJ" + "A" * 20_000 + ".a.b") == "malformed"
    assert reason(v, sign(claims(), crit=["exp"])) in ("critical_header", "malformed")


def test_nonce_and_scope() -> None:
    v = verifier(KeySource(jwk(RSA_KEY, "k1")))
    assert verify(v, sign(claims(nonce="n-1")), nonce="n-1")
    assert reason(v, sign(claims(nonce="n-2")), nonce="n-1") == "wrong_nonce"
    assert reason(v, sign(claims()), nonce="n-1") == "wrong_nonce"
    assert verify(v, sign(claims(scope="openid sluice")), scope="sluice")
    assert verify(v, sign(claims(scp=["sluice"])), scope="sluice")
    assert reason(v, sign(claims(scope="openid")), scope="sluice") == "missing_scope"


def test_key_rotation_refetches_on_unknown_kid_rate_limited() -> None:
    source = KeySource(jwk(RSA_KEY, "k1"))
    monotonic = Clock(1000.0)
    v = verifier(source, monotonic=monotonic)
    assert verify(v, sign(claims()))
    assert source.fetches == 1
    # The provider rotates to k2; tokens signed with k2 appear.
    source.keys = [jwk(RSA_KEY_2, "k2")]
    monotonic.now += 31
    assert verify(v, sign(claims(), RSA_KEY_2, kid="k2"))
    assert source.fetches == 2
    # Made-up key ids do not make us fetch on every request.
    for n in range(20):
        assert reason(v, sign(claims(), RSA_KEY_2, kid=f"bogus-{n}")) == "unknown_key"
    assert source.fetches == 2
    monotonic.now += 31
    assert reason(v, sign(claims(), RSA_KEY_2, kid="bogus")) == "unknown_key"
    assert source.fetches == 3


def test_failed_refresh_keeps_known_keys() -> None:
    source = KeySource(jwk(RSA_KEY, "k1"))
    monotonic = Clock(0.0)
    v = verifier(source, monotonic=monotonic)
    assert verify(v, sign(claims()))
    source.fail = True
    monotonic.now += 10_000  # past the TTL
    assert verify(v, sign(claims()))


def test_key_set_hygiene() -> None:
    """Symmetric, encryption and private keys in a key set are never used."""
    secret = {"kty": "oct", "kid": "k1", "k": b64(b"s" * 32)}
    private = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(RSA_KEY))
    v = verifier(KeySource(secret, {**jwk(RSA_KEY, "k1"), "use": "enc"}, {**private, "kid": "k1"}), algorithms=("RS256",))
    assert reason(v, sign(claims())) == "unknown_key"
    # Without a kid, only a key set with exactly one fitting key is usable.
    assert verify(verifier(KeySource(jwk(RSA_KEY, "k1"))), sign(claims(), kid=None))
    two = verifier(KeySource(jwk(RSA_KEY, "k1"), jwk(RSA_KEY_2, "k2")))
    assert reason(two, sign(claims(), kid=None)) == "unknown_key"


def test_looks_like_jwt() -> None:
    assert looks_like_jwt(sign(claims()))
    assert not looks_like_jwt("sk-sluice-abc")
    assert not looks_like_jwt("eyJ.a.b.c")
    assert not looks_like_jwt("eyJ a.b.c")
