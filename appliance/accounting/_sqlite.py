"""Usage rows in SQLite (WAL mode), committed before the answer's last byte, with group commit.

:meth:`SqliteAccounting.record` returns once the row is committed.  Where
the commit runs depends on what it may wait for:

- ``synchronous = "normal"`` (the default): a commit appends the row to the
  write-ahead log with a few ``write()`` calls into the page cache and waits
  for no disk, so it runs right there on the event loop (about 14
  microseconds: less than handing it to a thread and back).  While other
  requests are in flight, rows wait up to :data:`GROUP_WAIT` (or until
  :data:`MAX_BATCH` are waiting) to share one commit (group commit): a
  batch costs about a third of a commit per row, writes each page to the
  log once instead of once per row, and leaves the checkpointer less to
  copy; an appliance with nothing else in flight commits at once.  What could
  wait is kept off the loop: this connection never waits for a lock
  (``busy_timeout`` is 0; a row that finds the database locked, by a backup
  say, is retried on a thread that may wait), and the log is checkpointed
  into the database by a background thread (automatic checkpoints are off
  for the writer).  The row is in the operating system when ``record``
  returns: a crash of the appliance, even ``kill -9`` right after the
  answer, keeps it.
- ``synchronous = "full"``: each commit is also fsync'd (the row survives a
  power loss or kernel crash too), so commits run on a writer thread, which
  puts every row waiting at that moment into one commit (group commit).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import os
import queue
import sqlite3
import threading
from pathlib import Path
from typing import Final

from ..migrations import ACCOUNTING, sqlite_upgrade
from ._rows import REPORT_SQL, ReportRow, UsageRow

__all__ = ["SCHEMA", "SqliteAccounting"]

SCHEMA: Final = ACCOUNTING[0].sqlite  # the first schema step; later steps in appliance.migrations
# No secondary index: each one adds a page to every commit on the request path.  Rows are
# appended in time order, and `sluice usage` scans them; a large installation can add
# `CREATE INDEX usage_by_day ON usage (day)` by hand, and the report query will use it.

# Small pages: a commit writes whole pages to the write-ahead log, and a row is ~150 bytes.
PAGE_SIZE: Final = 1024

# Written out (not built from COLUMNS): a fixed statement; a test holds it to COLUMNS.
_INSERT: Final = (
    "INSERT INTO usage (time, day, request_id, user_id, key_id, model, route, status,"
    " prompt_tokens, completion_tokens, latency_ms, first_token_ms, sealed, audio_ms, model_revision, backend_version)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)

# Rows committed together at most (more wait for the next commit); in normal mode, this many
# waiting rows are committed at once, whatever GROUP_WAIT says.
MAX_BATCH: Final = 512

# Seconds a row of a busy appliance (other requests in flight) waits for others to share its
# commit: small beside the answers it delays, long enough to gather the rows of several loop turns.
GROUP_WAIT: Final = 0.002

# How long a connection that may wait (threads) waits for a lock held by another process
# (a backup, `sqlite3` by hand); `sluice usage` only reads and never holds the writer up.
BUSY_TIMEOUT_MS: Final = 5000

# Seconds between checkpoints of the write-ahead log into the database (normal mode).
CHECKPOINT_EVERY: Final = 1.0

# The write-ahead log is truncated to this size after a checkpoint.
WAL_SIZE_LIMIT: Final = 64 * 1024 * 1024


class _Stop(enum.Enum):
    """The writer's last item (an enum member, so that `is` tells it from a row for mypy too)."""

    STOP = enum.auto()


_STOP: Final = _Stop.STOP

# Errors that mean "another connection holds a lock": worth waiting for, off the loop.
_WAIT_ERRORS: Final = frozenset({"SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_BUSY_SNAPSHOT", "SQLITE_BUSY_RECOVERY"})

SYNCHRONOUS: Final = {"normal": "NORMAL", "full": "FULL"}


def connect(path: str | Path, synchronous: str = "normal", busy_timeout_ms: int = BUSY_TIMEOUT_MS) -> sqlite3.Connection:
    """A connection with the pragmas every writer uses (WAL, synchronous, busy timeout)."""
    connection = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    connection.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
    connection.execute(f"PRAGMA page_size = {PAGE_SIZE}")  # a new database only
    mode = connection.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        connection.close()
        raise sqlite3.OperationalError("the accounting database cannot use WAL mode")
    connection.execute(f"PRAGMA synchronous = {SYNCHRONOUS[synchronous]}")
    connection.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}")
    try:
        sqlite_upgrade(connection, "accounting", str(path))
    except BaseException:
        connection.close()
        raise
    return connection


