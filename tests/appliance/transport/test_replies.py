"""The appliance's side of the frame protocol (appliance/transport/replies.py): usage so far
from a USAGE frame before an ERROR, and from the END that answers a CANCEL."""

from __future__ import annotations

import asyncio
import collections

import pytest

from appliance.transport.replies import FrameReceiver, GateReply, MuxClient
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


# -- a recorded reply cut at every point: what each request gets depends on the bytes alone --

# Four streams of one mux session, interleaved as a gate writes them: a streamed answer
# with usage so far and a final usage naming what produced it; a JSON answer; a stream
# that ends in an error after its usage so far; an error before any head.
_RECORDED: list[tuple[Kind, int, bytes]] = [
    (Kind.HEAD, 1, b"200 sse"),
    (Kind.BODY, 1, b"data: a\n\n"),
    (Kind.HEAD, 2, b"200 json"),
    (Kind.USAGE, 1, b'{"prompt_tokens":4,"completion_tokens":1}'),
    (Kind.HEAD, 3, b"200 sse"),
    (Kind.BODY, 2, b'{"object":"list","data":[]}'),
    (Kind.BODY, 1, b"data: b\n\n"),
    (Kind.ERROR, 4, b"503 no_backend"),
    (Kind.END, 2, b""),
    (Kind.BODY, 3, b"data: c\n\n"),
    (Kind.USAGE, 3, USAGE),
    (Kind.END, 1, b'{"prompt_tokens":4,"completion_tokens":2,"revision":"r-1","backend_version":"0.9.1"}'),
    (Kind.ERROR, 3, b"504 backend_timeout"),
]
_WIRE = b"".join(encode(kind, stream, payload) for kind, stream, payload in _RECORDED)
_STREAMS = (1, 2, 3, 4)


def _last_frame_ends() -> dict[int, int]:
    """Where each stream's last frame (END or ERROR) ends in the wire."""
    ends, offset = {}, 0
    for kind, stream, payload in _RECORDED:
        offset += len(encode(kind, stream, payload))
        if kind in (Kind.END, Kind.ERROR):
            ends[stream] = offset
    return ends


class _Pieces:
    """The reading half: hands out the given pieces one read at a time, then end of file."""

    def __init__(self, pieces: list[bytes]) -> None:
        self._pieces = collections.deque(piece for piece in pieces if piece)

    async def read(self, size: int) -> bytes:
        await asyncio.sleep(0)  # every piece is a read of its own
        return self._pieces.popleft() if self._pieces else b""


Outcome = tuple[int, str, list[bytes], dict[str, int] | None, dict[str, str], tuple[str, int] | None]


async def _outcomes(pieces: list[bytes]) -> dict[int, Outcome]:
    """Each stream's status, media, body pieces, usage, provenance and error, from ``pieces``."""
    receiver = FrameReceiver(_Pieces(pieces))  # type: ignore[arg-type]
    replies = {stream: GateReply(stream, lambda _stream: None) for stream in _STREAMS}
    receiver.replies.update(replies)
    await asyncio.wait_for(receiver.run(), 5.0)
    assert receiver.closed is not None and receiver.closed.code == "gate_closed"  # the end of the pieces
    outcomes: dict[int, Outcome] = {}
    for stream, reply in replies.items():
        body: list[bytes] = []
        error = None
        try:
            await asyncio.wait_for(reply.wait_head(), 1.0)
            async for piece in reply:
                body.append(piece)
        except SluiceError as exc:
            error = (exc.code, exc.status)
        outcomes[stream] = (reply.status, reply.media, body, reply.usage, reply.produced_by, error)
    return outcomes


def _whole() -> dict[int, Outcome]:
    return asyncio.run(_outcomes([_WIRE]))


def test_recorded_reply_whole() -> None:
    whole = _whole()
    assert whole[1] == (
        200,
        "sse",
        [b"data: a\n\n", b"data: b\n\n"],
        {"prompt_tokens": 4, "completion_tokens": 2},
        {"revision": "r-1", "backend_version": "0.9.1"},
        None,
    )
    assert whole[2] == (200, "json", [b'{"object":"list","data":[]}'], None, {}, None)
    assert whole[3] == (200, "sse", [b"data: c\n\n"], {"prompt_tokens": 4, "completion_tokens": 9}, {}, ("backend_timeout", 504))
    assert whole[4] == (0, "json", [], None, {}, ("no_backend", 503))


def test_every_split_point_of_a_recorded_reply_gives_what_the_whole_gives() -> None:
    whole = _whole()

    async def every_cut() -> None:
        for cut in range(len(_WIRE) + 1):
            assert await _outcomes([_WIRE[:cut], _WIRE[cut:]]) == whole, cut

    asyncio.run(every_cut())


def test_recorded_reply_byte_by_byte_gives_what_the_whole_gives() -> None:
    assert asyncio.run(_outcomes([_WIRE[at : at + 1] for at in range(len(_WIRE))])) == _whole()


def test_every_pair_of_split_points_near_each_other_gives_what_the_whole_gives() -> None:
    """Three pieces: a frame's header split, its header and payload apart, two frames' ends in one read."""
    whole = _whole()

    async def every_pair() -> None:
        for first in range(len(_WIRE) + 1):
            for second in range(first, min(first + 10, len(_WIRE)) + 1):
                pieces = [_WIRE[:first], _WIRE[first:second], _WIRE[second:]]
                assert await _outcomes(pieces) == whole, (first, second)

    asyncio.run(every_pair())


