"""API keys, kept only as hashes and compared in constant time.

A key is looked up by the first bytes of its SHA-256 digest and then compared
on the whole digest with :func:`hmac.compare_digest`.  The key itself is never
stored or logged.  (Keys are random, high-entropy strings: a fast hash is the
right tool; a password hash would add nothing but latency.)
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Final

from starlette.requests import HTTPConnection

from .base import Principal

__all__ = ["ApiKeyStore", "ApiKeyAuthenticator", "bearer_token", "MAX_KEY_LENGTH"]

# Longer keys are not ours; reject before hashing arbitrary amounts of data.
MAX_KEY_LENGTH: Final = 256

_LOOKUP_BYTES: Final = 8


class ApiKeyStore:
    """In-memory key store: lookup prefix -> (digest, principal)."""

    def __init__(self) -> None:
        self._keys: dict[bytes, list[tuple[bytes, Principal]]] = {}

    @staticmethod
    def _digest(key: str) -> bytes:
        return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()

    def add(self, key: str, user: str, key_id: str) -> None:
        if not 16 <= len(key) <= MAX_KEY_LENGTH:
            raise ValueError("an API key must be 16 to 256 characters long")
        self.add_digest(self._digest(key), user, key_id)

    def add_digest(self, digest: bytes, user: str, key_id: str, groups: frozenset[str] = frozenset()) -> None:
        """Add a key known only by its SHA-256 digest (as operators provision them), in ``groups``."""
        if len(digest) != hashlib.sha256().digest_size:
            raise ValueError("a key digest is 32 bytes")
        self._keys.setdefault(digest[:_LOOKUP_BYTES], []).append((digest, Principal(user, key_id, groups)))

    def verify(self, key: str) -> Principal | None:
        """The principal of ``key``, or None."""
        if not key or len(key) > MAX_KEY_LENGTH:
            return None
        digest = self._digest(key)
        found = None
        for stored, principal in self._keys.get(digest[:_LOOKUP_BYTES], ()):
            if hmac.compare_digest(stored, digest):
                found = principal
        return found


def bearer_token(connection: HTTPConnection) -> str | None:
    """The token of an ``Authorization: Bearer`` header, if there is one."""
    header = connection.headers.get("authorization", "")
    if header[:7].lower() != "bearer ":
        return None
    return header[7:].strip() or None


class ApiKeyAuthenticator:
    """Authenticates ``Authorization: Bearer <api key>`` against a key store."""

    def __init__(self, keys: ApiKeyStore) -> None:
        self._keys = keys

    async def authenticate(self, connection: HTTPConnection) -> Principal | None:
        token = bearer_token(connection)
        return None if token is None else self._keys.verify(token)
