"""A response's head goes out in one write with its body; the bytes and their order stay Hypercorn's own."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from hypercorn.protocol.h11 import H11Protocol

from appliance.server.coalesce import CoalescingH11Protocol

from .wire import CLOSE, ASGIApp, Wire

GET = b"GET /%s HTTP/1.1\r\nHost: t\r\n\r\n"
START = {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]}


def _merged(writes: list[bytes | str]) -> list[bytes | str]:
    """Adjacent writes joined, empty ones dropped: what a peer can tell apart (bytes, then a close)."""
    merged: list[bytes | str] = []
    for write in writes:
        if isinstance(write, bytes) and merged and isinstance(merged[-1], bytes):
            merged[-1] += write
        elif write != b"":
            merged.append(write)
    return merged


async def _plain(scope: dict[str, Any], receive: Callable[[], Awaitable[Any]], send: Callable[[Any], Awaitable[None]]) -> None:
    await receive()
    body = scope["path"].encode() * 3
    await send({**START, "headers": [(b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def _converse(protocol: type[H11Protocol], app: ASGIApp, *chunks: bytes) -> list[bytes | str]:
    async with Wire(protocol, app) as wire:
        for chunk in chunks:
            await wire.feed(chunk)
            await wire.settle()
    return wire.writes


def _both(app: ASGIApp, *chunks: bytes) -> tuple[list[bytes | str], list[bytes | str]]:
    """What Hypercorn's own protocol writes, and what the coalescing one writes, for the same input."""
    return asyncio.run(_converse(H11Protocol, app, *chunks)), asyncio.run(_converse(CoalescingH11Protocol, app, *chunks))


def test_a_plain_answer_is_one_write() -> None:
    theirs, ours = _both(_plain, GET % b"a")
    assert len([w for w in theirs if w]) == 2  # Hypercorn: the head, then the body
    assert ours[0] == _merged(theirs)[0] and ours[0].endswith(b"\r\n\r\n/a/a/a")  # type: ignore[union-attr]
    assert _merged(ours) == _merged(theirs) == [*ours]


@pytest.mark.parametrize("split", [False, True])
def test_keep_alive_and_pipelined_requests_answer_in_order(split: bool) -> None:
    requests = (GET % b"one", GET % b"two") if split else (GET % b"one" + GET % b"two",)
    theirs, ours = _both(_plain, *requests)
    assert _merged(ours) == _merged(theirs)
    assert len(ours) == 2 and b"/one" * 3 in ours[0] and b"/two" * 3 in ours[1]  # type: ignore[operator]


def test_an_answer_without_body_is_one_write() -> None:
    async def empty(scope: dict[str, Any], receive: Callable[[], Awaitable[Any]], send: Callable[[Any], Awaitable[None]]) -> None:
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    theirs, ours = _both(empty, GET % b"")
    assert _merged(ours) == _merged(theirs) == ours and ours[0].startswith(b"HTTP/1.1 204 ")  # type: ignore[union-attr]


def test_a_malformed_request_is_answered_then_closed() -> None:
    theirs, ours = _both(_plain, b"GET / HTTP/1.1\r\nno colon here\r\n\r\n")
    assert _merged(ours) == _merged(theirs) == ours
    assert ours[0].startswith(b"HTTP/1.1 400 ") and ours[1] == CLOSE  # type: ignore[union-attr]


def test_a_head_is_sent_before_a_failure_closes_the_connection() -> None:
    async def fails(scope: dict[str, Any], receive: Callable[[], Awaitable[Any]], send: Callable[[Any], Awaitable[None]]) -> None:
        await send(START)
        raise RuntimeError("after the head")

    theirs, ours = _both(fails, GET % b"")
    assert _merged(ours) == _merged(theirs) and ours[0].startswith(b"HTTP/1.1 200 ") and ours[-1] == CLOSE  # type: ignore[union-attr]


def test_streamed_events_are_never_held() -> None:
    """A streamed answer (no length) is written as the app sends it: the head, then each chunk."""
    seen: list[list[bytes | str]] = []

    async def run() -> list[bytes | str]:
        go = asyncio.Event()

        async def stream(
            scope: dict[str, Any], receive: Callable[[], Awaitable[Any]], send: Callable[[Any], Awaitable[None]]
        ) -> None:
            await send(START)
            seen.append(list(wire.writes))  # written by the time send returns
            await go.wait()
            for chunk in (b"data: 1\n\n", b"data: 2\n\n"):
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                seen.append(list(wire.writes))
            await send({"type": "http.response.body", "body": b""})

        async with Wire(CoalescingH11Protocol, stream) as wire:
            await wire.feed(GET % b"")
            await wire.settle()
            go.set()
            await wire.settle()
        return wire.writes

    writes = asyncio.run(run())
    head = seen[0][0]
    assert len(seen[0]) == 1 and isinstance(head, bytes) and head.startswith(b"HTTP/1.1 200 ") and head.endswith(b"\r\n\r\n")
    assert seen[1][-1] == b"9\r\ndata: 1\n\n\r\n" and seen[2][-1] == b"9\r\ndata: 2\n\n\r\n"
    assert writes[:4] == [head, seen[1][-1], seen[2][-1], b"0\r\n\r\n"]


def test_a_sized_head_whose_body_is_late_goes_out_on_the_next_turn() -> None:
    seen: list[list[bytes | str]] = []

    async def run() -> list[bytes | str]:
        go = asyncio.Event()

        async def late(
            scope: dict[str, Any], receive: Callable[[], Awaitable[Any]], send: Callable[[Any], Awaitable[None]]
        ) -> None:
            await send({**START, "headers": [(b"content-length", b"4")]})
            seen.append(list(wire.writes))  # held
            await go.wait()
            await send({"type": "http.response.body", "body": b"late"})

        async with Wire(CoalescingH11Protocol, late) as wire:
            await wire.feed(GET % b"")
            await wire.settle()
            seen.append(list(wire.writes))  # alone, a turn later
            go.set()
            await wire.settle()
        return wire.writes

    writes = asyncio.run(run())
    head = seen[1][0]
    assert (
        seen[0] == []
        and len(seen[1]) == 1
        and isinstance(head, bytes)
        and b"content-length: 4\r\n" in head
        and head.endswith(b"\r\n\r\n")
    )
    assert writes[:2] == [head, b"late"]
