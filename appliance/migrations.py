"""Versioned schemas of the appliance's two stores, for SQLite and PostgreSQL.

Each store (``identity``: users, API keys, web sessions; ``accounting``:
usage rows) has a numbered list of :class:`Step` s, each written for both
databases.  A table ``schema_version`` (one row per store) says how many
steps a database has had.  Steps run in order, each in its own
transaction together with the new version number, so that a failed step
changes nothing.

Who applies them:

* ``sluice db upgrade --config FILE`` applies every missing step, to
  either database.  On PostgreSQL it holds an advisory lock, so that two
  operators (or two replicas' start scripts) cannot run the same step twice.
* An appliance on **SQLite** (the embedded default: one process owns the
  file) applies missing steps itself when it opens the file, as it always
  has.
* An appliance on **PostgreSQL** never changes the schema: several replicas
  share it, and a schema change is an operator's decision.  On a database
  with missing steps it refuses to start and names the command to run.

On either database, a schema newer than this Sluice knows (a newer release
wrote it) stops the appliance at start: an older release must not write
rows into tables it does not understand.

To add a table or a column: append a ``Step`` with the next number to the
store's tuple below, with its SQL for both databases.  Never edit a step
that has shipped.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Any, Final

from policy.errors import InternalError

__all__ = [
    "ACCOUNTING",
    "IDENTITY",
    "STORES",
    "SchemaError",
    "Step",
    "check_version",
    "latest",
    "postgres_upgrade",
    "postgres_version",
    "sqlite_upgrade",
    "sqlite_version",
]


@dataclass(frozen=True, slots=True)
class Step:
    version: int
    summary: str
    sqlite: str
    postgresql: str


class SchemaError(InternalError, RuntimeError):
    """The database's schema is not the one this Sluice writes; the message says what to do."""


# Column names `user` and `groups` are keywords in PostgreSQL: always written quoted.
IDENTITY: Final = (
    Step(
        1,
        "users, API keys and web sessions",
        sqlite="""
CREATE TABLE IF NOT EXISTS users (
    "user" TEXT PRIMARY KEY, email TEXT, name TEXT, "groups" TEXT NOT NULL, source TEXT NOT NULL,
    refreshed REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY, digest BLOB NOT NULL, owner TEXT NOT NULL, name TEXT NOT NULL, scope TEXT,
    created REAL NOT NULL, expires REAL, revoked REAL, created_by TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS api_keys_owner ON api_keys(owner);
CREATE TABLE IF NOT EXISTS sessions (
    digest BLOB PRIMARY KEY, "user" TEXT NOT NULL, created REAL NOT NULL, expires REAL NOT NULL, id_token TEXT
);
CREATE INDEX IF NOT EXISTS sessions_expires ON sessions(expires);
""",
        postgresql="""
CREATE TABLE users (
    "user" TEXT PRIMARY KEY, email TEXT, name TEXT, "groups" TEXT NOT NULL, source TEXT NOT NULL,
    refreshed DOUBLE PRECISION NOT NULL
);
CREATE TABLE api_keys (
    id TEXT PRIMARY KEY, digest BYTEA NOT NULL, owner TEXT NOT NULL, name TEXT NOT NULL, scope TEXT,
    created DOUBLE PRECISION NOT NULL, expires DOUBLE PRECISION, revoked DOUBLE PRECISION, created_by TEXT NOT NULL
);
CREATE INDEX api_keys_owner ON api_keys(owner);
CREATE TABLE sessions (
    digest BYTEA PRIMARY KEY, "user" TEXT NOT NULL, created DOUBLE PRECISION NOT NULL,
    expires DOUBLE PRECISION NOT NULL, id_token TEXT
);
CREATE INDEX sessions_expires ON sessions(expires);
""",
    ),
)

