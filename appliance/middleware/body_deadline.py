"""A total deadline on every request body, and a client's cut-off body answered as the client's fault.

Hypercorn bounds the head (``keep_alive_timeout``) but not the body: a client
could send one byte a minute and hold a connection and its buffers forever.
This middleware gives each request ``timeout`` seconds from its start to
deliver its whole body; past that the app's ``receive`` raises
:class:`BodyTimeout` and the client gets 408 (the connection is closed).

A body that ends early (the client disconnected, or its chunked encoding was
malformed, which Hypercorn turns into a disconnect) surfaces in Starlette as
``ClientDisconnect``: that is the client's fault, so it is answered 400 if
nothing was sent yet, and otherwise the exchange just ends -- never a 500,
never an internal-error log line.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Final

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from policy.errors import PeerError
from policy.events import event_line

from ..api.errors import error_body

__all__ = ["BodyDeadlineMiddleware", "BodyTimeout", "DEFAULT_BODY_TIMEOUT"]

log = logging.getLogger("sluice.http")

# Seconds a request may take to send its whole body (the [server] default).
DEFAULT_BODY_TIMEOUT: Final = 60.0


class BodyTimeout(PeerError):
    """The client did not send its whole body in time."""

    code = "body_timeout"
    status = 408


class BodyDeadlineMiddleware:
    def __init__(self, app: ASGIApp, timeout: float = DEFAULT_BODY_TIMEOUT) -> None:
        self.app = app
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        deadline = time.monotonic() + self.timeout
        body_done = False
        started = False

        async def timed_receive() -> Message:
            nonlocal body_done
            if body_done:
                return await receive()
            remaining = deadline - time.monotonic()
            try:
                async with asyncio.timeout(max(remaining, 0.0)):
                    message = await receive()
            except TimeoutError:
                raise BodyTimeout() from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, timed_receive, tracked_send)
        except BodyTimeout:
            log.info(event_line("body_timeout", path=scope.get("path", "")[:64].replace('"', "")))
            if not started:
                await _answer(send, 408, "body_timeout")
        except ClientDisconnect:
            if not started:
                await _answer(send, 400, "body_incomplete")


async def _answer(send: Send, status: int, code: str) -> None:
    body = error_body(status, code)
    try:
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
    except OSError:
        pass  # the client is gone already
