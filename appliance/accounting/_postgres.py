"""Usage rows in PostgreSQL, for several appliance replicas writing to one place.

Optional: needs ``asyncpg`` (``pip install asyncpg``).  Each row is one
INSERT, committed (PostgreSQL's default ``synchronous_commit = on``: flushed
to its WAL) before :meth:`PostgresAccounting.record` returns.  The DSN comes
from a file (``[accounting] dsn_file``): it usually holds a password.
"""

from __future__ import annotations

from typing import Any, Final

from ._rows import REPORT_SQL, ReportRow, UsageRow

__all__ = ["SCHEMA", "PostgresAccounting"]

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS usage (
    id BIGSERIAL PRIMARY KEY,
    time DOUBLE PRECISION NOT NULL,
    day TEXT NOT NULL,
    request_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    key_id TEXT,
    model TEXT NOT NULL,
    route TEXT NOT NULL,
    status INTEGER NOT NULL,
    prompt_tokens BIGINT NOT NULL,
    completion_tokens BIGINT NOT NULL,
    latency_ms DOUBLE PRECISION NOT NULL,
    first_token_ms DOUBLE PRECISION,
    sealed INTEGER NOT NULL,
    audio_ms BIGINT NOT NULL DEFAULT 0,
    model_revision TEXT,
    backend_version TEXT
);
CREATE INDEX IF NOT EXISTS usage_by_day ON usage (day, user_id, model);
"""

# Written out (not built from COLUMNS): a fixed statement; a test holds it to COLUMNS.
_INSERT: Final = (
    "INSERT INTO usage (time, day, request_id, user_id, key_id, model, route, status,"
    " prompt_tokens, completion_tokens, latency_ms, first_token_ms, sealed, audio_ms, model_revision, backend_version)"
    " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)"
)

# Connections per appliance replica.
POOL_SIZE: Final = 4


def _driver() -> Any:
    try:
        import asyncpg
    except ImportError:
        raise RuntimeError("the postgresql accounting backend needs asyncpg: pip install asyncpg") from None
    return asyncpg


def _numbered(sql: str) -> str:
    """``?`` placeholders as PostgreSQL's ``$1, $2, ...``."""
    parts = sql.split("?")
    return "".join(part + (f"${i}" if i < len(parts) else "") for i, part in enumerate(parts, start=1))


class PostgresAccounting:
    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._pool: Any = None

    async def start(self) -> None:
        if self._pool is not None:
            return
        asyncpg = _driver()
        self._pool = await asyncpg.create_pool(self._dsn, min_size=1, max_size=POOL_SIZE)
        async with self._pool.acquire() as connection:
            await connection.execute(SCHEMA)

    async def record(self, row: UsageRow, busy: bool = False) -> None:
        if self._pool is None:
            raise RuntimeError("accounting is not started")
        values = list(row.values())
        await self._pool.execute(_INSERT, *values)

    async def report(self, since: str, until: str, user: str | None = None, model: str | None = None) -> list[ReportRow]:
        if self._pool is None:
            raise RuntimeError("accounting is not started")
        filters, params = "", []
        if user is not None:
            filters += " AND user_id = ?"
            params.append(user)
        if model is not None:
            filters += " AND model = ?"
            params.append(model)
        sql = _numbered(REPORT_SQL.format(filters=filters))
        records = await self._pool.fetch(sql, since, until, *params)
        return [
            ReportRow(r[0], r[1], r[2], int(r[3]), int(r[4] or 0), int(r[5] or 0), int(r[6] or 0), int(r[7] or 0),
                      round(float(r[8] or 0.0), 3))
            for r in records
        ]

    async def aclose(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()
