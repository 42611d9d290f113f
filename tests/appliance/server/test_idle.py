"""Kept-alive idle connections: closed after keep_alive_timeout, or at once on shutdown; busy ones never."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from hypercorn.asyncio.worker_context import WorkerContext
from hypercorn.events import Closed

from appliance.server.idle import IdleTimerH11Protocol

from .wire import CLOSE, Wire, quiet_config

GET = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n"
TIMEOUT = 0.5


async def _ok(scope: dict[str, Any], receive: Callable[[], Awaitable[Any]], send: Callable[[Any], Awaitable[None]]) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


def _wire(context: WorkerContext | None = None) -> Wire:
    config = quiet_config()
    config.keep_alive_timeout = TIMEOUT
    return Wire(IdleTimerH11Protocol, _ok, config, context)


async def _closed_within(wire: Wire, seconds: float) -> float | None:
    """Seconds until the connection closed, or None if it did not within ``seconds``."""
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        if CLOSE in wire.writes:
            return time.monotonic() - started
        await asyncio.sleep(0.01)
    return None


def test_an_idle_connection_is_closed_after_the_timeout() -> None:
    async def run() -> tuple[float | None, list[bool], bytes]:
        async with _wire() as wire:
            await wire.feed(GET)
            await wire.settle()
            answered = wire.sent
            closed = await _closed_within(wire, TIMEOUT * 6)
        return closed, wire.updates, answered

    closed, updates, answered = asyncio.run(run())
    assert answered.endswith(b"\r\n\r\nok") and closed is not None and closed >= TIMEOUT * 0.9
    assert updates == [False]  # only the first request's update reaches the server (its own first idle task)


def test_a_new_request_stops_the_idle_timer() -> None:
    async def run() -> list[bytes | str]:
        async with _wire() as wire:
            await wire.feed(GET)
            await wire.settle()
            await asyncio.sleep(TIMEOUT * 0.6)
            await wire.feed(GET)
            await wire.settle()
            await asyncio.sleep(TIMEOUT * 0.6)  # past the first answer's deadline, not the second's
            before = list(wire.writes)
            await _closed_within(wire, TIMEOUT * 6)
        return before

    before = asyncio.run(run())
    assert CLOSE not in before and sum(1 for w in before if isinstance(w, bytes) and w.startswith(b"HTTP/1.1 200")) == 2


def test_shutdown_closes_idle_connections_at_once() -> None:
    async def run() -> tuple[float | None, list[bytes | str]]:
        server = WorkerContext(None)
        async with _wire(server) as idle, _wire(server) as busy:
            await idle.feed(GET)
            await idle.settle()
            await busy.feed(b"GET / HTTP/1.1\r\nHost: t\r\n")  # a head begun: not idle, Hypercorn's own rules
            await idle.context.terminated.set()
            closed = await _closed_within(idle, TIMEOUT / 2)
            busy_writes = list(busy.writes)
        return closed, busy_writes

    closed, busy_writes = asyncio.run(run())
    assert closed is not None and closed < TIMEOUT / 2 and busy_writes == []


def test_a_client_that_leaves_takes_its_timer_with_it() -> None:
    async def run() -> tuple[bool, bool]:
        async with _wire() as wire:
            await wire.feed(GET)
            await wire.settle()
            armed = wire.protocol._idle is not None  # type: ignore[attr-defined]
            await wire.protocol.handle(Closed())
            return armed, wire.protocol._idle is None  # type: ignore[attr-defined]

    assert asyncio.run(run()) == (True, True)
