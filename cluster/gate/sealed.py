"""Sealed requests at the gate: open, check, serve in the clear inside, seal the answer.

The outer line (``sealed ohttp|chunked <route> <model> <length>``) passed the
grammar; the body is an RFC 9458 encapsulated request that only the gate's
key ring can open.  After opening (:func:`sluice_sdk.gateway.open_request`:
decapsulate, decode Binary HTTP, check the date, refuse replays), the inner
request must be a POST to exactly the route's path for exactly the outer
model; its body then goes through the same route policy and forwarding as a
clear request, and everything the forwarding emits is sealed on the way out
by :class:`SealingSink`.  The appliance learns the route, the model, sizes,
timing and the token counts (END metadata) -- nothing of the content.

Replays are refused across all gate processes of the cluster: the ``enc`` of
every opened request is recorded for twice the replay window (a request dated
up to the window ahead stays acceptable until its date plus the window) in a
small SQLite file next to the keys (no path or name in it comes from the
request).  Expired rows are pruned through an index on their expiry, at most
every ``REPLAY_PRUNE_INTERVAL`` seconds and ``REPLAY_PRUNE_BATCH`` rows at a time.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

from policy.errors import BodyRejected, SluiceError
from policy.events import event_line
from sluice_sdk.bhttp import Response, ResponseStreamEncoder, encode_response
from sluice_sdk.errors import BhttpError, SealError
from sluice_sdk.gateway import OpenedRequest, open_request
from sluice_sdk.ohttp import ChunkedResponseSealer, KeyLookup, ResponseSealer
from sluice_sdk.replay import ReplayGuard, retention

from .bounds import Holder
from .sinks import FrameSink
from .usage import Usage

__all__ = [
    "REPLAY_WINDOW",
    "REPLAY_PRUNE_INTERVAL",
    "REPLAY_PRUNE_BATCH",
    "REPLAY_CACHE_KIB",
    "PRUNE_SQL",
    "SharedReplayGuard",
    "SealingSink",
    "open_sealed",
    "sealed_error",
]

log = logging.getLogger("sluice.gate")

# How far a sealed request's date may be from the gate's clock, and so how
# long its enc is remembered (RFC 9458 Section 6.5).
REPLAY_WINDOW: Final = 300.0

# Expired replay rows are deleted in batches of at most this many per request
# (pruning never scans the table, and no request pays for more than one small
# batch): after a full batch the next request prunes again, until one comes up
# short; then not again for this many seconds.  So pruning keeps up with any
# rate of sealed requests (a fixed batch per interval would fall behind above
# batch / interval requests per second, and the table would grow without end).
REPLAY_PRUNE_INTERVAL: Final = 10.0
REPLAY_PRUNE_BATCH: Final = 1000

# SQLite's page cache for the replay store, per gate process (KiB): the table is
# a few MiB at most, the OS caches its file, and SQLite's default (2 MiB) would
# be a gate's largest growth under sealed load.  Measured: 512 KiB costs about
# 2 us per insert at 150k rows.
REPLAY_CACHE_KIB: Final = 512

_SCHEMA: Final = (
    "CREATE TABLE IF NOT EXISTS seen (digest BLOB PRIMARY KEY, expires REAL NOT NULL)",
    "CREATE INDEX IF NOT EXISTS seen_expires ON seen (expires)",
)
PRUNE_SQL: Final = "DELETE FROM seen WHERE rowid IN (SELECT rowid FROM seen WHERE expires <= ? ORDER BY expires LIMIT ?)"

_MEDIA_TYPES: Final = {"json": b"application/json", "sse": b"text/event-stream", "text": b"text/plain; charset=utf-8"}


class SharedReplayGuard:
    """Dates checked in process; ``enc`` digests recorded in SQLite, shared by every gate process."""

    def __init__(self, path: Path, window: float = REPLAY_WINDOW, clock: Callable[[], float] = time.time) -> None:
        self._dates = ReplayGuard(window, clock=clock)
        self._retention = retention(window)
        self._clock = clock
        self._path = path
        self._local = threading.local()
        self._pruned = float("-inf")

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self._path, timeout=5.0, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute(f"PRAGMA cache_size=-{REPLAY_CACHE_KIB}")
            for statement in _SCHEMA:
                db.execute(statement)
            self._local.db = db
        return db

    def check_date(self, date: bytes | str) -> None:
        self._dates.check_date(date)

    def check(self, enc: bytes) -> None:
        digest = hashlib.sha256(enc).digest()
        now = self._clock()
        db = self._db()
        try:
            if now - self._pruned >= REPLAY_PRUNE_INTERVAL:
                # A row expired but not yet pruned still refuses its enc: that
                # request's date is out of the window anyway.
                pruned = db.execute(PRUNE_SQL, (now, REPLAY_PRUNE_BATCH)).rowcount
                if pruned < REPLAY_PRUNE_BATCH:
                    self._pruned = now  # caught up
            db.execute("INSERT INTO seen (digest, expires) VALUES (?, ?)", (digest, now + self._retention))
        except sqlite3.IntegrityError:
            raise SealError from None
        except sqlite3.Error:
            log.error(event_line("replay_store_failed"))
            raise SealError from None  # fail closed


def open_sealed(ring: KeyLookup, guard: SharedReplayGuard, body: bytes, chunked: bool, path: str) -> OpenedRequest:
    """The opened request, if it is a POST to ``path``; every failure is one short code."""
    try:
        opened = open_request(ring, guard, body, chunked=chunked)
    except (SealError, BhttpError):
        raise BodyRejected("sealed_invalid", 400) from None
    request = opened.request
    if request.method != b"POST" or request.path != path.encode():
        raise BodyRejected("sealed_route_mismatch", 400)
    return opened


def sealed_error(sealer: ResponseSealer | ChunkedResponseSealer, error: SluiceError) -> bytes:
    """An OpenAI-shaped error as a sealed inner response (for errors about the sealed content)."""
    document = b'{"error":{"message":"The request was rejected.","type":"invalid_request_error","param":null,"code":"%s"}}'
    inner = Response(error.status, ((b"content-type", b"application/json"),), document % error.code.encode())
    if isinstance(sealer, ChunkedResponseSealer):
        encoder = ResponseStreamEncoder()
        return sealer.write(encoder.head(inner.status, inner.headers)) + sealer.close(encoder.data(inner.content) + encoder.end())
    return sealer.seal(encode_response(inner))


class SealingSink:
    """Wraps the stream's :class:`~cluster.gate.sinks.FrameSink`: what goes in clear comes out sealed.

    Whole mode (RFC 9458): the inner answer is collected (at most
    ``bounds.MAX_RESPONSE_BYTES``, counted in the process's held bytes, an
    inner stream included), then sealed as one Binary HTTP response (``200 ohttp``).  Chunked mode: the head and each
    body piece are sealed as they come (``200 ohttp-chunked``), the end as the
    final chunk.  Errors before the head go out in the clear (they concern
    only metadata: unknown model, no instance, timeouts); after the head in
    chunked mode, the stream just stops without its final chunk, which the
    client detects as truncation.  Usage always goes out in the clear.
    """

    def __init__(self, sink: FrameSink, sealer: ResponseSealer | ChunkedResponseSealer, holder: Holder) -> None:
        self._sink = sink
        self._sealer = sealer
        self._holder = holder
        self._encoder = ResponseStreamEncoder()
        self._status = 0
        self._media = b"application/json"
        self._parts: list[bytes] = []

    def head(self, status: int, media: str) -> None:
        self._status = status
        self._media = _MEDIA_TYPES.get(media, b"application/octet-stream")
        if isinstance(self._sealer, ChunkedResponseSealer):
            self._sink.head(200, "ohttp-chunked")
            self._parts.append(self._sealer.write(self._encoder.head(status, ((b"content-type", self._media),))))

    async def body(self, data: bytes) -> None:
        if not isinstance(self._sealer, ChunkedResponseSealer):
            self._holder.take(len(data))  # bounded: ResponseTooLarge, or Overloaded for the process
            self._parts.append(data)
            return
        sealed = b"".join(self._parts) + self._sealer.write(self._encoder.data(data))
        self._parts.clear()
        await self._sink.body(sealed)

    def end(self, usage: Usage | None) -> None:
        if isinstance(self._sealer, ChunkedResponseSealer):
            final = b"".join(self._parts) + self._sealer.close(self._encoder.end())
        else:
            inner = Response(self._status, ((b"content-type", self._media),), b"".join(self._parts))
            final = self._sealer.seal(encode_response(inner))
            self._sink.head(200, "ohttp")
        self._parts.clear()
        self._sink.body_nowait(final)
        self._sink.end(usage)

    def progress(self, usage: Usage) -> None:
        self._sink.progress(usage)

    def error(self, error: SluiceError) -> None:
        self._parts.clear()
        self._sink.error(error)
