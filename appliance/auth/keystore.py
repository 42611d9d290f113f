"""Persistent API keys: ``sk-sluice-<lookup id>-<secret>``, stored only as a SHA-256 digest.

* The lookup id (12 characters, public: it names the key in lists and logs)
  finds the row; the digest of the whole key is then compared with
  :func:`hmac.compare_digest`.  The key is shown once, when it is made.
* A key has an owner, a name, an optional scope (model names it is limited
  to, within what the owner's groups allow), an expiry, and a revocation
  time.  Its groups are its owner's current ones (see :mod:`.users`).
* The secret is 256 random bits, so a fast hash is the right tool: there is
  nothing to brute-force that a password hash would slow down.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final

from policy.errors import InternalError

from ..audit import audit_event, names
from ._db import Database
from .base import Principal
from .users import UserDirectory

__all__ = ["KEY_PREFIX", "MAX_KEYS_PER_USER", "MAX_SCOPE_MODELS", "KeyInfo", "KeyRequestError", "KeyStore"]

KEY_PREFIX: Final = "sk-sluice-"
_ID_ALPHABET: Final = "abcdefghijklmnopqrstuvwxyz234567"
_ID_CHARS: Final = 12  # 60 bits: lookups never collide in practice; a collision is retried
_SECRET_BYTES: Final = 32
_KEY_RE: Final = re.compile(r"sk-sluice-([a-z2-7]{12})-[A-Za-z0-9_-]{43}", re.ASCII)
_KEY_NAME_MAX: Final = 64
# A user may hold this many live keys; more is a script gone wrong.
MAX_KEYS_PER_USER: Final = 50
# Expired keys remembered as already recorded in the audit trail (then forgotten all at once).
MAX_NOTICED: Final = 10_000

# A key may be scoped to at most this many model names.
MAX_SCOPE_MODELS: Final = 64
_MODEL_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9\-_.:/]{0,127}", re.ASCII)

# Compared against when the lookup id is unknown, so that both paths hash and compare.
_DUMMY_DIGEST: Final = hashlib.sha256(b"sluice: no such key").digest()


class KeyRequestError(InternalError, ValueError):
    """A key could not be made or changed; the message is for the operator or the user."""


@dataclass(frozen=True, slots=True)
class KeyInfo:
    id: str
    owner: str
    name: str
    scope: tuple[str, ...] | None
    created: float
    expires: float | None
    revoked: float | None
    created_by: str

    def state(self, now: float) -> str:
        if self.revoked is not None:
            return "revoked"
        if self.expires is not None and self.expires <= now:
            return "expired"
        return "active"


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


def check_scope(models: Iterable[str] | None) -> tuple[str, ...] | None:
    if models is None:
        return None
    scope = tuple(sorted(set(models)))
    if not scope:
        return None
    if len(scope) > MAX_SCOPE_MODELS or not all(_MODEL_RE.fullmatch(m) for m in scope):
        raise KeyRequestError(f"a scope is 1 to {MAX_SCOPE_MODELS} model names")
    return scope


class KeyStore:
    def __init__(self, db: Database, users: UserDirectory, clock: Callable[[], float] = time.time) -> None:
        self._db = db
        self.users = users
        self._clock = clock
        self._expired_noticed: set[str] = set()

    async def create(
        self,
        owner: str,
        name: str,
        scope: Iterable[str] | None = None,
        expires: float | None = None,
        created_by: str = "web",
    ) -> tuple[str, KeyInfo]:
        """A new key for ``owner``: (the key, shown once; its record)."""
        name = name.strip()
        if not 0 < len(name) <= _KEY_NAME_MAX or not name.isprintable():
            raise KeyRequestError(f"a key name is 1 to {_KEY_NAME_MAX} printable characters")
        if not owner or len(owner) > 1024:
            raise KeyRequestError("a key needs an owner")
        checked_scope = check_scope(scope)
        now = self._clock()
        if expires is not None and expires <= now:
            raise KeyRequestError("the expiry must be in the future")
        row = await self._db.fetchone(
            "SELECT COUNT(*) FROM api_keys WHERE owner = ? AND revoked IS NULL AND (expires IS NULL OR expires > ?)",
            owner,
            now,
        )
        live = row[0] if row is not None else 0
        if live >= MAX_KEYS_PER_USER:
            raise KeyRequestError(f"at most {MAX_KEYS_PER_USER} active keys per user; revoke some first")
        for _ in range(5):
            key_id = "".join(secrets.choice(_ID_ALPHABET) for _ in range(_ID_CHARS))
            key = f"{KEY_PREFIX}{key_id}-{secrets.token_urlsafe(_SECRET_BYTES)}"
            added = await self._db.execute(
                "INSERT INTO api_keys (id, digest, owner, name, scope, created, expires, revoked, created_by) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, NULL, ?) ON CONFLICT (id) DO NOTHING",
                key_id,
                _digest(key),
                owner,
                name,
                None if checked_scope is None else json.dumps(checked_scope),
                now,
                None if expires is None else float(expires),
                created_by,
            )
            if added != 1:
                continue
            audit_event("key_created", created_by, key_id, owner=owner[:256], expires=None if expires is None else int(expires))
            if checked_scope is not None:
                audit_event("key_scoped", created_by, key_id, owner=owner[:256], models=names(checked_scope))
            return key, KeyInfo(key_id, owner, name, checked_scope, now, expires, None, created_by)
        raise KeyRequestError("could not allocate a key id")  # pragma: no cover

    async def list_keys(self, owner: str | None = None) -> list[KeyInfo]:
        query = "SELECT id, owner, name, scope, created, expires, revoked, created_by FROM api_keys"
        rows = (
            await self._db.fetchall(query + " WHERE owner = ? ORDER BY created", owner)
            if owner is not None
            else await self._db.fetchall(query + " ORDER BY owner, created")
        )
        return [
            KeyInfo(r[0], r[1], r[2], None if r[3] is None else tuple(json.loads(r[3])), r[4], r[5], r[6], r[7]) for r in rows
        ]

    async def revoke(self, key_id: str, owner: str | None = None) -> bool:
        """Revoke one key (only ``owner``'s, when given); False if there was no such live key."""
        query = "UPDATE api_keys SET revoked = ? WHERE id = ? AND revoked IS NULL"
        args: tuple[object, ...] = (self._clock(), key_id)
        if owner is not None:
            query += " AND owner = ?"
            args += (owner,)
        revoked = await self._db.execute(query, *args) == 1
        if revoked:
            audit_event("key_revoked", owner or "operator", key_id)
        return revoked

    async def revoke_user(self, owner: str) -> int:
        """Revoke every key of ``owner``; the number revoked."""
        count = await self._db.execute(
            "UPDATE api_keys SET revoked = ? WHERE owner = ? AND revoked IS NULL", self._clock(), owner
        )
        audit_event("key_revoked", "operator", f"user:{owner[:200]}", count=count)
        return count

    def _notice_expired(self, key_id: str, owner: str) -> None:
        """An expired key was presented (with its right secret): recorded once per key and process."""
        if key_id in self._expired_noticed:
            return
        if len(self._expired_noticed) >= MAX_NOTICED:
            self._expired_noticed.clear()
        self._expired_noticed.add(key_id)
        audit_event("key_expired", owner[:256], key_id)

    async def verify(self, key: str) -> Principal | None:
        """The principal a presented key acts as, or None (unknown, wrong, revoked, expired)."""
        match = _KEY_RE.fullmatch(key)
        if match is None:
            return None
        # One round trip: the key and its owner's groups (a shared database is across the network).
        row = await self._db.fetchone(
            'SELECT k.digest, k.owner, k.scope, k.expires, k.revoked, u."groups", u.source, u.refreshed '
            'FROM api_keys k LEFT JOIN users u ON u."user" = k.owner WHERE k.id = ?',
            match.group(1),
        )
        stored = bytes(row[0]) if row is not None else _DUMMY_DIGEST
        if not hmac.compare_digest(stored, _digest(key)) or row is None:
            return None
        _, owner, scope, expires, revoked, groups, source, refreshed = row
        if revoked is not None or (expires is not None and expires <= self._clock()):
            if revoked is None:
                self._notice_expired(match.group(1), owner)
            return None
        return Principal(
            owner,
            key_id=match.group(1),
            groups=frozenset() if groups is None else self.users.groups_now(frozenset(json.loads(groups)), source, refreshed),
            scope=None if scope is None else frozenset(json.loads(scope)),
        )
