"""Signed JWTs from the provider -- ID tokens at login, access tokens on the API -- verified with pyjwt.

What a token must be to pass :meth:`TokenVerifier.verify`:

* compact JWS, at most :data:`MAX_TOKEN_CHARS`, no ``crit`` header;
* ``alg`` in the configured allowlist, which can only hold asymmetric
  algorithms (:data:`ALLOWED_ALGORITHMS`): ``none`` and every ``HS*`` are
  refused before any key is looked at, so a token "signed" with the
  provider's public key as an HMAC secret (key confusion) never verifies;
* signed by a key of the provider's key set whose type fits the algorithm
  (RSA for RS/PS, EC with the right curve for ES, OKP for EdDSA);
* ``iss`` equal to the provider's issuer, ``aud`` holding the expected
  audience, ``sub``, ``exp`` and ``iat`` present;
* ``exp`` in the future, ``nbf`` and ``iat`` not in the future (each with
  the configured leeway), checked against an injectable clock;
* where given, the expected ``nonce`` (ID tokens) and scope (access tokens).

Every failure raises :class:`TokenRejected` with a short reason for the log.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable, Iterable
from typing import Any, Final

import jwt
from jwt import exceptions as jwt_errors

from policy.errors import PeerError

__all__ = ["ALLOWED_ALGORITHMS", "MAX_TOKEN_CHARS", "TokenRejected", "TokenVerifier", "looks_like_jwt"]

# Asymmetric signature algorithms only.  "none" and HS* are not in this set and cannot be configured.
ALLOWED_ALGORITHMS: Final = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"})

# Real access and ID tokens are 1 to 4 KiB; a bound keeps base64 and JSON decoding cheap.
MAX_TOKEN_CHARS: Final = 16 * 1024

_B64URL: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


class TokenRejected(PeerError):
    """A token did not verify; ``reason`` (also its ``code``) is a short code for logs,
    never shown to clients (an API client gets ``invalid_api_key``)."""

    status = 401

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def looks_like_jwt(token: str) -> bool:
    """Three base64url segments, the first a JSON object (``eyJ``)."""
    parts = token.split(".")
    return len(parts) == 3 and token.startswith("eyJ") and all(set(p) <= _B64URL for p in parts)


# The reason for a time claim that is not a number, by claim.
_BAD_NUMBER: Final = {"exp": "bad_exp", "nbf": "bad_nbf", "iat": "bad_iat"}


def _number(claims: dict[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TokenRejected(_BAD_NUMBER[name])
    return float(value)


class TokenVerifier:
    """Verifies tokens of one issuer against its key set (a :class:`~appliance.auth.provider.JwksCache`)."""

    def __init__(
        self,
        issuer: str,
        keys: Any,
        algorithms: Iterable[str],
        leeway: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.issuer = issuer
        self._keys = keys
        self._algorithms = frozenset(algorithms)
        if not self._algorithms or not self._algorithms <= ALLOWED_ALGORITHMS:
            raise ValueError("algorithms must be a non-empty subset of ALLOWED_ALGORITHMS")
        self._leeway = leeway
        self._clock = clock

    async def verify(self, token: str, audience: str, *, nonce: str | None = None, scope: str | None = None) -> dict[str, Any]:
        """The claims of ``token``; raises TokenRejected."""
        if not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS or not looks_like_jwt(token):
            raise TokenRejected("malformed")
        try:
            header = jwt.get_unverified_header(token)
        except jwt_errors.PyJWTError:
            raise TokenRejected("malformed") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self._algorithms:
            raise TokenRejected("algorithm_not_allowed")
        if "crit" in header:
            raise TokenRejected("critical_header")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise TokenRejected("malformed")
        key = await self._keys.key(kid, alg)
        if key is None:
            raise TokenRejected("unknown_key")
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[alg],
                audience=audience,
                issuer=self.issuer,
                options={
                    "require": ["iss", "sub", "aud", "exp", "iat"],
                    # The times are checked below, against our (injectable) clock.
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                },
            )
        except jwt_errors.InvalidSignatureError:
            raise TokenRejected("bad_signature") from None
        except jwt_errors.InvalidAudienceError:
            raise TokenRejected("wrong_audience") from None
        except jwt_errors.InvalidIssuerError:
            raise TokenRejected("wrong_issuer") from None
        except jwt_errors.MissingRequiredClaimError:
            raise TokenRejected("missing_claim") from None
        except jwt_errors.PyJWTError:
            raise TokenRejected("invalid") from None
        self._check_times(claims)
        if nonce is not None:
            got = claims.get("nonce")
            if not isinstance(got, str) or not hmac.compare_digest(got.encode(), nonce.encode()):
                raise TokenRejected("wrong_nonce")
        if scope is not None:
            scopes = claims.get("scope")
            granted = scopes.split() if isinstance(scopes, str) else claims.get("scp")
            if not isinstance(granted, list) or scope not in granted:
                raise TokenRejected("missing_scope")
        return claims

    def _check_times(self, claims: dict[str, Any]) -> None:
        now = self._clock()
        exp, nbf, iat = _number(claims, "exp"), _number(claims, "nbf"), _number(claims, "iat")
        if exp is None or exp <= now - self._leeway:
            raise TokenRejected("expired")
        if nbf is not None and nbf > now + self._leeway:
            raise TokenRejected("not_yet_valid")
        if iat is None or iat > now + self._leeway:
            raise TokenRejected("not_yet_valid")
