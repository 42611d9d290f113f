"""The gate's frame writer: every frame written in one event-loop turn goes out in one write.

A plain answer is three frames (HEAD, BODY, END) and a streamed one a frame
per chunk; under load many streams answer in the same turn.  Written one by
one, each frame is a system call on the pipe or the SSH channel and, on the
other side, often a wake-up and a read of its own.  :class:`CoalescingWriter`
keeps what is written during a turn of the event loop and hands it to the
transport in one write at the end of that turn (``call_soon``): nothing is
held longer than the turn that wrote it, so a streamed chunk is never
delayed for a later one.

``drain`` keeps its meaning for flow control: when the transport already
holds unsent bytes (the reader is slow), or more than ``FLUSH_BYTES`` wait
here, what waits is handed over at once and ``drain`` waits like the
transport's own.  Bytes and their order are exactly those written.
"""

from __future__ import annotations

import asyncio
from typing import Final

from policy.frames import MAX_PAYLOAD

__all__ = ["CoalescingWriter", "FLUSH_BYTES"]

# Bytes kept for the end of the turn at most: past one full frame, they go out at the next drain.
FLUSH_BYTES: Final = MAX_PAYLOAD


class CoalescingWriter:
    """A :class:`~policy.frames.FrameWriter` over an :class:`asyncio.StreamWriter` that writes once per loop turn."""

    __slots__ = ("_writer", "_loop", "_pending", "_size", "_scheduled", "_error")

    def __init__(self, writer: asyncio.StreamWriter, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._writer = writer
        self._loop = loop if loop is not None else asyncio.get_running_loop()
        self._pending: list[bytes] = []
        self._size = 0
        self._scheduled = False
        self._error: BaseException | None = None

    def write(self, data: bytes) -> None:
        if self._error is not None:
            raise self._error
        self._pending.append(data)
        self._size += len(data)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._end_of_turn)

    def _end_of_turn(self) -> None:
        self._scheduled = False
        try:
            self.flush()
        except Exception as exc:  # the transport is gone: the next write or drain says so
            self._error = exc

    def flush(self) -> None:
        """Hand what waits to the transport now, in one write."""
        pending = self._pending
        if not pending:
            return
        data = pending[0] if len(pending) == 1 else b"".join(pending)
        self._pending = []
        self._size = 0
        self._writer.write(data)

    async def drain(self) -> None:
        if self._error is not None:
            raise self._error
        writer = self._writer
        if self._size < FLUSH_BYTES and not writer.transport.get_write_buffer_size() and not writer.is_closing():
            return
        self.flush()
        await writer.drain()

    def close(self) -> None:
        if self._error is None:
            self.flush()
        self._writer.close()

    def is_closing(self) -> bool:
        return self._writer.is_closing()
