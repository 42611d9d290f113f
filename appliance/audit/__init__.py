"""The audit trail: a durable, hash-chained record of security and admin events, never content.

Code anywhere in the appliance calls :func:`audit_event` (like
:func:`~appliance.auth.events.security_event`, which stays the log line of
every security event; the audit trail is the durable record of the admin and
security subset).  The call never blocks and never fails a request: the
event goes to the installed :class:`AuditTrail`, whose writer thread chains
and commits it in the store beside the accounting (SQLite file or
PostgreSQL database).  Each committed record's seq and hash also go to the
security log, a copy of the chain's head kept outside the store.

Without an installed trail (unit tests, a CLI without configuration) the
events are only logged.  The format and the chain: :mod:`policy.audit`.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import queue
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Final, Protocol

from policy.audit import MAX_FIELD, AuditEvent, AuditRecord, Detail, Head
from policy.events import event_line

from ..auth.secret import Secret
from ._query import Query

__all__ = ["AuditStore", "AuditTrail", "Query", "audit_event", "install", "names", "open_store"]

log = logging.getLogger("sluice.security")

# Events waiting for the writer at most; more are dropped with an error line (a flood is
# an attack or a bug, and must not eat the appliance's memory).
MAX_QUEUED: Final = 10_000


class _Stop(enum.Enum):
    """The writer's last item (an enum member, so that `is` tells it from an event for mypy too)."""

    STOP = enum.auto()


_STOP: Final = _Stop.STOP


class AuditStore(Protocol):
    async def append(self, event: AuditEvent) -> AuditRecord: ...
    async def records(self, query: Query | None = None) -> list[AuditRecord]: ...
    async def head(self) -> Head | None: ...
    async def aclose(self) -> None: ...


def open_store(
    backend: str,
    path: str | Path | None = None,
    dsn: str | Secret | None = None,
    key: bytes | None = None,
    read_only: bool = False,
) -> AuditStore:
    """The audit store beside the accounting: the same SQLite file or PostgreSQL database."""
    if backend == "sqlite":
        if path is None:
            raise ValueError("accounting.path is required for the sqlite backend")
        from ._sqlite import SqliteAuditStore

        return SqliteAuditStore(path, key, read_only=read_only)
    if backend == "postgresql":
        if dsn is None:
            raise ValueError("accounting.dsn_file is required for the postgresql backend")
        from ._postgres import PostgresAuditStore

        return PostgresAuditStore(dsn, key)
    raise ValueError(f"unknown accounting backend {backend!r}")


class AuditTrail:
    """Appends events to a store from one writer thread with its own event loop, in order."""

    def __init__(self, store: AuditStore) -> None:
        self._store = store
        self._queue: queue.Queue[AuditEvent | _Stop] = queue.Queue(MAX_QUEUED)
        self._thread = threading.Thread(target=self._run, name="sluice-audit", daemon=True)
        self._idle = threading.Condition()
        self._pending = 0
        self.failures = 0
        self._thread.start()

    def emit(self, event: AuditEvent) -> None:
        with self._idle:
            self._pending += 1
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            self._done()
            self.failures += 1
            log.error(event_line("audit_dropped", kind=event.kind))

    def _done(self) -> None:
        with self._idle:
            self._pending -= 1
            self._idle.notify_all()

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every event emitted so far is committed (or failed); False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout)

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        try:
            while True:
                event = self._queue.get()
                if event is _STOP:
                    break
                try:
                    record = loop.run_until_complete(self._store.append(event))
                except Exception as exc:  # noqa: BLE001 (the store's failure is logged; the writer goes on)
                    self.failures += 1
                    log.error(event_line("audit_failed", kind=event.kind, error=type(exc).__name__))
                else:
                    log.warning(event_line("audit", kind=record.kind, seq=record.seq, hash=record.hash))
                finally:
                    self._done()
            loop.run_until_complete(self._store.aclose())
        finally:
            loop.close()

    def close(self) -> None:
        """Commit what is queued, then stop the writer."""
        self._queue.put(_STOP)
        self._thread.join()


_installed: AuditTrail | None = None


def install(trail: AuditTrail | None) -> AuditTrail | None:
    """Make ``trail`` the process's audit trail (None: none); the one it replaces."""
    global _installed
    previous, _installed = _installed, trail
    return previous


def names(items: Iterable[str]) -> str:
    """A short comma-separated list for a detail (cut to fit a record's field)."""
    text = ",".join(sorted(items))
    return text if len(text) <= MAX_FIELD else text[: MAX_FIELD - 3] + "..."


def audit_event(kind: str, actor: str, subject: str = "", **details: Detail) -> None:
    """Record that ``kind`` happened (``actor`` did it to ``subject``); never raises, never blocks."""
    try:
        event = AuditEvent(kind, actor[:256], subject[:256], details)
    except ValueError as exc:
        log.error(event_line("audit_invalid", error=str(exc).replace('"', "'")))
        return
    trail = _installed
    if trail is None:
        log.info(event_line("audit_unrecorded", kind=kind))
        return
    trail.emit(event)
