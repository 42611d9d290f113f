"""Web sessions, kept on the server: the cookie carries a random id, the database its SHA-256.

Logging out deletes the row, so a copied cookie dies with the session; a
session also ends at its absolute expiry however active it is.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from ._db import Database

__all__ = ["SessionStore", "WebSession"]


@dataclass(frozen=True, slots=True)
class WebSession:
    user: str
    expires: float
    id_token: str | None


def _digest(session_id: str) -> bytes:
    return hashlib.sha256(session_id.encode("utf-8", "surrogatepass")).digest()


class SessionStore:
    def __init__(self, db: Database, lifetime: float, clock: Callable[[], float] = time.time) -> None:
        self._db = db
        self.lifetime = lifetime
        self._clock = clock

    async def create(self, user: str, id_token: str | None) -> str:
        """A new session for ``user``; returns the id for the cookie."""
        now = self._clock()
        session_id = secrets.token_urlsafe(32)
        await self._db.execute("DELETE FROM sessions WHERE expires <= ?", now)
        await self._db.execute(
            'INSERT INTO sessions (digest, "user", created, expires, id_token) VALUES (?, ?, ?, ?, ?)',
            _digest(session_id),
            user,
            now,
            now + self.lifetime,
            id_token,
        )
        return session_id

    async def get(self, session_id: object) -> WebSession | None:
        if not isinstance(session_id, str) or len(session_id) > 128:
            return None
        row = await self._db.fetchone('SELECT "user", expires, id_token FROM sessions WHERE digest = ?', _digest(session_id))
        if row is None or row[1] <= self._clock():
            return None
        return WebSession(row[0], row[1], row[2])

    async def delete(self, session_id: object) -> None:
        if isinstance(session_id, str):
            await self._db.execute("DELETE FROM sessions WHERE digest = ?", _digest(session_id))

    async def delete_user(self, user: str) -> int:
        return await self._db.execute('DELETE FROM sessions WHERE "user" = ?', user)
