"""Gate sessions: one command per exec, or a mux session of many streams.

:class:`StreamTable` is the sans-IO bookkeeping of a mux session (which ids
are open, receiving a body, or done) and enforces every frame-level bound;
:class:`MuxSession` drives it from a pipe and runs one task per stream.
A violation of the frame layout ends the whole session with GOAWAY and the
violation's code; a problem of one stream gets an ERROR on that stream only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from policy.errors import BodyRejected, Disallowed, Overloaded, PeerError, SluiceError
from policy.events import event_line
from policy.frames import CLIENT_KINDS, MAX_STREAMS, FrameDecoder, FrameWriter, Kind, encode
from policy.grammar import MAX_BODY_BYTES, Call, StreamCommand, parse_stream_command

from .sinks import FrameSink, StreamServer

__all__ = [
    "MAX_STREAMS",
    "BODY_IDLE_TIMEOUT",
    "SESSION_IDLE_TIMEOUT",
    "StreamTable",
    "MuxSession",
]

log = logging.getLogger("sluice.gate")

# Body bytes that may wait, in all streams of a session together, before
# their bodies are complete.  Bounds memory against a flood of half-sent bodies.
MAX_PENDING_BODY: Final = 64 * 1024 * 1024

# A body must arrive within this many seconds of its OPEN (slowloris).
BODY_IDLE_TIMEOUT: Final = 10.0

# A session that receives no frame at all for this long is closed; the
# appliance pings every few seconds.
SESSION_IDLE_TIMEOUT: Final = 120.0

# Frames that change nothing (CANCEL of a finished stream) allowed beyond the
# number of streams opened: the two sides may cross, but not without bound.
MAX_IDLE_FRAMES_SLACK: Final = 64

# Bytes read from the pipe at a time.
READ_SIZE: Final = 256 * 1024


@dataclass(slots=True)
class _Receiving:
    """A stream whose body is still arriving.  ``command`` is None for a refused
    stream: its DATA are counted (the declared length still holds) and dropped.
    ``exact`` is False where the length is only a bound (the line did not parse)."""

    command: Call | None
    length: int
    deadline: float
    exact: bool = True
    body: bytearray = field(default_factory=bytearray)
    received: int = 0


class StreamTable:
    """Frame-level rules of a mux session, without I/O.

    :meth:`on_frame` returns ``(stream, command, body)`` when a stream's
    request is complete, ``None`` otherwise, and raises :class:`Disallowed`
    for a violation of the frame layout, which ends the session.  A problem of
    one stream (its command line, its declared size, one stream too many) is
    not a violation: the stream is refused through ``refuse`` (an ERROR on
    that stream), its DATA are dropped, and the session goes on.
    Cancellation is reported through ``cancel``.
    """

    def __init__(
        self,
        max_body: Callable[[Call], int],
        cancel: Callable[[int], None],
        clock: Callable[[], float],
        *,
        refuse: Callable[[int, SluiceError], None],
    ) -> None:
        self._max_body = max_body
        self._cancel = cancel
        self._refuse = refuse
        self._clock = clock
        self._receiving: dict[int, _Receiving] = {}
        self.running: set[int] = set()
        self._last_id = 0
        self._pending = 0
        self._opened = 0
        self._idle_frames = 0
        self._refused_pending = 0

    @property
    def open_streams(self) -> int:
        """Streams receiving a body or being served (refused ones do not count)."""
        return sum(1 for state in self._receiving.values() if state.command is not None) + len(self.running)

    def on_frame(self, kind: Kind, stream: int, payload: bytes) -> tuple[int, StreamCommand, bytes] | None:
        if kind is Kind.OPEN:
            return self._open(stream, payload)
        if kind is Kind.DATA:
            return self._data(stream, payload)
        self._cancel_frame(stream)
        return None

    def _open(self, stream: int, payload: bytes) -> tuple[int, StreamCommand, bytes] | None:
        if stream <= self._last_id:
            raise Disallowed("stream_reuse")
        if stream != self._last_id + 1:
            # Ids are consecutive: every id up to the last one was opened, so a
            # CANCEL can always be told from one for a stream that never was.
            raise Disallowed("stream_gap")
        self._last_id = stream
        self._opened += 1
        try:
            command = parse_stream_command(payload)
        except Disallowed as exc:
            # The line is this stream's content: refused alone.  Its length is
            # unknown, so DATA that may follow are dropped up to the grammar's bound.
            self._refused(stream, None, MAX_BODY_BYTES, PeerError(exc.code, 400))
            return None
        length = command.length if isinstance(command, Call) else 0
        if self.open_streams >= MAX_STREAMS:
            self._refused(stream, command, length, Overloaded("too_many_streams"))
            return None
        if isinstance(command, Call) and command.length > self._max_body(command):
            self._refused(stream, command, length, BodyRejected("body_too_large", 413))
            return None
        if length == 0 or not isinstance(command, Call):  # only a CALL has a body
            self.running.add(stream)
            return stream, command, b""
        self._receiving[stream] = _Receiving(command, length, self._clock() + BODY_IDLE_TIMEOUT)
        return None

    def _refused(self, stream: int, command: StreamCommand | None, length: int, error: SluiceError) -> None:
        self._refuse(stream, error)
        if length:
            self._refused_pending += 1
            if self._refused_pending > MAX_STREAMS:
                # refused streams whose DATA are still awaited: more than a session can have open is a flood
                raise Disallowed("refused_flood")
            self._receiving[stream] = _Receiving(None, length, self._clock() + BODY_IDLE_TIMEOUT, command is not None)

    def _data(self, stream: int, payload: bytes) -> tuple[int, StreamCommand, bytes] | None:
        state = self._receiving.get(stream)
        if state is None:
            raise Disallowed("data_without_stream")
        state.received += len(payload)
        if state.received > state.length:
            raise Disallowed("body_overrun")
        if state.command is None:
            if state.exact and state.received == state.length:
                del self._receiving[stream]  # a refused stream's body, all dropped
                self._refused_pending -= 1
            return None
        state.body += payload
        self._pending += len(payload)
        if self._pending > MAX_PENDING_BODY:
            raise Disallowed("pending_bodies")
        if state.received < state.length:
            return None
        del self._receiving[stream]
        self._pending -= len(state.body)
        self.running.add(stream)
        return stream, state.command, bytes(state.body)

    def _cancel_frame(self, stream: int) -> None:
        if stream > self._last_id:
            raise Disallowed("cancel_unknown")
        state = self._receiving.pop(stream, None)
        if state is not None:
            if state.command is not None:
                self._pending -= len(state.body)
            else:
                self._refused_pending -= 1
        elif stream in self.running:
            self._cancel(stream)
        else:
            self._idle_frames += 1
            if self._idle_frames > self._opened + MAX_IDLE_FRAMES_SLACK:
                raise Disallowed("frame_flood")

    def finished(self, stream: int) -> None:
        self.running.discard(stream)

    def check_deadlines(self) -> None:
        """Raise if a body has been incomplete for too long.

        A refused stream whose length was unknown (its line did not parse) is
        just forgotten at its deadline: nothing says how much was to come."""
        now = self._clock()
        for stream, state in list(self._receiving.items()):
            if now > state.deadline:
                if not state.exact:
                    del self._receiving[stream]
                    self._refused_pending -= 1
                    continue
                raise Disallowed("body_timeout")


class MuxSession:
    """Reads frames from ``reader``, serves streams concurrently, writes to ``writer``."""

    def __init__(
        self,
        forwarder: StreamServer,
        reader: asyncio.StreamReader,
        writer: FrameWriter,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._forwarder = forwarder
        self._reader = reader
        self._writer = writer
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._cancelling: set[int] = set()
        self._table = StreamTable(forwarder.max_body, self._cancel, clock, refuse=self._refuse)
        self._clock = clock
        self._last_read = clock()

    def _refuse(self, stream: int, error: SluiceError) -> None:
        log.info(event_line("stream_refused", code=error.code))
        FrameSink(self._writer.write, self._writer.drain, stream).error(error)

    def _cancel(self, stream: int) -> None:
        task = self._tasks.get(stream)
        if task is not None:
            self._cancelling.add(stream)
            task.cancel()

    async def run(self) -> int:
        """Serve until the appliance closes its side (0) or violates the protocol (2)."""
        decoder = FrameDecoder(CLIENT_KINDS)
        watchdog = asyncio.create_task(self._watch_deadlines())
        reading = asyncio.create_task(self._read_loop(decoder))
        try:
            done, _ = await asyncio.wait({watchdog, reading}, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()
            return 0
        except Disallowed as exc:
            log.warning(event_line("violation", code=exc.code))
            with contextlib.suppress(Exception):
                self._writer.write(encode(Kind.GOAWAY, 0, exc.code.encode()))
                await asyncio.wait_for(self._writer.drain(), 1.0)
            return 2
        finally:
            watchdog.cancel()
            reading.cancel()
            for task in list(self._tasks.values()):
                task.cancel()
            await asyncio.gather(watchdog, reading, *self._tasks.values(), return_exceptions=True)

    async def _read_loop(self, decoder: FrameDecoder) -> None:
        reader, table, clock = self._reader, self._table, self._clock
        while True:
            data = await reader.read(READ_SIZE)
            self._last_read = clock()  # the watchdog ends a session idle for too long
            if not data:
                if decoder.buffered:
                    raise Disallowed("truncated_frame")
                return
            for kind, stream, payload in decoder.feed(data):
                started = table.on_frame(kind, stream, payload)
                if started is not None:
                    self._start(*started)

    async def _watch_deadlines(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self._table.check_deadlines()
            if self._clock() - self._last_read > SESSION_IDLE_TIMEOUT:
                raise Disallowed("session_idle")

    def _start(self, stream: int, command: StreamCommand, body: bytes) -> None:
        sink = FrameSink(self._writer.write, self._writer.drain, stream)
        task = asyncio.create_task(self._serve(stream, command, body, sink))
        self._tasks[stream] = task

    async def _serve(self, stream: int, command: StreamCommand, body: bytes, sink: FrameSink) -> None:
        try:
            await self._forwarder.serve(command, body, sink)
        except asyncio.CancelledError:
            if stream in self._cancelling:
                sink.cancelled()  # the appliance's CANCEL: its last word is END with the usage so far
        finally:
            self._cancelling.discard(stream)
            self._tasks.pop(stream, None)
            self._table.finished(stream)
