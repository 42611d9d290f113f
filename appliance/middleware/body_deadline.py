"""A total deadline on every request body, and a client's cut-off body answered as the client's fault.

Hypercorn bounds the head (``keep_alive_timeout``) but not the body: a client
could send one byte a minute and hold a connection and its buffers forever.
Each request gets ``timeout`` seconds from its start to deliver its whole
body: :func:`receive_within` is the app's ``receive``, which raises
:class:`BodyTimeout` past that, and the client gets 408 (the connection is
closed; :class:`~.front.FrontMiddleware` answers).

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

from starlette.types import Message, Receive, Scope

from policy.errors import PeerError
from policy.events import event_line

__all__ = ["BodyIncomplete", "BodyTimeout", "DEFAULT_BODY_TIMEOUT", "log_timeout", "receive_within"]

log = logging.getLogger("sluice.http")

# Seconds a request may take to send its whole body (the [server] default).
DEFAULT_BODY_TIMEOUT: Final = 60.0


class BodyTimeout(PeerError):
    """The client did not send its whole body in time."""

    code = "body_timeout"
    status = 408


class BodyIncomplete(PeerError):
    """The body ended before it was complete (Starlette's ``ClientDisconnect``)."""

    code = "body_incomplete"
    status = 400


def receive_within(receive: Receive, deadline: float) -> Receive:
    """``receive``, raising :class:`BodyTimeout` while the body is not all in by ``deadline`` (``time.monotonic``).

    Hypercorn's ``receive`` is an ``asyncio.Queue``'s ``get``: a message already
    queued (a small body arrives with its head) is taken at once, with no timer
    to arm and cancel; ``get`` itself would return that same message."""
    is_get = getattr(receive, "__func__", None) is asyncio.Queue.get
    queue: asyncio.Queue[Message] | None = getattr(receive, "__self__") if is_get else None  # noqa: B009
    body_done = False

    async def receive_in_time() -> Message:
        nonlocal body_done
        if body_done:
            return await receive()
        if queue is not None and not queue.empty():
            message: Message = queue.get_nowait()
        else:
            try:
                async with asyncio.timeout(max(deadline - time.monotonic(), 0.0)):
                    message = await receive()
            except TimeoutError:
                raise BodyTimeout() from None
        if message["type"] != "http.request" or not message.get("more_body", False):
            body_done = True
        return message

    return receive_in_time


def log_timeout(scope: Scope) -> None:
    log.info(event_line("body_timeout", path=scope.get("path", "")[:64].replace('"', "")))
