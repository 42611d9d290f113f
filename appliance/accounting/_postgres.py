"""Usage rows in PostgreSQL, for several appliance replicas writing to one place.

Optional: needs ``asyncpg`` (the ``postgres`` extra).  Each row is one
INSERT, committed (PostgreSQL's default ``synchronous_commit = on``: flushed
to its WAL) before :meth:`PostgresAccounting.record` returns.  The DSN comes
from a file (``[accounting] dsn_file``): it usually holds a password.

Nothing is lost while the database is briefly away: a row whose INSERT
fails (or takes longer than ``RECORD_TIMEOUT``) goes to this replica's
journal (:mod:`._journal`, fsync'd) before ``record`` returns, and later
rows go straight there until a background task has written the journal
into PostgreSQL.  While other requests are in flight, the rows of one loop
iteration share one transaction (group commit).  Each request id is one row at most (a unique index, and
``ON CONFLICT DO NOTHING``), so replays after a crash never double a row.

The schema is never changed here: :meth:`start` refuses a database whose
schema is not the one this Sluice writes (``sluice db upgrade``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Any, Final

from policy.events import event_line

from ..auth.secret import Secret, carried
from ..migrations import check_version, postgres_version
from ._journal import Journal
from ._rows import REPORT_SQL, ReportRow, UsageRow

__all__ = ["PostgresAccounting"]

log = logging.getLogger("sluice.metering")

# Written out (not built from COLUMNS): a fixed statement; a test holds it to COLUMNS.
_INSERT: Final = (
    "INSERT INTO usage (time, day, request_id, user_id, key_id, model, route, status,"
    " prompt_tokens, completion_tokens, latency_ms, first_token_ms, sealed, audio_ms, model_revision, backend_version)"
    " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)"
    " ON CONFLICT (request_id) DO NOTHING"
)

# Connections per appliance replica.
POOL_SIZE: Final = 4

# An INSERT that takes longer than this (seconds) counts as failed: the row goes to the journal,
# so that an answer never waits long for a database that is away.
RECORD_TIMEOUT: Final = 1.0

# While rows wait in the journal, the database is tried this often (seconds).
RETRY_EVERY: Final = 1.0

# Rows written per statement when a journal is replayed.
REPLAY_BATCH: Final = 1000


def _driver() -> Any:
    from ..auth._db import postgres_driver

    return postgres_driver()


def _numbered(sql: str) -> str:
    from ..auth._db import numbered

    return numbered(sql)


class PostgresAccounting:
    def __init__(self, dsn: str | Secret, journal: Path | None = None) -> None:
        self._dsn = carried(dsn)  # revealed only to open the pool
        self._journal = None if journal is None else Journal(journal)
        self._pool: Any = None
        self._errors: tuple[type[BaseException], ...] = ()
        self._down = False  # rows go straight to the journal until it has been replayed
        self._wake = asyncio.Event()
        self._replayer: asyncio.Task[None] | None = None
        # Rows of one loop iteration while others are in flight: one transaction (group commit).
        self._batch: list[tuple[tuple[object, ...], asyncio.Future[bool]]] | None = None
        self._flushes: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        if self._pool is not None:
            return
        asyncpg = _driver()
        self._errors = (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)
        pool = await asyncpg.create_pool(self._dsn.reveal(), min_size=0, max_size=POOL_SIZE, timeout=10)
        try:
            async with pool.acquire() as connection:
                check_version("accounting", await postgres_version(connection, "accounting"), "accounting.dsn_file")
        except BaseException:
            await pool.close()
            raise
        self._pool = pool
        if self._journal is not None:
            self._wake = asyncio.Event()
            self._replayer = asyncio.get_running_loop().create_task(self._replay_loop())
            if self._journal.pending():
                self._down = True
                self._wake.set()

    async def record(self, row: UsageRow, busy: bool = False) -> None:
        if self._pool is None:
            raise RuntimeError("accounting is not started")
        values = row.values()
        if self._journal is None:
            await self._pool.execute(_INSERT, *values)
            return
        if not self._down:
            if busy or self._batch is not None:
                if await self._batched(values):
                    return
            else:
                try:
                    async with asyncio.timeout(RECORD_TIMEOUT):
                        await self._pool.execute(_INSERT, *values)
                    return
                except self._errors as exc:
                    self._went_away(exc)
        await asyncio.to_thread(self._journal.append, [values])
        self._wake.set()

    def _went_away(self, exc: BaseException) -> None:
        if not self._down:
            log.warning(event_line("accounting_journaling", error=type(exc).__name__))
        self._down = True

    async def _batched(self, values: tuple[object, ...]) -> bool:
        """Commit ``values`` with the other rows of this loop iteration; False if the database failed."""
        loop = asyncio.get_running_loop()
        if self._batch is None:
            self._batch = []
            loop.call_soon(self._start_flush)
        done: asyncio.Future[bool] = loop.create_future()
        self._batch.append((values, done))
        return await done

    def _start_flush(self) -> None:
        batch, self._batch = self._batch or [], None
        task = asyncio.get_running_loop().create_task(self._flush(batch))
        self._flushes.add(task)
        task.add_done_callback(self._flushes.discard)

    async def _flush(self, batch: list[tuple[tuple[object, ...], asyncio.Future[bool]]]) -> None:
        committed = False
        try:
            async with asyncio.timeout(RECORD_TIMEOUT), self._pool.acquire() as connection:
                async with connection.transaction():
                    await connection.executemany(_INSERT, [values for values, _ in batch])
            committed = True
        except self._errors as exc:
            self._went_away(exc)
        finally:
            for _, done in batch:
                if not done.done():
                    done.set_result(committed)

    async def _replay_loop(self) -> None:
        journal = self._journal
        if journal is None:
            return
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                async with asyncio.timeout(RETRY_EVERY):
                    await self._wake.wait()
            self._wake.clear()
            if not self._down and not journal.pending():
                continue
            try:
                written = await self.replay()
            except self._errors:
                continue  # still away: try again in a second
            if written:
                log.warning(event_line("accounting_journal_replayed", rows=written))

    async def replay(self) -> int:
        """Write the journal into PostgreSQL; the rows read.  Raises when the database is away."""
        journal = self._journal
        if journal is None or self._pool is None:
            return 0
        total = 0
        while True:
            path = await asyncio.to_thread(journal.take)
            if path is None:
                self._down = False
                return total
            rows = await asyncio.to_thread(journal.read, path)
            async with asyncio.timeout(RECORD_TIMEOUT * 10), self._pool.acquire() as connection:
                async with connection.transaction():
                    for start in range(0, len(rows), REPLAY_BATCH):
                        await connection.executemany(_INSERT, rows[start : start + REPLAY_BATCH])
            await asyncio.to_thread(journal.done, path)
            total += len(rows)

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
            ReportRow(
                r[0],
                r[1],
                r[2],
                int(r[3]),
                int(r[4] or 0),
                int(r[5] or 0),
                int(r[6] or 0),
                int(r[7] or 0),
                round(float(r[8] or 0.0), 3),
            )
            for r in records
        ]

    async def aclose(self) -> None:
        if self._flushes:
            await asyncio.gather(*self._flushes, return_exceptions=True)
        replayer, self._replayer = self._replayer, None
        if replayer is not None:
            replayer.cancel()
            await asyncio.gather(replayer, return_exceptions=True)
            with contextlib.suppress(*self._errors):
                await self.replay()  # what can be written now; the rest waits for the next start
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()
