"""The identity database: one SQLite file for API keys, users' groups and web sessions.

Opened by the appliance (one connection, used from its event loop: every
query is a primary-key or index lookup of microseconds) and by the ``sluice
keys`` command (its own connection).  WAL mode lets the command write while
the appliance reads.  The file is created readable by its owner only.

What it holds: key hashes (never keys), user ids, email, display names and
group names, session hashes (never session ids) and ID tokens for logout.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Final

__all__ = ["SCHEMA_VERSION", "open_database"]

SCHEMA_VERSION: Final = 1

# A write waits this long for another writer (the CLI) before failing.
BUSY_TIMEOUT_MS: Final = 2000

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS users (
    user TEXT PRIMARY KEY,
    email TEXT,
    name TEXT,
    groups TEXT NOT NULL,          -- JSON list of group names
    source TEXT NOT NULL,          -- oidc, jwt, header or admin
    refreshed REAL NOT NULL        -- when the groups were last asserted (unix time)
);
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,           -- the public lookup id inside the key
    digest BLOB NOT NULL,          -- sha256 of the whole key
    owner TEXT NOT NULL,
    name TEXT NOT NULL,
    scope TEXT,                    -- JSON list of model names, or NULL for all the owner may use
    created REAL NOT NULL,
    expires REAL,                  -- NULL: no expiry (operator keys only)
    revoked REAL,
    created_by TEXT NOT NULL       -- web or cli
);
CREATE INDEX IF NOT EXISTS api_keys_owner ON api_keys(owner);
CREATE TABLE IF NOT EXISTS sessions (
    digest BLOB PRIMARY KEY,       -- sha256 of the session id in the cookie
    user TEXT NOT NULL,
    created REAL NOT NULL,
    expires REAL NOT NULL,
    id_token TEXT                  -- for RP-initiated logout (id_token_hint)
);
CREATE INDEX IF NOT EXISTS sessions_expires ON sessions(expires);
"""


def open_database(path: Path | str) -> sqlite3.Connection:
    """Open (creating if needed, mode 0600) and migrate the database at ``path``."""
    path = Path(path)
    if str(path) != ":memory:" and not path.exists():
        fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o600)
        os.close(fd)
    connection = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    if str(path) != ":memory:":
        connection.execute("PRAGMA journal_mode = WAL")
    connection.execute("PRAGMA synchronous = NORMAL")
    version = connection.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        connection.close()
        raise ValueError(f"{path} was written by a newer Sluice (schema {version})")
    if version < SCHEMA_VERSION:
        connection.executescript("BEGIN;" + _SCHEMA + f"PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;")
    return connection