def _commit(connection: sqlite3.Connection, rows: list[tuple[object, ...]]) -> None:
    if len(rows) == 1:  # one statement in autocommit mode is one transaction
        connection.execute(_INSERT, rows[0])
        return
    try:
        connection.execute("BEGIN IMMEDIATE")
        connection.executemany(_INSERT, rows)
        connection.execute("COMMIT")
    except sqlite3.Error:
        with contextlib.suppress(sqlite3.Error):
            connection.execute("ROLLBACK")
        raise


class SqliteAccounting:
    def __init__(self, path: str | Path, synchronous: str = "normal") -> None:
        if synchronous not in SYNCHRONOUS:
            raise ValueError("synchronous must be 'normal' or 'full'")
        self.path = Path(path)
        self._synchronous = synchronous
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = False
        # Normal mode: the loop's connection, rows waiting for the end of this loop iteration,
        # the checkpointer thread and its stop signal.
        self._connection: sqlite3.Connection | None = None
        self._pending: list[tuple[tuple[object, ...], asyncio.Future[None]]] = []
        self._flush_timer: asyncio.TimerHandle | None = None
        self._slow: set[asyncio.Task[None]] = set()  # batches retried on a thread that may wait for a lock
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._slow_lock = threading.Lock()
        # Full mode: the writer thread's queue.
        self._queue: queue.SimpleQueue[tuple[tuple[object, ...], asyncio.Future[None]] | _Stop] = queue.SimpleQueue()

    async def start(self) -> None:
        if self._started:
            return
        self._loop = asyncio.get_running_loop()
        # Rows are nobody else's business: the file is created readable by its owner only.
        if not self.path.exists():
            with contextlib.suppress(FileExistsError):
                os.close(os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        if self._synchronous == "full":
            connection = await asyncio.to_thread(connect, self.path, "full")
            self._threads = [threading.Thread(target=self._write, args=(connection,), name="sluice-accounting", daemon=True)]
        else:
            connection = await asyncio.to_thread(connect, self.path, "normal", 0)
            connection.execute("PRAGMA wal_autocheckpoint = 0")
            self._connection = connection
            self._threads = [threading.Thread(target=self._checkpoint, name="sluice-accounting-checkpoint", daemon=True)]
        for thread in self._threads:
            thread.start()
        self._started = True

    async def record(self, row: UsageRow, busy: bool = False) -> None:
        """Return once ``row`` is committed.

        ``busy``: other requests are in flight, so more rows are likely soon; the row then
        waits (at most :data:`GROUP_WAIT`) to share a commit with them.
        """
        loop = self._loop
        if not self._started or loop is None:
            raise RuntimeError("accounting is not started")
        connection = self._connection
        if connection is None:  # full: the writer thread
            done = loop.create_future()
            self._queue.put((row.values(), done))
            await done
            return
        if busy or self._pending:
            done = loop.create_future()
            self._pending.append((row.values(), done))
            if len(self._pending) >= MAX_BATCH:
                self._flush()
            elif self._flush_timer is None:
                self._flush_timer = loop.call_later(GROUP_WAIT, self._flush)
            await done
            return
        values = row.values()
        try:
            _commit(connection, [values])
        except sqlite3.OperationalError as exc:
            if getattr(exc, "sqlite_errorname", "") not in _WAIT_ERRORS:
                raise
            # Never wait on the loop: a thread that may wait for the lock retries.
            await asyncio.to_thread(self._commit_with_wait, [values])

    def _flush(self) -> None:
        """Commit the waiting rows together."""
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        batch, self._pending = self._pending, []
        connection = self._connection
        if not batch or connection is None:
            _wake([waiter for _, waiter in batch], sqlite3.OperationalError("closed"))
            return
        rows = [values for values, _ in batch]
        try:
            _commit(connection, rows)
        except sqlite3.OperationalError as exc:
            if getattr(exc, "sqlite_errorname", "") in _WAIT_ERRORS:
                task = asyncio.get_running_loop().create_task(self._commit_slowly(batch))
                self._slow.add(task)  # held (and awaited at close): accepted rows are not dropped
                task.add_done_callback(self._slow.discard)
            else:
                _wake([waiter for _, waiter in batch], exc)
            return
        except sqlite3.Error as exc:
            _wake([waiter for _, waiter in batch], exc)
            return
        _wake([waiter for _, waiter in batch], None)

    async def _commit_slowly(self, batch: list[tuple[tuple[object, ...], asyncio.Future[None]]]) -> None:
        error: BaseException | None = None
        try:
            await asyncio.to_thread(self._commit_with_wait, [values for values, _ in batch])
        except sqlite3.Error as exc:
            error = exc
        _wake([waiter for _, waiter in batch], error)

    def _commit_with_wait(self, rows: list[tuple[object, ...]]) -> None:
        with self._slow_lock:
            connection = sqlite3.connect(str(self.path), isolation_level=None)
            try:
                connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
                _commit(connection, rows)
            finally:
                connection.close()

    def _checkpoint(self) -> None:
        connection = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
        try:
            connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            while not self._stopping.wait(CHECKPOINT_EVERY):
                with contextlib.suppress(sqlite3.Error):
                    connection.execute("PRAGMA wal_checkpoint(PASSIVE)")
        finally:
            connection.close()

    # -- full: commits on the writer thread ------------------------------------------------------
    def _write(self, connection: sqlite3.Connection) -> None:
        loop = self._loop
        if loop is None:
            connection.close()
            return
        get, get_nowait = self._queue.get, self._queue.get_nowait
        stopping = False
        try:
            while not stopping:
                batch = [get()]
                while len(batch) < MAX_BATCH:
                    try:
                        batch.append(get_nowait())
                    except queue.Empty:
                        break
                if _STOP in batch:
                    stopping = True
                rows = [item for item in batch if item is not _STOP]
                if not rows:
                    continue
                error: BaseException | None = None
                try:
                    _commit(connection, [item[0] for item in rows])
                except sqlite3.Error as exc:
                    error = exc
                with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
                    loop.call_soon_threadsafe(_wake, [item[1] for item in rows], error)
        finally:
            connection.close()

    async def report(self, since: str, until: str, user: str | None = None, model: str | None = None) -> list[ReportRow]:
        return await asyncio.to_thread(report, self.path, since, until, user, model)

    async def aclose(self) -> None:
        if not self._started:
            return
        self._started = False
        if self._pending:
            self._flush()  # what was accepted is committed before the store closes
        if self._slow:
            await asyncio.gather(*self._slow, return_exceptions=True)
        self._stopping.set()
        self._queue.put(_STOP)
        for thread in self._threads:
            await asyncio.to_thread(thread.join)
        self._threads = []
        if self._connection is not None:
            with contextlib.suppress(sqlite3.Error):
                self._connection.execute("PRAGMA wal_checkpoint(PASSIVE)")
            self._connection.close()
            self._connection = None


def _wake(waiters: list[asyncio.Future[None]], error: BaseException | None) -> None:
    for waiter in waiters:
        if waiter.done():
            continue
        if error is None:
            waiter.set_result(None)
        else:
            waiter.set_exception(sqlite3.OperationalError(type(error).__name__))


def report(path: str | Path, since: str, until: str, user: str | None = None, model: str | None = None) -> list[ReportRow]:
    """The per day, user and model report (read-only; runs beside a live appliance)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"no accounting database at {path}")
    connection = sqlite3.connect(f"file:{Path(path).resolve()}?mode=ro", uri=True)
    try:
        connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        filters, params = _filters(user, model, "?")
        sql = REPORT_SQL.format(filters=filters)
        cursor = connection.execute(sql, (since, until, *params))
        return [
            ReportRow(
                day, who, what, int(n), int(errors or 0), int(sealed or 0), int(p or 0), int(c or 0), round(float(lat or 0.0), 3)
            )
            for day, who, what, n, errors, sealed, p, c, lat in cursor
        ]
    finally:
        connection.close()


def _filters(user: str | None, model: str | None, mark: str) -> tuple[str, list[str]]:
    clauses, params = [], []
    if user is not None:
        clauses.append(f" AND user_id = {mark}")
        params.append(user)
    if model is not None:
        clauses.append(f" AND model = {mark}")
        params.append(model)
    return "".join(clauses), params
