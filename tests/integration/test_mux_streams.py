"""Mux sessions shared by many requests: the gate's stream cap, queueing, cancels before the head, pings.

Each test drives a :class:`LocalPipeTransport` (the gate as a child process,
the same bytes as over SSH) against real stand-in models, or against a
backend that never answers, to see what the gate itself saw.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import pytest

from appliance.transport.local import LocalPipeTransport
from appliance.transport.spread import MAX_SESSION_STREAMS, StreamSpreader
from cluster.gate.session import MAX_STREAMS as GATE_MAX_STREAMS
from policy.errors import Overloaded
from policy.grammar import Call, Ping
from tests.conftest import Cluster, free_port, write_static_config

pytestmark = pytest.mark.integration


def _chat(max_tokens: int, stream: bool = False, model: str = "standin-chat") -> tuple[Call, bytes]:
    body = json.dumps(
        {"model": model, "messages": [{"role": "user", "content": "count"}], "max_tokens": max_tokens, "stream": stream}
    ).encode()
    return Call("chat", model, len(body)), body


async def _gate_in_flight(transport: LocalPipeTransport) -> int:
    reply = await transport.request(Ping(), b"")
    return int(json.loads(await reply.read())["in_flight"])


def test_session_cap_is_below_the_gates() -> None:
    assert 0 < MAX_SESSION_STREAMS < GATE_MAX_STREAMS


def test_reject_more_streams_than_the_gate_allows_on_one_session(cluster: Cluster) -> None:
    """More concurrent requests than the gate's cap: the session survives and every request is answered."""
    count = GATE_MAX_STREAMS + 44

    async def scenario() -> list[int]:
        transport = LocalPipeTransport(cluster.gate_argv(), sessions=1)
        await transport.start()
        try:

            async def one() -> int:
                call, body = _chat(40)
                reply = await transport.request(call, body)
                await reply.read()
                return reply.status

            return await asyncio.gather(*(one() for _ in range(count)))
        finally:
            await transport.aclose()

    assert asyncio.run(scenario()) == [200] * count


def test_reject_requests_past_a_full_queue_with_503() -> None:
    """No room on any session and the queue full (or its wait over): 503 busy, never a full session."""

    async def scenario() -> None:
        spreader = StreamSpreader(max_streams=1, queue_max=1, queue_wait=0.5)

        class Session:
            alive = True
            open_streams = 1

        async def sessions() -> list[Session]:
            return [Session()]

        waiting = asyncio.create_task(spreader.choose(sessions))  # type: ignore[arg-type]
        await asyncio.sleep(0.05)
        with pytest.raises(Overloaded) as full:
            await spreader.choose(sessions)  # type: ignore[arg-type]
        assert full.value.status == 503 and full.value.code == "busy"
        with pytest.raises(Overloaded):
            await waiting  # its wait ran out
        Session.open_streams = 0
        assert await spreader.choose(sessions) is not None  # type: ignore[arg-type]

    asyncio.run(scenario())


def test_reject_timeout_before_head_is_cancelled_at_the_gate(tmp_path: Path) -> None:
    """A request that times out before its head is CANCELled: the gate stops it (it does not live on)."""

    async def scenario() -> None:
        accepted: list[asyncio.StreamReader] = []
        closed = asyncio.Event()

        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            accepted.append(reader)
            while await reader.read(65536):
                pass  # never answers; returns when the gate hangs up
            closed.set()
            writer.close()

        port = free_port()
        server = await asyncio.start_server(silent, "127.0.0.1", port)
        config = write_static_config(tmp_path, [("silent-chat", "127.0.0.1", port, None, ["chat"])])
        transport = LocalPipeTransport(
            [sys.executable, "-m", "cluster.cli", "gate", "--config", str(config), "--local-pipe"], sessions=1
        )
        await transport.start()
        try:
            call, body = _chat(5, model="silent-chat")
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(1.5):
                    await transport.request(call, body)
            assert accepted, "the gate should have reached the backend"
            await asyncio.wait_for(closed.wait(), 5)  # the gate hung up on the backend: it saw the CANCEL
            for _ in range(50):
                if await _gate_in_flight(transport) == 0:
                    break
                await asyncio.sleep(0.1)
            assert await _gate_in_flight(transport) == 0
            assert transport.stats()["streams"] == 0
        finally:
            await transport.aclose()
            server.close()

    asyncio.run(scenario())


def test_every_session_is_pinged(cluster: Cluster) -> None:
    """One keepalive round pings each session, so none is closed by the gate's idle timer."""

    async def scenario() -> None:
        transport = LocalPipeTransport(cluster.gate_argv(), sessions=3)
        await transport.start()
        try:
            assert await transport.ping(10)
            children = [c for c in transport._children if c is not None]
            assert len(children) == 3
            assert all(c.client._next_id == 2 for c in children)  # each opened exactly its ping's stream
        finally:
            await transport.aclose()

    asyncio.run(scenario())


def test_reject_wedged_session_is_replaced(cluster: Cluster) -> None:
    """A session whose gate stops answering (here: stopped with SIGSTOP) is closed and replaced."""

    async def scenario() -> None:
        transport = LocalPipeTransport(cluster.gate_argv(), sessions=1, ping_deadline=1.0)
        await transport.start()
        try:
            child = transport._children[0]
            assert child is not None
            os.kill(child.process.pid, signal.SIGSTOP)
            assert not await transport.ping(3)
            await asyncio.sleep(0.2)
            assert not child.alive
            call, body = _chat(3)
            reply = await transport.request(call, body)  # a fresh gate process serves it
            await reply.read()
            assert reply.status == 200 and transport._children[0] is not child
        finally:
            if child.process.returncode is None:
                os.kill(child.process.pid, signal.SIGCONT)
            await transport.aclose()

    asyncio.run(scenario())
