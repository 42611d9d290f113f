"""Gate frames in, per-request replies out: the appliance side of the frame protocol.

:class:`FrameReceiver` reads gate frames from a stream reader and hands each
to the :class:`GateReply` of its stream.  :class:`MuxClient` adds the writing
side of a mux session (OPEN, DATA, CANCEL).  Exec mode uses a receiver with
its single stream.  Nothing here looks inside bodies.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import re
from collections.abc import AsyncIterator, Callable
from typing import Final, Protocol

import orjson

from policy.errors import BackendFailed, Disallowed, Overloaded, RelayedError, SluiceError, TransportError
from policy.frames import GATE_KINDS, MAX_PAYLOAD, MAX_STREAM_ID, MAX_STREAMS, FrameDecoder, FrameWriter, Kind, encode
from policy.grammar import Call, Ping, StreamCommand, stream_line

__all__ = ["ByteReader", "GateReply", "FrameReceiver", "MuxClient", "MAX_BUFFERED", "LAST_WORD_WAIT", "ping_once"]

# Response bytes held for one request whose client reads slower than the
# model writes.  Past this the request is cancelled: a stalled client must
# not make the appliance buffer without bound.
MAX_BUFFERED: Final = 16 * 1024 * 1024

READ_SIZE: Final = 256 * 1024

# Body pieces already received are handed on joined, up to about this many bytes at once.
MAX_JOINED: Final = 256 * 1024

# How long a cancelled stream waits for the gate's END that answers the CANCEL
# (it carries the usage so far, which is what the stream is charged).  The gate
# answers at once; this only bounds a session that is slow or breaking.
LAST_WORD_WAIT: Final = 2.0


class _End(enum.Enum):
    """The last piece of a reply (an enum member, so that `is` tells it from data for mypy too)."""

    END = enum.auto()


_END: Final = _End.END

_MEDIA: Final = {b"json": "json", b"text": "text", b"sse": "sse", b"ohttp": "ohttp", b"ohttp-chunked": "ohttp-chunked"}


# What produced an answer (cluster/gate/provenance.py), as the END frame names it; the same
# bounds as the gate's, so nothing that could split a header gets through.
_PRODUCED_BY_KEYS: Final = ("revision", "backend_version")
_PRODUCED_BY_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+\-]{0,127}", re.ASCII)


def produced_by(document: dict[str, object]) -> dict[str, str]:
    """The revision and backend version in a usage document, where well formed."""
    return {
        key: value
        for key in _PRODUCED_BY_KEYS
        if isinstance(value := document.get(key), str) and _PRODUCED_BY_RE.fullmatch(value) is not None
    }


def _parse_error(payload: bytes) -> SluiceError:
    """An ERROR payload ``"<status> <code>"`` as an error the API can answer with."""
    try:
        status_text, code = payload.decode("ascii").split(" ", 1)
        status = int(status_text)
    except ValueError:
        return BackendFailed("bad_gate_error")
    if not 400 <= status <= 599 or not code.replace("_", "").isalnum():
        return BackendFailed("bad_gate_error")
    return RelayedError(code, status)


class GateReply:
    """The gate's answer to one request: a head, body pieces, then usage or an error."""

    __slots__ = (
        "stream",
        "status",
        "media",
        "usage",
        "produced_by",
        "_head",
        "_pieces",
        "_buffered",
        "_wake",
        "_finished",
        "_cancel",
        "_last",
        "awaiting_last",
    )

    def __init__(self, stream: int, cancel: Callable[[int], None]) -> None:
        self.stream = stream
        self.status = 0
        self.media = "json"
        self.usage: dict[str, int] | None = None
        self.produced_by: dict[str, str] = {}
        self._head: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pieces: collections.deque[bytes | SluiceError | _End] = collections.deque()
        self._buffered = 0
        self._wake: asyncio.Future[None] | None = None
        self._finished = False
        self._cancel = cancel
        # Resolved by the gate's last frame on this stream (END or ERROR), or when the way breaks;
        # made only for a cancelled stream that waits for it (most replies never need one).
        self._last: asyncio.Future[None] | None = None
        self.awaiting_last = False  # a CANCEL went out and its END is still to come

    @property
    def finished(self) -> bool:
        """True once the gate has ended this stream (or it failed)."""
        return self._finished

    # -- fed by the receiver --------------------------------------------
    def _push(self, item: bytes | SluiceError | _End) -> None:
        self._pieces.append(item)
        wake = self._wake
        if wake is not None and not wake.done():
            wake.set_result(None)

    def on_head(self, payload: bytes) -> None:
        if self._head.done():
            raise Disallowed("head_twice")
        status_text, _, media = payload.partition(b" ")
        if not status_text.isdigit() or media not in _MEDIA:
            raise Disallowed("bad_head")
        self.status = int(status_text)
        self.media = _MEDIA[media]
        self._head.set_result(None)

    def on_body(self, payload: bytes) -> None:
        if not self._head.done():
            raise Disallowed("body_before_head")
        self._buffered += len(payload)
        if self._buffered > MAX_BUFFERED:
            self.fail(Overloaded("client_too_slow"))
            self._cancel(self.stream)
            return
        self._push(payload)

    def on_usage(self, payload: bytes) -> None:
        """Usage (so far, in a USAGE frame or an END): what this stream is charged."""
        if payload:
            try:
                usage = orjson.loads(payload)
            except orjson.JSONDecodeError:
                usage = None
            if isinstance(usage, dict):
                self.usage = {k: v for k, v in usage.items() if isinstance(k, str) and type(v) is int}
                self.produced_by = produced_by(usage) or self.produced_by

    def on_end(self, payload: bytes) -> None:
        if not self._head.done():
            raise Disallowed("end_before_head")
        self.on_usage(payload)
        self._finished = True
        self.concluded()
        self._push(_END)

    def concluded(self) -> None:
        """The gate said its last word on this stream (or the way to it broke)."""
        self.awaiting_last = False
        if self._last is not None and not self._last.done():
            self._last.set_result(None)

    async def wait_last(self, timeout: float = LAST_WORD_WAIT) -> None:
        """After a CANCEL: wait (bounded) for the gate's END and its usage so far."""
        if not self.awaiting_last:
            return
        if self._last is None:
            self._last = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait_for(asyncio.shield(self._last), timeout)
        except TimeoutError:
            pass

    def fail(self, error: SluiceError) -> None:
        self.concluded()
        if self._finished:
            return
        self._finished = True
        if not self._head.done():
            self._head.set_exception(error)
            self._head.exception()  # retrieved here; the waiter re-raises it
        self._push(error)

    # -- read by the API ------------------------------------------------
    async def wait_head(self) -> None:
        await self._head

    def __aiter__(self) -> AsyncIterator[bytes]:
        """Each body piece as the gate sent it."""
        return self._body(join=False)

    def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives, the pieces already here joined into one: a client that
        reads slower than the gate writes gets fewer, larger writes (the same bytes)."""
        return self._body(join=True)

    async def _body(self, join: bool) -> AsyncIterator[bytes]:
        pieces = self._pieces
        while True:
            while pieces:
                item = pieces.popleft()
                if item is _END:
                    return
                if isinstance(item, SluiceError):
                    raise item
                if join and pieces:
                    parts, size = [item], len(item)
                    while pieces and size < MAX_JOINED:
                        following = pieces[0]
                        if not isinstance(following, bytes):
                            break
                        pieces.popleft()
                        parts.append(following)
                        size += len(following)
                    item = b"".join(parts) if len(parts) > 1 else item
                self._buffered -= len(item)
                yield item
            self._wake = asyncio.get_running_loop().create_future()
            try:
                await self._wake
            finally:
                self._wake = None

    async def read(self) -> bytes:
        """The whole body (for non-streamed replies)."""
        return b"".join([piece async for piece in self.chunks()])

    def cancel(self) -> None:
        """Give up on this reply; the gate is told to stop serving it."""
        if not self._finished:
            self._finished = True
            self._cancel(self.stream)


class ByteReader(Protocol):
    """What frames are read from: an :class:`asyncio.StreamReader`, or an SSH channel's stdout."""

    async def read(self, n: int = -1) -> bytes: ...


