"""The audit trail in PostgreSQL: in the accounting database, for several appliance replicas.

Each append locks the one head row (``SELECT ... FOR UPDATE``), so replicas
append one after another and the chain stays one chain.  A trigger refuses
``UPDATE`` and ``DELETE`` on the records.  Needs ``asyncpg``, like the
PostgreSQL accounting store.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Final

from policy.audit import GENESIS, AuditEvent, AuditRecord, Head, chain, head_of

from ..accounting._postgres import _driver
from ..auth.secret import Secret, carried
from ._query import Query

__all__ = ["SCHEMA", "PostgresAuditStore"]

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS audit (
    seq BIGINT PRIMARY KEY,
    time DOUBLE PRECISION NOT NULL,
    kind TEXT NOT NULL,
    actor TEXT NOT NULL,
    subject TEXT NOT NULL,
    details TEXT NOT NULL,
    prev TEXT NOT NULL,
    hash TEXT NOT NULL,
    sig TEXT,
    stored BIGSERIAL
);
CREATE TABLE IF NOT EXISTS audit_head (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    seq BIGINT NOT NULL,
    hash TEXT NOT NULL,
    sig TEXT
);
CREATE OR REPLACE FUNCTION audit_append_only() RETURNS trigger AS $$
BEGIN RAISE EXCEPTION 'the audit trail is append-only'; END; $$ LANGUAGE plpgsql;
DROP TRIGGER IF EXISTS audit_append_only ON audit;
CREATE TRIGGER audit_append_only BEFORE UPDATE OR DELETE ON audit
    FOR EACH ROW EXECUTE FUNCTION audit_append_only();
"""

# The advisory lock id under which the schema is created (any constant the database does not use otherwise).
SCHEMA_LOCK: Final = 0x51_01CE_A0D1

_COLUMNS: Final = "seq, time, kind, actor, subject, details, prev, hash, sig"


class PostgresAuditStore:
    def __init__(self, dsn: str | Secret, key: bytes | None = None) -> None:
        self._dsn = carried(dsn)  # revealed only to connect
        self._key = key
        self._connection: Any = None
        self._lock = asyncio.Lock()  # one connection: one operation at a time

    async def _db(self) -> Any:
        if self._connection is None:
            connection = await _driver().connect(self._dsn.reveal())
            try:
                async with connection.transaction():
                    # replicas starting together: one creates the schema, the others wait for it
                    await connection.execute(f"SELECT pg_advisory_xact_lock({SCHEMA_LOCK})")
                    await connection.execute(SCHEMA)
                    # the empty trail's head: every append then locks this one row
                    await connection.execute(
                        "INSERT INTO audit_head (id, seq, hash, sig) VALUES (1, 0, $1, NULL) ON CONFLICT (id) DO NOTHING", GENESIS
                    )
            except BaseException:
                await connection.close()
                raise
            self._connection = connection
        return self._connection

    async def append(self, event: AuditEvent) -> AuditRecord:
        async with self._lock:
            return await self._append(event)

    async def _append(self, event: AuditEvent) -> AuditRecord:
        db = await self._db()
        async with db.transaction():
            found = await db.fetchrow("SELECT seq, hash, sig FROM audit_head WHERE id = 1 FOR UPDATE")
            record = chain(Head(int(found[0]), str(found[1]), found[2]), event, self._key)
            await db.execute(
                f"INSERT INTO audit ({_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",  # nosec B608
                record.seq,
                record.time,
                record.kind,
                record.actor,
                record.subject,
                json.dumps(dict(record.details), sort_keys=True),
                record.prev,
                record.hash,
                record.sig,
            )
            head = head_of(record, self._key)
            await db.execute("UPDATE audit_head SET seq = $1, hash = $2, sig = $3 WHERE id = 1", head.seq, head.hash, head.sig)
        return record

    async def records(self, query: Query | None = None) -> list[AuditRecord]:
        async with self._lock:
            return await self._records(query)

    async def _records(self, query: Query | None) -> list[AuditRecord]:
        db = await self._db()
        where, params = (query or Query()).sql("$")
        rows = await db.fetch(f"SELECT {_COLUMNS} FROM audit{where} ORDER BY stored", *params)  # nosec B608
        return [AuditRecord(int(r[0]), float(r[1]), r[2], r[3], r[4], json.loads(r[5]), r[6], r[7], r[8]) for r in rows]

    async def head(self) -> Head | None:
        async with self._lock:
            db = await self._db()
            found = await db.fetchrow("SELECT seq, hash, sig FROM audit_head WHERE id = 1")
        return None if found is None else Head(int(found[0]), str(found[1]), found[2])

    async def aclose(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            await connection.close()
