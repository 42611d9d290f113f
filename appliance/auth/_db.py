"""The identity database: API keys, users' groups and web sessions, in SQLite or PostgreSQL.

Both backends offer the same small async interface (:class:`Database`):
statements are written once, with ``?`` placeholders and quoted ``"user"``
and ``"groups"`` columns, and run unchanged on either.

* :class:`SqliteDatabase` (the embedded default): one file, one connection,
  used from the event loop (every query is a primary-key or index lookup of
  microseconds).  WAL mode lets ``sluice keys`` write while the appliance
  reads.  The file is created readable by its owner only, and its missing
  schema steps are applied when it is opened.
* :class:`PostgresDatabase` (several replicas, optional ``asyncpg``): a small
  connection pool.  Nothing is cached in the appliance: every key check,
  group lookup and session lookup reads the database, so a revocation or a
  group change made on any replica holds on every replica from the next
  request.  When the database cannot be reached, every call raises
  :class:`~.base.IdentityUnavailable` (the API answers 503): authentication
  fails closed, never open.

What it holds: key hashes (never keys), user ids, email, display names and
group names, session hashes (never session ids) and ID tokens for logout.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from pathlib import Path
from typing import Any, Final, Protocol

from ..migrations import check_version, latest, postgres_version, sqlite_upgrade
from .base import IdentityUnavailable
from .secret import Secret, carried

__all__ = ["SCHEMA_VERSION", "Database", "PostgresDatabase", "SqliteDatabase", "numbered", "open_database", "postgres_driver"]

SCHEMA_VERSION: Final = latest("identity")

# A write waits this long for another writer (the CLI) before failing.
BUSY_TIMEOUT_MS: Final = 2000

# PostgreSQL: connections per appliance replica, and how long one call may take before the
# store counts as unreachable (a request's authentication waits at most this long).
POOL_SIZE: Final = 8
CALL_TIMEOUT: Final = 2.0


class Database(Protocol):
    async def execute(self, sql: str, *args: object) -> int:
        """Run a statement; the number of rows it changed."""
        ...

    async def fetchone(self, sql: str, *args: object) -> tuple[Any, ...] | None: ...

    async def fetchall(self, sql: str, *args: object) -> list[tuple[Any, ...]]: ...

    async def start(self) -> None: ...

    async def aclose(self) -> None: ...


def numbered(sql: str) -> str:
    """``?`` placeholders as PostgreSQL's ``$1, $2, ...``."""
    parts = sql.split("?")
    return "".join(part + (f"${i}" if i < len(parts) else "") for i, part in enumerate(parts, start=1))


class SqliteDatabase:
    def __init__(self, connection: sqlite3.Connection) -> None:
        self.connection = connection

    async def execute(self, sql: str, *args: object) -> int:
        return self.connection.execute(sql, args).rowcount

    async def fetchone(self, sql: str, *args: object) -> tuple[Any, ...] | None:
        row: tuple[Any, ...] | None = self.connection.execute(sql, args).fetchone()
        return row

    async def fetchall(self, sql: str, *args: object) -> list[tuple[Any, ...]]:
        return self.connection.execute(sql, args).fetchall()

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        self.connection.close()


def open_database(path: Path | str) -> SqliteDatabase:
    """Open (creating if needed, mode 0600) and migrate the SQLite database at ``path``."""
    path = Path(path)
    if str(path) != ":memory:" and not path.exists():
        fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o600)
        os.close(fd)
    connection = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    try:
        connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        if str(path) != ":memory:":
            connection.execute("PRAGMA journal_mode = WAL")
        connection.execute("PRAGMA synchronous = NORMAL")
        sqlite_upgrade(connection, "identity", str(path))
    except BaseException:
        connection.close()
        raise
    return SqliteDatabase(connection)


def postgres_driver() -> Any:
    try:
        import asyncpg
    except ImportError:
        raise RuntimeError("PostgreSQL needs asyncpg: install Sluice with its postgres extra") from None
    return asyncpg


class PostgresDatabase:
    """The identity store in PostgreSQL; :meth:`start` connects and checks the schema version."""

    def __init__(self, dsn: str | Secret, where: str = "auth.database_dsn_file") -> None:
        self._dsn = carried(dsn)  # revealed only to open the pool
        self._where = where
        self._pool: Any = None
        self._errors: tuple[type[BaseException], ...] = ()

    async def start(self) -> None:
        if self._pool is not None:
            return
        asyncpg = postgres_driver()
        self._errors = (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)
        pool = await asyncpg.create_pool(self._dsn.reveal(), min_size=0, max_size=POOL_SIZE, timeout=CALL_TIMEOUT * 5)
        try:
            async with pool.acquire() as connection:
                check_version("identity", await postgres_version(connection, "identity"), self._where)
        except BaseException:
            await pool.close()
            raise
        self._pool = pool

    async def _call(self, method: str, sql: str, args: tuple[object, ...]) -> Any:
        if self._pool is None:
            raise IdentityUnavailable()
        try:
            async with asyncio.timeout(CALL_TIMEOUT):  # the pool's connect included
                return await getattr(self._pool, method)(numbered(sql), *args)
        except self._errors:
            raise IdentityUnavailable() from None

    async def execute(self, sql: str, *args: object) -> int:
        status = await self._call("execute", sql, args)
        # "UPDATE 3", "INSERT 0 1", "DELETE 0": the count is the last word
        tail = str(status).rsplit(" ", 1)[-1]
        return int(tail) if tail.isdigit() else 0

    async def fetchone(self, sql: str, *args: object) -> tuple[Any, ...] | None:
        record = await self._call("fetchrow", sql, args)
        return None if record is None else tuple(record)

    async def fetchall(self, sql: str, *args: object) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in await self._call("fetch", sql, args)]

    async def aclose(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()