class FrameReceiver:
    """Reads gate frames from ``reader`` and feeds the replies they belong to."""

    def __init__(self, reader: ByteReader, on_release: Callable[[], None] | None = None) -> None:
        self._reader = reader
        self.replies: dict[int, GateReply] = {}
        # Streams we cancelled, until the gate's END (or ERROR) for them arrives.
        self.cancelled: dict[int, GateReply] = {}
        self.closed: SluiceError | None = None
        # Called whenever streams end, so that a request waiting for room on a session can look again.
        self.on_release = on_release or (lambda: None)

    async def run(self) -> None:
        decoder = FrameDecoder(GATE_KINDS)
        replies = self.replies
        try:
            while True:
                data = await self._reader.read(READ_SIZE)
                if not data:
                    raise TransportError("gate_closed")
                for kind, stream, payload in decoder.feed(data):
                    if kind is Kind.GOAWAY:
                        code = payload.decode("ascii", "replace")
                        raise TransportError("gate_" + "".join(c for c in code if c.isalnum() or c == "_")[:40])
                    reply = replies.get(stream)
                    if reply is None:
                        self._after_cancel(kind, stream, payload)
                        continue
                    if kind is Kind.USAGE:
                        reply.on_usage(payload)
                    elif kind is Kind.BODY:
                        reply.on_body(payload)
                    elif kind is Kind.HEAD:
                        reply.on_head(payload)
                    elif kind is Kind.END:
                        del replies[stream]
                        reply.on_end(payload)
                        self.on_release()
                    else:
                        del replies[stream]
                        reply.fail(_parse_error(payload))
                        self.on_release()
        except SluiceError as exc:
            self.close(exc if not isinstance(exc, Disallowed) else TransportError("gate_protocol"))
        except asyncio.CancelledError:
            self.close(TransportError("closing"))
            raise
        except Exception:  # the pipe or the SSH channel broke, in whatever way its library says it
            self.close(TransportError("gate_closed"))

    def _after_cancel(self, kind: Kind, stream: int, payload: bytes) -> None:
        """A frame of a stream we cancelled: the gate may still have been answering;
        its END (or a USAGE before an ERROR) carries the usage so far."""
        reply = self.cancelled.get(stream)
        if reply is None:
            return
        if kind in (Kind.END, Kind.USAGE):
            reply.on_usage(payload)
        if kind in (Kind.END, Kind.ERROR):
            del self.cancelled[stream]
            reply.concluded()
            self.on_release()  # the gate let go of the stream only now

    def close(self, error: SluiceError) -> None:
        """Fail every reply still waiting: nothing hangs when the way to the gate breaks."""
        if self.closed is None:
            self.closed = error
        replies, self.replies = self.replies, {}
        cancelled, self.cancelled = self.cancelled, {}
        for reply in replies.values():
            reply.fail(error)
        for reply in cancelled.values():
            reply.concluded()
        self.on_release()


