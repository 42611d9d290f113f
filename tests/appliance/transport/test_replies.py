"""The appliance's side of the frame protocol (appliance/transport/replies.py): usage so far
from a USAGE frame before an ERROR, and from the END that answers a CANCEL."""

from __future__ import annotations

import asyncio

import pytest

from appliance.transport.replies import MuxClient
from policy.errors import SluiceError
from policy.frames import CLIENT_KINDS, MAX_STREAMS, FrameDecoder, Kind, encode
from policy.grammar import Ping

USAGE = b'{"prompt_tokens":4,"completion_tokens":9}'


class _Pipe:
    """The writing half the client sees: records the frames it writes."""

    def __init__(self) -> None:
        self.decoder = FrameDecoder(CLIENT_KINDS)
        self.frames: list[tuple[Kind, int]] = []

    def write(self, data: bytes) -> None:
        self.frames += [(f.kind, f.stream) for f in self.decoder.feed(data)]

    async def drain(self) -> None:
        return None

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        return None


async def _client() -> tuple[MuxClient, asyncio.StreamReader, _Pipe]:
    reader = asyncio.StreamReader()
    pipe = _Pipe()
    return MuxClient(reader, pipe), reader, pipe  # type: ignore[arg-type]


def test_usage_before_an_error_is_kept() -> None:
    async def scenario() -> None:
        client, reader, _ = await _client()
        reader.feed_data(encode(Kind.HEAD, 1, b"200 sse") + encode(Kind.BODY, 1, b"data: x\n\n"))
        reply = await client.request(Ping(), b"")
        reader.feed_data(encode(Kind.USAGE, 1, USAGE) + encode(Kind.ERROR, 1, b"504 backend_timeout"))
        with pytest.raises(SluiceError) as info:
            async for _ in reply:
                pass
        assert info.value.code == "backend_timeout"
        assert reply.usage == {"prompt_tokens": 4, "completion_tokens": 9}
        await client.aclose()

    asyncio.run(scenario())


def test_reject_cancelled_stream_settled_without_its_usage() -> None:
    """Finding 11: after a CANCEL the reply waits (bounded) for the gate's END and its usage."""
    async def scenario() -> None:
        client, reader, pipe = await _client()
        reader.feed_data(encode(Kind.HEAD, 1, b"200 sse"))
        reply = await client.request(Ping(), b"")
        reply.cancel()
        assert (Kind.CANCEL, 1) in pipe.frames and reply.awaiting_last
        waiting = asyncio.create_task(reply.wait_last(5.0))
        await asyncio.sleep(0.01)
        reader.feed_data(encode(Kind.BODY, 1, b"data: late\n\n") + encode(Kind.END, 1, USAGE))
        await asyncio.wait_for(waiting, 1.0)
        assert reply.usage == {"prompt_tokens": 4, "completion_tokens": 9}
        # a gate that never answers: the wait is bounded
        reader.feed_data(encode(Kind.HEAD, 2, b"200 sse"))
        silent = await client.request(Ping(), b"")
        silent.cancel()
        await asyncio.wait_for(silent.wait_last(0.05), 1.0)
        assert silent.usage is None
        await client.aclose()

    asyncio.run(scenario())


def test_cancelled_streams_waiting_for_an_answer_are_bounded() -> None:
    async def scenario() -> None:
        client, reader, _ = await _client()
        replies = []
        for stream in range(1, MAX_STREAMS + 3):
            reader.feed_data(encode(Kind.HEAD, stream, b"200 sse"))
            reply = await client.request(Ping(), b"")
            reply.cancel()
            replies.append(reply)
        assert not replies[0].awaiting_last and replies[-1].awaiting_last
        await client.aclose()
        assert not replies[-1].awaiting_last  # the session closed: nothing waits any more

    asyncio.run(scenario())
