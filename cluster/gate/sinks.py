"""Where a stream's answer goes: the interfaces the gate's modules share.

:class:`Sink` is what :mod:`~cluster.gate.forward` writes an answer to;
:class:`FrameSink` is the one that writes it as frames (mux and exec
sessions alike), and :class:`~cluster.gate.sealed.SealingSink` wraps it;
:class:`StreamServer` is what a session hands each complete stream to (the
:class:`~cluster.gate.forward.Forwarder`).  They live here so that the
modules depend one way: ``session``, ``sealed`` and ``forward`` import this
module, and none of them imports another for its types.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Protocol

from policy.errors import SluiceError
from policy.frames import MAX_PAYLOAD, Kind, encode
from policy.grammar import Call, StreamCommand

from .usage import Usage

__all__ = ["Sink", "FrameSink", "StreamServer"]


class Sink(Protocol):
    """Where the answer to one stream goes (frames in a mux or exec session)."""

    def head(self, status: int, media: str) -> None: ...
    async def body(self, data: bytes) -> None: ...
    def progress(self, usage: Usage) -> None:
        """The usage so far of a stream still running (reported if it is cut short)."""

    def end(self, usage: Usage | None) -> None: ...
    def error(self, error: SluiceError) -> None: ...


class StreamServer(Protocol):
    """What serves a session's streams: one per gate process (the forwarder)."""

    def max_body(self, call: Call) -> int:
        """The most body bytes ``call`` may declare."""
        ...

    async def serve(self, command: StreamCommand, body: bytes, sink: Sink) -> None:
        """Answer ``command`` on ``sink``; every failure is an ERROR on that stream only."""
        ...


class FrameSink:
    """A :class:`Sink` that writes one stream's frames.

    It keeps the usage so far (:meth:`progress`): an ERROR after tokens were
    delivered is preceded by a USAGE frame, and the answer to a CANCEL
    (:meth:`cancelled`) is an END carrying it, so the appliance meters what
    the stream delivered."""

    __slots__ = ("_write", "_drain", "_stream", "_done", "_headed", "usage_so_far")

    def __init__(self, write: Callable[[bytes], None], drain: Callable[[], Awaitable[object]], stream: int) -> None:
        self._write = write
        self._drain = drain
        self._stream = stream
        self._done = False
        self._headed = False
        self.usage_so_far: Usage | None = None

    @property
    def done(self) -> bool:
        return self._done

    def head(self, status: int, media: str) -> None:
        self._headed = True
        self._write(encode(Kind.HEAD, self._stream, f"{status:03d} {media}".encode()))

    async def body(self, data: bytes) -> None:
        self.body_nowait(data)
        await self._drain()

    def body_nowait(self, data: bytes) -> None:
        """Write ``data`` as BODY frames without waiting for the pipe to drain."""
        stream = self._stream
        for start in range(0, len(data), MAX_PAYLOAD):
            self._write(encode(Kind.BODY, stream, data[start : start + MAX_PAYLOAD]))

    def progress(self, usage: Usage) -> None:
        self.usage_so_far = usage

    def end(self, usage: Usage | None) -> None:
        self._write(encode(Kind.END, self._stream, _usage_payload(usage)))
        self._done = True

    def error(self, error: SluiceError) -> None:
        if self._done:
            return
        if self.usage_so_far:
            self._write(encode(Kind.USAGE, self._stream, _usage_payload(self.usage_so_far)))
        self._write(encode(Kind.ERROR, self._stream, f"{error.status:03d} {error.code}".encode()))
        self._done = True

    def cancelled(self) -> None:
        """Answer the appliance's CANCEL: END with the usage so far (or empty)."""
        if not self._done:
            self.end(self.usage_so_far)


# One encoder for every END and USAGE payload (json.dumps with options builds one per call).
_USAGE_JSON = json.JSONEncoder(separators=(",", ":"))


def _usage_payload(usage: Usage | None) -> bytes:
    return _USAGE_JSON.encode(usage).encode() if usage else b""