class MuxClient:
    """The appliance side of one mux session over ``reader``/``writer``.

    Frames are written coalesced: the OPEN and DATA frames of every request made in one
    turn of the event loop go to ``writer`` in one write at the end of that turn (one
    syscall on a pipe, one SSH channel packet instead of one per frame), in the order
    they were made.  A CANCEL goes out at once, after whatever was waiting.
    """

    def __init__(self, reader: ByteReader, writer: FrameWriter, on_release: Callable[[], None] | None = None) -> None:
        self._writer = writer
        self._receiver = FrameReceiver(reader, on_release)
        self._next_id = 1
        self._out: list[bytes] = []  # frames waiting for the end of this loop turn
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._receiver.run())

    @property
    def alive(self) -> bool:
        return self._receiver.closed is None and not self._writer.is_closing()

    @property
    def open_streams(self) -> int:
        # A cancelled stream holds its place at the gate until the gate's END for it arrives.
        return len(self._receiver.replies) + len(self._receiver.cancelled)

    def _queue(self, frames: list[bytes]) -> None:
        """Write ``frames`` at the end of this loop turn, with every other request's."""
        if not self._out:
            self._loop.call_soon(self._flush)
        self._out += frames

    def _flush(self) -> None:
        """Write what is waiting, in one write; a session whose writer broke is closed."""
        out, self._out = self._out, []
        if not out or self._receiver.closed is not None:
            return
        try:
            self._writer.write(out[0] if len(out) == 1 else b"".join(out))
        except (OSError, RuntimeError):  # the pipe or the SSH channel is closing
            self._receiver.close(TransportError("gate_closed"))

    async def request(self, command: StreamCommand, body: bytes) -> GateReply:
        if not self.alive:
            raise self._receiver.closed or TransportError("gate_closed")
        stream = self._next_id
        if stream > MAX_STREAM_ID:
            raise TransportError("session_exhausted")
        self._next_id += 1
        reply = GateReply(stream, self._send_cancel)
        self._receiver.replies[stream] = reply
        frames = [encode(Kind.OPEN, stream, stream_line(command).encode())]
        if isinstance(command, Call):
            frames += [encode(Kind.DATA, stream, body[start : start + MAX_PAYLOAD]) for start in range(0, len(body), MAX_PAYLOAD)]
        self._queue(frames)
        try:
            try:
                await self._writer.drain()
            except (OSError, ConnectionError):
                self._receiver.close(TransportError("gate_closed"))
            await reply.wait_head()
        except BaseException:
            # Timed out or abandoned before its head: the gate must stop serving it too
            # (otherwise it would run on, holding a stream and a backend, until its own timeout).
            reply.cancel()
            raise
        return reply

    async def ping(self, deadline: float) -> bool:
        """Whether the gate answers a ping on this session within ``deadline`` seconds."""
        return await ping_once(self, deadline)

    def _send_cancel(self, stream: int) -> None:
        reply = self._receiver.replies.pop(stream, None)
        if self.alive:
            if reply is not None:
                reply.awaiting_last = True  # the gate answers the CANCEL with END and the usage so far
                cancelled = self._receiver.cancelled
                cancelled[stream] = reply
                if len(cancelled) > MAX_STREAMS:  # a gate that never answers must not grow this
                    cancelled.pop(next(iter(cancelled))).concluded()
            self._out.append(encode(Kind.CANCEL, stream))
            self._flush()
        self._receiver.on_release()

    async def wait_closed(self) -> None:
        """Returns when the session ended (the gate went away or broke the protocol)."""
        await asyncio.gather(self._task, return_exceptions=True)

    async def aclose(self) -> None:
        self._receiver.close(TransportError("closing"))
        self._task.cancel()
        try:
            self._writer.close()
        except (OSError, RuntimeError):
            pass
        await asyncio.gather(self._task, return_exceptions=True)


class _Requester(Protocol):
    async def request(self, command: StreamCommand, body: bytes) -> GateReply: ...


async def ping_once(target: _Requester, deadline: float) -> bool:
    """Whether ``target`` (a session or a transport) answers a ping within ``deadline`` seconds."""
    try:
        async with asyncio.timeout(deadline):
            reply = await target.request(Ping(), b"")
            await reply.read()
    except (SluiceError, TimeoutError):
        return False
    return True
