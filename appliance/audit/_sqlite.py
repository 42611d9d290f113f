"""The audit trail in SQLite: in the accounting database file, beside the usage rows.

Each append is one ``BEGIN IMMEDIATE`` transaction that reads the head,
inserts the chained record and moves the head: two writers (two processes on
one file) cannot both chain to the same head.  Triggers refuse ``UPDATE`` and
``DELETE`` on the records, so that nothing in the appliance (or a careless
hand) can change them; someone who drops the triggers is what
:func:`policy.audit.verify` is for.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from pathlib import Path
from typing import Final

from policy.audit import AuditEvent, AuditRecord, Head, chain, head_of

from ._query import Query

__all__ = ["SCHEMA", "SqliteAuditStore"]

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY,
    time REAL NOT NULL,
    kind TEXT NOT NULL,
    actor TEXT NOT NULL,
    subject TEXT NOT NULL,
    details TEXT NOT NULL,
    prev TEXT NOT NULL,
    hash TEXT NOT NULL,
    sig TEXT
);
CREATE TABLE IF NOT EXISTS audit_head (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    seq INTEGER NOT NULL,
    hash TEXT NOT NULL,
    sig TEXT
);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END;
"""

# How long a writer waits for another process's transaction on the file (milliseconds).
BUSY_TIMEOUT_MS: Final = 5000

_COLUMNS: Final = "seq, time, kind, actor, subject, details, prev, hash, sig"


def _row(row: tuple[object, ...]) -> AuditRecord:
    seq, when, kind, actor, subject, details, prev, digest, sig = row
    # int() and float() of whatever the row holds: a wrong type raises, which is the check.
    return AuditRecord(
        int(seq),  # type: ignore[call-overload]  # a wrong type raises: the check
        float(when),  # type: ignore[arg-type]  # likewise
        str(kind),
        str(actor),
        str(subject),
        json.loads(str(details)),
        str(prev),
        str(digest),
        None if sig is None else str(sig),
    )


class SqliteAuditStore:
    def __init__(self, path: str | Path, key: bytes | None = None, read_only: bool = False) -> None:
        self.path = Path(path)
        self._key = key
        if read_only:
            if not self.path.is_file():
                raise FileNotFoundError(f"no database at {self.path}")
            self._db = sqlite3.connect(
                f"file:{self.path.resolve()}?mode=ro", uri=True, isolation_level=None, check_same_thread=False
            )
        else:
            if not self.path.exists():  # nobody else's business: readable by its owner only
                with contextlib.suppress(FileExistsError):
                    os.close(os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
            self._db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
            self._db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.executescript(SCHEMA)
        self._db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")

    async def append(self, event: AuditEvent) -> AuditRecord:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            found = db.execute("SELECT seq, hash, sig FROM audit_head WHERE id = 1").fetchone()
            record = chain(None if found is None else Head(*found), event, self._key)
            db.execute(
                f"INSERT INTO audit ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",  # nosec B608 (fixed columns)
                (
                    record.seq,
                    record.time,
                    record.kind,
                    record.actor,
                    record.subject,
                    json.dumps(dict(record.details), sort_keys=True),
                    record.prev,
                    record.hash,
                    record.sig,
                ),
            )
            head = head_of(record, self._key)
            db.execute(
                "INSERT INTO audit_head (id, seq, hash, sig) VALUES (1, ?, ?, ?) ON CONFLICT(id) DO UPDATE "
                "SET seq = excluded.seq, hash = excluded.hash, sig = excluded.sig",
                (head.seq, head.hash, head.sig),
            )
            db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            raise
        return record

    async def records(self, query: Query | None = None) -> list[AuditRecord]:
        """Records in stored order (``rowid``: what verification must see), filtered by ``query``."""
        if not self._has_trail():
            return []
        where, params = (query or Query()).sql("?")
        rows = self._db.execute(f"SELECT {_COLUMNS} FROM audit{where} ORDER BY rowid", params)  # nosec B608
        return [_row(r) for r in rows]

    async def head(self) -> Head | None:
        if not self._has_trail():
            return None
        found = self._db.execute("SELECT seq, hash, sig FROM audit_head WHERE id = 1").fetchone()
        return None if found is None else Head(int(found[0]), str(found[1]), found[2])

    def _has_trail(self) -> bool:
        return self._db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'audit'").fetchone() is not None

    async def aclose(self) -> None:
        self._db.close()