ACCOUNTING: Final = (
    Step(
        1,
        "usage rows",
        sqlite="""
CREATE TABLE IF NOT EXISTS usage (
    id INTEGER PRIMARY KEY, time REAL NOT NULL, day TEXT NOT NULL, request_id TEXT NOT NULL,
    user_id TEXT NOT NULL, key_id TEXT, model TEXT NOT NULL, route TEXT NOT NULL, status INTEGER NOT NULL,
    prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL, latency_ms REAL NOT NULL,
    first_token_ms REAL, sealed INTEGER NOT NULL
);
""",
        postgresql="""
CREATE TABLE IF NOT EXISTS usage (
    id BIGSERIAL PRIMARY KEY, time DOUBLE PRECISION NOT NULL, day TEXT NOT NULL, request_id TEXT NOT NULL,
    user_id TEXT NOT NULL, key_id TEXT, model TEXT NOT NULL, route TEXT NOT NULL, status INTEGER NOT NULL,
    prompt_tokens BIGINT NOT NULL, completion_tokens BIGINT NOT NULL, latency_ms DOUBLE PRECISION NOT NULL,
    first_token_ms DOUBLE PRECISION, sealed INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS usage_by_day ON usage (day, user_id, model);
""",
    ),
    Step(
        2,
        "one row per request id (replicas replay their journals idempotently)",
        # SQLite: one appliance writes, and never replays; a unique index would add a page to
        # every commit on the request path, so it gets none (a no-op step keeps the numbers aligned).
        sqlite="SELECT 1;",
        postgresql="""
DELETE FROM usage a USING usage b WHERE a.request_id = b.request_id AND a.id > b.id;
CREATE UNIQUE INDEX usage_request_id ON usage (request_id);
""",
    ),
    Step(
        3,
        "audio length, model revision and backend version of each request",
        sqlite="""
ALTER TABLE usage ADD COLUMN audio_ms INTEGER NOT NULL DEFAULT 0;
ALTER TABLE usage ADD COLUMN model_revision TEXT;
ALTER TABLE usage ADD COLUMN backend_version TEXT;
""",
        postgresql="""
ALTER TABLE usage ADD COLUMN audio_ms BIGINT NOT NULL DEFAULT 0;
ALTER TABLE usage ADD COLUMN model_revision TEXT;
ALTER TABLE usage ADD COLUMN backend_version TEXT;
""",
    ),
)

STORES: Final = {"identity": IDENTITY, "accounting": ACCOUNTING}

_VERSION_TABLE: Final = "CREATE TABLE IF NOT EXISTS schema_version (store TEXT PRIMARY KEY, version INTEGER NOT NULL)"

# PostgreSQL advisory lock key held by `sluice db upgrade` ("sluice" in ASCII).
_UPGRADE_LOCK: Final = 0x736C75696365


def latest(store: str) -> int:
    return STORES[store][-1].version


def check_version(store: str, version: int, where: str, upgrade_hint: bool = True) -> None:
    """Raise :class:`SchemaError` unless ``version`` is the newest this Sluice knows for ``store``."""
    newest = latest(store)
    if version > newest:
        raise SchemaError(
            f"{where}: the {store} schema is version {version}, newer than this Sluice knows ({newest}); "
            "run the Sluice release that upgraded it (or newer)"
        )
    if version < newest and upgrade_hint:
        raise SchemaError(
            f"{where}: the {store} schema is version {version}, this Sluice needs {newest}; "
            "run `sluice db upgrade --config <the appliance's configuration>` (once, from one machine)"
        )


# -- SQLite -----------------------------------------------------------------------------------


def sqlite_version(connection: sqlite3.Connection, store: str) -> int:
    connection.execute(_VERSION_TABLE)
    row = connection.execute("SELECT version FROM schema_version WHERE store = ?", (store,)).fetchone()
    return 0 if row is None else int(row[0])


def sqlite_upgrade(connection: sqlite3.Connection, store: str, where: str) -> list[int]:
    """Apply ``store``'s missing steps (each in one transaction); the versions applied."""
    version = sqlite_version(connection, store)
    check_version(store, version, where, upgrade_hint=False)
    applied = []
    for step in STORES[store]:
        if step.version <= version:
            continue
        try:
            # (executescript would commit a transaction opened before it: the script opens it)
            connection.executescript("BEGIN IMMEDIATE;" + step.sqlite)
            connection.execute(
                "INSERT INTO schema_version (store, version) VALUES (?, ?)"
                " ON CONFLICT(store) DO UPDATE SET version = excluded.version",
                (store, step.version),
            )
            connection.execute("COMMIT")
        except BaseException:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise
        applied.append(step.version)
    return applied


# -- PostgreSQL (asyncpg connections) -----------------------------------------------------------


async def postgres_version(connection: Any, store: str) -> int:
    exists = await connection.fetchval("SELECT to_regclass('schema_version') IS NOT NULL")
    if not exists:
        return 0
    version = await connection.fetchval("SELECT version FROM schema_version WHERE store = $1", store)
    return 0 if version is None else int(version)


async def postgres_upgrade(connection: Any, store: str, where: str) -> list[int]:
    """Apply ``store``'s missing steps under an advisory lock; the versions applied."""
    await connection.execute("SELECT pg_advisory_lock($1)", _UPGRADE_LOCK)
    try:
        await connection.execute(_VERSION_TABLE)
        version = await postgres_version(connection, store)
        check_version(store, version, where, upgrade_hint=False)
        applied = []
        for step in STORES[store]:
            if step.version <= version:
                continue
            async with connection.transaction():
                await connection.execute(step.postgresql)
                await connection.execute(
                    "INSERT INTO schema_version (store, version) VALUES ($1, $2)"
                    " ON CONFLICT (store) DO UPDATE SET version = excluded.version",
                    store,
                    step.version,
                )
            applied.append(step.version)
        return applied
    finally:
        await connection.execute("SELECT pg_advisory_unlock($1)", _UPGRADE_LOCK)