def test_reject_a_reply_cut_short_at_every_point_fails_only_what_was_unfinished() -> None:
    """The way to the gate breaks after any byte: a stream whose last frame arrived keeps its
    answer; every other request fails with gate_closed (a 503), none hangs."""
    whole = _whole()
    ends = _last_frame_ends()

    async def every_cut() -> None:
        for cut in range(len(_WIRE)):
            cut_short = await _outcomes([_WIRE[:cut]])
            for stream in _STREAMS:
                if ends[stream] <= cut:
                    assert cut_short[stream] == whole[stream], (cut, stream)
                else:
                    assert cut_short[stream][5] == ("gate_closed", 503), (cut, stream)

    asyncio.run(every_cut())


# -- coalesced writes: the frames of one loop turn in one write, bytes and order kept --------


class _Writes(_Pipe):
    """Records each write whole, besides the frames in it."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.payloads: list[tuple[Kind, int, bytes]] = []
        self._frames = FrameDecoder(CLIENT_KINDS)

    def write(self, data: bytes) -> None:
        self.writes.append(data)
        super().write(data)
        self.payloads += [(f.kind, f.stream, f.payload) for f in self._frames.feed(data)]


def test_the_frames_of_one_loop_turn_go_out_in_one_write_in_order() -> None:
    from policy.frames import MAX_PAYLOAD
    from policy.grammar import Call, stream_line

    bodies = [b"a" * 10, b"b" * (2 * MAX_PAYLOAD + 5), b"c" * MAX_PAYLOAD]

    async def scenario() -> None:
        reader = asyncio.StreamReader()
        pipe = _Writes()
        client = MuxClient(reader, pipe)  # type: ignore[arg-type]
        calls = [Call("chat", "m", len(body)) for body in bodies]
        requests = [asyncio.create_task(client.request(call, body)) for call, body in zip(calls, bodies, strict=True)]
        await asyncio.sleep(0)  # every request made its frames in this turn
        await asyncio.sleep(0)
        assert len(pipe.writes) == 1  # three requests, eight frames: one write
        expected: list[tuple[Kind, int, bytes]] = []
        for stream, (call, body) in enumerate(zip(calls, bodies, strict=True), start=1):
            expected.append((Kind.OPEN, stream, stream_line(call).encode()))
            expected += [(Kind.DATA, stream, body[i : i + MAX_PAYLOAD]) for i in range(0, len(body), MAX_PAYLOAD)]
        assert pipe.payloads == expected
        # A CANCEL goes out at once, after what was waiting (a fourth request's OPEN here).
        fourth = asyncio.create_task(client.request(Ping(), b""))
        await asyncio.sleep(0)
        assert len(pipe.writes) == 1  # the OPEN waits for the end of the turn...
        reader.feed_data(encode(Kind.HEAD, 1, b"200 sse"))
        first = await requests[0]
        first.cancel()  # ...or for a CANCEL, which takes it along
        assert pipe.payloads[-2:] == [(Kind.OPEN, 4, b"ping"), (Kind.CANCEL, 1, b"")]
        assert b"".join(pipe.writes) == b"".join(encode(*frame) for frame in pipe.payloads)
        for task in (*requests[1:], fourth):
            task.cancel()
        await client.aclose()

    asyncio.run(scenario())


def test_a_write_that_fails_closes_the_session() -> None:
    class Broken(_Pipe):
        def write(self, data: bytes) -> None:
            raise BrokenPipeError()

    async def scenario() -> None:
        client = MuxClient(asyncio.StreamReader(), Broken())  # type: ignore[arg-type]
        with pytest.raises(SluiceError) as info:
            await asyncio.wait_for(client.request(Ping(), b""), 2.0)
        assert info.value.code == "gate_closed" and not client.alive
        await client.aclose()

    asyncio.run(scenario())


def test_chunks_join_the_pieces_already_here_and_keep_bytes_order_and_errors() -> None:
    async def scenario() -> None:
        reply = GateReply(1, lambda _stream: None)
        reply.on_head(b"200 sse")
        for piece in (b"data: 1\n\n", b"data: 2\n\n", b"data: 3\n\n"):
            reply.on_body(piece)
        chunks = reply.chunks()
        assert await anext(chunks) == b"data: 1\n\ndata: 2\n\ndata: 3\n\n"  # three pieces here: one chunk
        later = asyncio.create_task(anext(chunks))
        await asyncio.sleep(0)
        reply.on_body(b"data: 4\n\n")  # arrives while the reader waits: handed on alone
        assert await later == b"data: 4\n\n"
        reply.on_body(b"data: 5\n\n")
        reply.fail(SluiceError("backend_timeout", 504))  # an error after data: the data first, then the error
        assert await anext(chunks) == b"data: 5\n\n"
        with pytest.raises(SluiceError):
            await anext(chunks)
        assert reply._buffered == 0

    asyncio.run(scenario())


def test_chunks_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    from appliance.transport import replies

    monkeypatch.setattr(replies, "MAX_JOINED", 10)

    async def scenario() -> None:
        reply = GateReply(1, lambda _stream: None)
        reply.on_head(b"200 text")
        for piece in (b"abcd", b"efgh", b"ijkl", b"mnop"):
            reply.on_body(piece)
        reply.on_end(b"")
        assert [chunk async for chunk in reply.chunks()] == [b"abcdefghijkl", b"mnop"]

    asyncio.run(scenario())
