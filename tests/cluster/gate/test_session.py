"""Frame-level rules of a mux session (sans-IO).

A violation of the frame layout raises Disallowed (the session ends); a problem
of one stream (its line, its size, one stream too many) refuses that stream
alone and the session goes on.
"""

from __future__ import annotations

import asyncio

import pytest

from cluster.gate.session import BODY_IDLE_TIMEOUT, MAX_STREAMS, SESSION_IDLE_TIMEOUT, MuxSession, StreamTable
from policy.errors import Disallowed, SluiceError
from policy.frames import GATE_KINDS, FrameDecoder, Kind
from policy.grammar import Call, Ping


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


REFUSED: list[tuple[int, str]] = []


def make(max_body: int = 1000) -> tuple[StreamTable, list[int], Clock]:
    cancelled: list[int] = []
    clock = Clock()
    REFUSED.clear()

    def refuse(stream: int, error: SluiceError) -> None:
        REFUSED.append((stream, f"{error.status} {error.code}"))

    return StreamTable(lambda call: max_body, cancelled.append, clock, refuse=refuse), cancelled, clock


def test_call_completes_when_declared_length_arrives() -> None:
    table, _, _ = make()
    assert table.on_frame(Kind.OPEN, 1, b"call chat m 10") is None
    assert table.on_frame(Kind.DATA, 1, b"01234") is None
    assert table.on_frame(Kind.DATA, 1, b"56789") == (1, Call("chat", "m", 10), b"0123456789")
    assert table.open_streams == 1
    table.finished(1)
    assert table.open_streams == 0


def test_ping_starts_at_once() -> None:
    table, _, _ = make()
    assert table.on_frame(Kind.OPEN, 1, b"ping") == (1, Ping(), b"")


def test_interleaved_streams() -> None:
    table, _, _ = make()
    table.on_frame(Kind.OPEN, 1, b"call chat m 2")
    table.on_frame(Kind.OPEN, 2, b"call chat m 2")
    table.on_frame(Kind.DATA, 2, b"b")
    table.on_frame(Kind.DATA, 1, b"a")
    assert table.on_frame(Kind.DATA, 2, b"b")[2] == b"bb"  # type: ignore[index]
    assert table.on_frame(Kind.DATA, 1, b"a")[2] == b"aa"  # type: ignore[index]


def test_cancel_running_stream_reaches_task() -> None:
    table, cancelled, _ = make()
    table.on_frame(Kind.OPEN, 1, b"ping")
    table.on_frame(Kind.CANCEL, 1, b"")
    assert cancelled == [1]


def test_cancel_of_finished_stream_is_ignored() -> None:
    table, cancelled, _ = make()
    table.on_frame(Kind.OPEN, 1, b"ping")
    table.finished(1)
    table.on_frame(Kind.CANCEL, 1, b"")
    assert cancelled == []


def test_cancel_while_receiving_drops_body() -> None:
    table, cancelled, _ = make()
    table.on_frame(Kind.OPEN, 1, b"call chat m 10")
    table.on_frame(Kind.DATA, 1, b"abc")
    table.on_frame(Kind.CANCEL, 1, b"")
    assert table.open_streams == 0 and cancelled == []
    with pytest.raises(Disallowed):
        table.on_frame(Kind.DATA, 1, b"d")


def _violation(table: StreamTable, kind: Kind, stream: int, payload: bytes, code: str) -> None:
    with pytest.raises(Disallowed) as info:
        table.on_frame(kind, stream, payload)
    assert info.value.code == code


def test_reject_stream_id_reuse() -> None:
    table, _, _ = make()
    table.on_frame(Kind.OPEN, 1, b"ping")
    table.on_frame(Kind.OPEN, 2, b"ping")
    table.finished(2)
    _violation(table, Kind.OPEN, 2, b"ping", "stream_reuse")
    table2, _, _ = make()
    table2.on_frame(Kind.OPEN, 1, b"ping")
    table2.on_frame(Kind.OPEN, 2, b"ping")
    _violation(table2, Kind.OPEN, 1, b"ping", "stream_reuse")


