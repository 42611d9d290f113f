"""API keys, kept only as hashes and compared in constant time.

A key is looked up by the first bytes of its SHA-256 digest and then compared
on the whole digest with :func:`hmac.compare_digest`.  The key itself is never
stored or logged.  (Keys are random, high-entropy strings: a fast hash is the
right tool; a password hash would add nothing but latency.)
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Final

__all__ = ["Principal", "ApiKeyStore", "MAX_KEY_LENGTH"]

# Longer keys are not ours; reject before hashing arbitrary amounts of data.
MAX_KEY_LENGTH: Final = 256

_LOOKUP_BYTES: Final = 8


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller: who (``user``) and through which key (``key_id``)."""

    user: str
    key_id: str


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

    def add_digest(self, digest: bytes, user: str, key_id: str) -> None:
        """Add a key known only by its SHA-256 digest (as operators provision them)."""
        if len(digest) != hashlib.sha256().digest_size:
            raise ValueError("a key digest is 32 bytes")
        self._keys.setdefault(digest[:_LOOKUP_BYTES], []).append((digest, Principal(user, key_id)))

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
