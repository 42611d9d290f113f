"""The stricter HTTP/1.1 protocol: no HTTP/2 on the plain port, exact methods, a connection cap."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from appliance.server.strict_h11 import _BUSY, ConnectionCounter, StrictH11Protocol

from .wire import CLOSE, Wire, quiet_config

called: list[str] = []


async def _ok(scope: dict[str, Any], receive: Callable[[], Awaitable[Any]], send: Callable[[Any], Awaitable[None]]) -> None:
    called.append(scope["method"])
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


def _converse(request: bytes) -> list[bytes | str]:
    async def run() -> list[bytes | str]:
        async with Wire(StrictH11Protocol, _ok) as wire:
            await wire.feed(request)
            await wire.settle()
        return wire.writes

    called.clear()
    return asyncio.run(run())


def _refused(writes: list[bytes | str], status: int) -> bool:
    first = writes[0]
    return isinstance(first, bytes) and first.startswith(b"HTTP/1.1 %d " % status) and writes[1] == CLOSE and not called


def test_a_plain_request_is_served() -> None:
    writes = _converse(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
    assert writes[0].endswith(b"\r\n\r\nok") and called == ["GET"]  # type: ignore[union-attr]


def test_reject_h2c_upgrade() -> None:
    writes = _converse(
        b"GET / HTTP/1.1\r\nHost: t\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
    )
    assert _refused(writes, 400) and b" 101 " not in b"".join(w for w in writes if isinstance(w, bytes))


def test_reject_h2_prior_knowledge() -> None:
    assert _refused(_converse(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), 400)


@pytest.mark.parametrize("method", [b"get", b"Get", b"pOST"])
def test_reject_method_not_exactly_registered(method: bytes) -> None:
    assert _refused(_converse(method + b" / HTTP/1.1\r\nHost: t\r\n\r\n"), 405)


def test_reject_connections_over_the_cap() -> None:
    config = quiet_config()
    counter = ConnectionCounter(1)
    config.sluice_connections = counter  # type: ignore[attr-defined]

    async def run() -> tuple[list[bytes | str], list[bytes | str], int]:
        async with Wire(StrictH11Protocol, _ok, config) as first:
            async with Wire(StrictH11Protocol, _ok, config) as second:
                await second.feed(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
                await second.settle()
            await first.feed(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            await first.settle()
            open_inside = counter.open
        return first.writes, second.writes, open_inside

    first, second, open_inside = asyncio.run(run())
    assert second == [_BUSY, CLOSE] and first[0].endswith(b"ok")  # type: ignore[union-attr]
    assert open_inside == 1 and counter.open == 0