def test_reject_stream_id_gap() -> None:
    """Ids are consecutive, so no id below the last can be one that was never opened."""
    table, _, _ = make()
    _violation(table, Kind.OPEN, 5, b"ping", "stream_gap")
    table2, _, _ = make()
    table2.on_frame(Kind.OPEN, 1, b"ping")
    _violation(table2, Kind.OPEN, 3, b"ping", "stream_gap")


def test_reject_body_overrun() -> None:
    table, _, _ = make()
    table.on_frame(Kind.OPEN, 1, b"call chat m 3")
    _violation(table, Kind.DATA, 1, b"abcd", "body_overrun")


def test_reject_data_after_complete_body() -> None:
    table, _, _ = make()
    table.on_frame(Kind.OPEN, 1, b"call chat m 1")
    table.on_frame(Kind.DATA, 1, b"a")
    _violation(table, Kind.DATA, 1, b"b", "data_without_stream")


def test_reject_data_for_unknown_stream() -> None:
    table, _, _ = make()
    _violation(table, Kind.DATA, 9, b"a", "data_without_stream")


def test_reject_declared_length_over_route_limit_refuses_the_stream_only() -> None:
    """Finding 1: a body over the route's limit is that stream's problem, not the session's."""
    table, _, _ = make(max_body=100)
    assert table.on_frame(Kind.OPEN, 1, b"call chat m 101") is None
    assert REFUSED == [(1, "413 body_too_large")]
    # its DATA (the appliance sent them with the OPEN) are dropped, up to the declared length
    assert table.on_frame(Kind.DATA, 1, b"x" * 100) is None
    assert table.on_frame(Kind.DATA, 1, b"x") is None
    assert table.open_streams == 0
    _violation(table, Kind.DATA, 1, b"x", "data_without_stream")  # past the declared length
    assert table.on_frame(Kind.OPEN, 2, b"ping") == (2, Ping(), b"")


def test_reject_refused_stream_overrun_is_still_a_violation() -> None:
    table, _, _ = make(max_body=10)
    table.on_frame(Kind.OPEN, 1, b"call chat m 11")
    _violation(table, Kind.DATA, 1, b"x" * 12, "body_overrun")


def test_reject_too_many_concurrent_streams_refuses_the_stream_only() -> None:
    """Finding 2: one stream past MAX_STREAMS gets 503 too_many_streams; the others live on."""
    table, _, _ = make()
    for stream in range(1, MAX_STREAMS + 1):
        table.on_frame(Kind.OPEN, stream, b"ping")
    assert table.on_frame(Kind.OPEN, MAX_STREAMS + 1, b"call chat m 5") is None
    assert REFUSED == [(MAX_STREAMS + 1, "503 too_many_streams")]
    assert table.on_frame(Kind.DATA, MAX_STREAMS + 1, b"12345") is None
    table.finished(1)
    assert table.on_frame(Kind.OPEN, MAX_STREAMS + 2, b"ping") == (MAX_STREAMS + 2, Ping(), b"")


def test_max_streams_is_the_policy_constant() -> None:
    from policy.frames import MAX_STREAMS as POLICY_MAX_STREAMS

    assert MAX_STREAMS is POLICY_MAX_STREAMS


def test_reject_cancel_of_never_opened_stream() -> None:
    table, _, _ = make()
    _violation(table, Kind.CANCEL, 1, b"", "cancel_unknown")


def test_reject_frame_flood_of_idle_cancels() -> None:
    table, _, _ = make()
    table.on_frame(Kind.OPEN, 1, b"ping")
    table.finished(1)
    with pytest.raises(Disallowed) as info:
        for _ in range(10_000):
            table.on_frame(Kind.CANCEL, 1, b"")
    assert info.value.code == "frame_flood"


