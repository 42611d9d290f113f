"""The gate's frame writer: one write per event-loop turn, the same bytes in the same order."""

from __future__ import annotations

import asyncio
import os
from typing import cast

import pytest

from cluster.gate.coalesce import FLUSH_BYTES, CoalescingWriter
from policy.frames import GATE_KINDS, FrameDecoder, Kind, encode


class _Transport:
    def __init__(self) -> None:
        self.buffered = 0

    def get_write_buffer_size(self) -> int:
        return self.buffered


class _Writer:
    """What CoalescingWriter uses of an asyncio.StreamWriter, recording each write."""

    def __init__(self) -> None:
        self.transport = _Transport()
        self.writes: list[bytes] = []
        self.drains = 0
        self.closed = False
        self.fail: Exception | None = None

    def write(self, data: bytes) -> None:
        if self.fail is not None:
            raise self.fail
        self.writes.append(data)

    async def drain(self) -> None:
        self.drains += 1

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


def _coalescing(writer: _Writer) -> CoalescingWriter:
    return CoalescingWriter(cast(asyncio.StreamWriter, writer))


def test_frames_of_one_turn_go_out_in_one_write_at_its_end() -> None:
    asyncio.run(_test_frames_of_one_turn_go_out_in_one_write_at_its_end())


async def _test_frames_of_one_turn_go_out_in_one_write_at_its_end() -> None:
    inner = _Writer()
    writer = _coalescing(inner)
    frames = [encode(Kind.HEAD, 1, b"200 json"), encode(Kind.BODY, 1, b"{}"), encode(Kind.END, 1)]
    for frame in frames[:2]:
        writer.write(frame)
    await writer.drain()  # nothing waits in the transport, little here: no write yet
    writer.write(frames[2])
    assert inner.writes == []
    await asyncio.sleep(0)  # the turn ends
    assert inner.writes == [b"".join(frames)]
    assert inner.drains == 0


def test_a_streamed_chunk_is_not_held_past_its_turn() -> None:
    asyncio.run(_test_a_streamed_chunk_is_not_held_past_its_turn())


async def _test_a_streamed_chunk_is_not_held_past_its_turn() -> None:
    inner = _Writer()
    writer = _coalescing(inner)
    chunks = [encode(Kind.BODY, 1, b"data: %d\n\n" % i) for i in range(3)]
    for chunk in chunks:
        writer.write(chunk)
        await writer.drain()
        await asyncio.sleep(0)
    assert inner.writes == chunks


def test_drain_hands_over_at_once_past_a_frame_or_when_the_transport_holds_bytes() -> None:
    asyncio.run(_test_drain_hands_over_at_once_past_a_frame_or_when_the_transport_holds_bytes())


async def _test_drain_hands_over_at_once_past_a_frame_or_when_the_transport_holds_bytes() -> None:
    inner = _Writer()
    writer = _coalescing(inner)
    big = encode(Kind.BODY, 1, b"x" * FLUSH_BYTES)
    writer.write(big)
    await writer.drain()
    assert inner.writes == [big] and inner.drains == 1
    inner.transport.buffered = 10  # a slow reader
    writer.write(encode(Kind.END, 1))
    await writer.drain()
    assert inner.writes == [big, encode(Kind.END, 1)] and inner.drains == 2


def test_close_hands_over_what_waits() -> None:
    asyncio.run(_test_close_hands_over_what_waits())


async def _test_close_hands_over_what_waits() -> None:
    inner = _Writer()
    writer = _coalescing(inner)
    writer.write(encode(Kind.GOAWAY, 0, b"bye"))
    writer.close()
    assert inner.writes == [encode(Kind.GOAWAY, 0, b"bye")] and inner.closed
    assert writer.is_closing()


def test_a_failed_write_is_raised_by_the_next_write_or_drain() -> None:
    asyncio.run(_test_a_failed_write_is_raised_by_the_next_write_or_drain())


async def _test_a_failed_write_is_raised_by_the_next_write_or_drain() -> None:
    inner = _Writer()
    writer = _coalescing(inner)
    inner.fail = RuntimeError("handler is closed")
    writer.write(encode(Kind.END, 1))
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError):
        await writer.drain()
    with pytest.raises(RuntimeError):
        writer.write(encode(Kind.END, 2))


def test_bytes_and_order_over_a_real_pipe() -> None:
    asyncio.run(_test_bytes_and_order_over_a_real_pipe())


async def _test_bytes_and_order_over_a_real_pipe() -> None:
    loop = asyncio.get_running_loop()
    read_fd, write_fd = os.pipe()
    transport, protocol = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin, os.fdopen(write_fd, "wb", buffering=0))
    writer = CoalescingWriter(asyncio.StreamWriter(transport, protocol, None, loop), loop)
    received = bytearray()

    def read() -> None:
        while data := os.read(read_fd, 1 << 16):
            received.extend(data)

    reading = loop.run_in_executor(None, read)
    sent = []
    for stream in range(1, 40):
        body = os.urandom(stream * 997)
        for frame in (encode(Kind.HEAD, stream, b"200 sse"), encode(Kind.BODY, stream, body), encode(Kind.END, stream)):
            writer.write(frame)
            sent.append(frame)
        if stream % 3 == 0:
            await writer.drain()
        if stream % 5 == 0:
            await asyncio.sleep(0)
    await writer.drain()
    writer.close()
    while not transport.is_closing() or transport.get_write_buffer_size():
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.01)  # the transport's close reaches the pipe
    await reading
    os.close(read_fd)
    assert bytes(received) == b"".join(sent)
    kinds = [(f.kind, f.stream) for f in FrameDecoder(GATE_KINDS).feed(bytes(received))]
    assert kinds == [(kind, stream) for stream in range(1, 40) for kind in (Kind.HEAD, Kind.BODY, Kind.END)]