def test_reject_slowloris_body() -> None:
    table, _, clock = make()
    table.on_frame(Kind.OPEN, 1, b"call chat m 10")
    table.on_frame(Kind.DATA, 1, b"a")
    clock.now = BODY_IDLE_TIMEOUT - 0.1
    table.check_deadlines()
    clock.now = BODY_IDLE_TIMEOUT + 0.1
    with pytest.raises(Disallowed) as info:
        table.check_deadlines()
    assert info.value.code == "body_timeout"


def test_reject_bad_open_line_refuses_the_stream_only() -> None:
    table, _, clock = make()
    assert table.on_frame(Kind.OPEN, 1, b"call chat m 1\n") is None
    assert REFUSED == [(1, "400 bad_command")]
    assert table.on_frame(Kind.DATA, 1, b"a") is None  # a body that may follow is dropped
    assert table.on_frame(Kind.OPEN, 2, b"mux") is None
    assert REFUSED[-1] == (2, "400 bad_command")
    clock.now = BODY_IDLE_TIMEOUT + 1
    table.check_deadlines()  # forgotten, not a violation: its length was never known
    assert table.on_frame(Kind.OPEN, 3, b"ping") == (3, Ping(), b"")


def test_reject_flood_of_refused_streams() -> None:
    """Refused streams whose bodies are still awaited are bounded like open ones."""
    table, _, clock = make()
    for stream in range(1, MAX_STREAMS + 1):
        table.on_frame(Kind.OPEN, stream, b"mux")  # refused; a body might follow
    _violation(table, Kind.OPEN, MAX_STREAMS + 1, b"mux", "refused_flood")
    table2, _, clock2 = make()
    for stream in range(1, 2 * MAX_STREAMS):
        table2.on_frame(Kind.OPEN, stream, b"mux")
        clock2.now += BODY_IDLE_TIMEOUT / MAX_STREAMS * 2.5  # slow enough: each is forgotten in time
        table2.check_deadlines()


class _Writer:
    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.data += data

    async def drain(self) -> None:
        return None

    def close(self) -> None:
        return None

    def is_closing(self) -> bool:
        return False


class _NoForwarder:
    def max_body(self, call: Call) -> int:
        return 1000

    async def serve(self, command: object, body: bytes, sink: object) -> None:
        raise AssertionError("nothing is served")


def test_reject_a_session_idle_too_long() -> None:
    # The watchdog (once a second) ends a session that received nothing for SESSION_IDLE_TIMEOUT.
    clock = Clock()
    writer = _Writer()

    async def scenario() -> int:
        reader = asyncio.StreamReader()
        session = MuxSession(_NoForwarder(), reader, writer, clock)
        clock.now = SESSION_IDLE_TIMEOUT + 0.5
        return await session.run()

    assert asyncio.run(scenario()) == 2
    assert FrameDecoder(GATE_KINDS).feed(bytes(writer.data)) == [(Kind.GOAWAY, 0, b"session_idle")]


def test_a_session_that_receives_is_not_idle() -> None:
    clock = Clock()
    writer = _Writer()

    async def scenario() -> int:
        reader = asyncio.StreamReader()
        session = MuxSession(_NoForwarder(), reader, writer, clock)
        running = asyncio.create_task(session.run())
        clock.now = SESSION_IDLE_TIMEOUT - 0.5
        await asyncio.sleep(0)
        clock.now = SESSION_IDLE_TIMEOUT + 0.5
        reader.feed_data(b"\x01")  # part of a frame: the session heard from the appliance just now
        await asyncio.sleep(1.5)
        assert not running.done()
        reader.feed_eof()
        return await running

    assert asyncio.run(scenario()) == 2  # the half frame at the end is a violation, not idleness
    assert FrameDecoder(GATE_KINDS).feed(bytes(writer.data)) == [(Kind.GOAWAY, 0, b"truncated_frame")]
