"""Request ids and the request log line (pure ASGI).

:class:`RequestLogMiddleware` gives each HTTP request an id, made here and
never taken from the client, returns it as ``x-request-id``, makes it
available to everything that runs for the request (:data:`CURRENT`, which
``appliance/logs.py`` adds to every log line), and at the end writes one
``request`` line: method, route, status, latency, and what metering filled
in (user, key id, model, route id, tokens).  The path logged is the route's
template, or ``other``: a path that matched nothing is the client's text and
is not logged.
"""

from __future__ import annotations

import contextvars
import itertools
import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Final

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["CURRENT", "RequestInfo", "RequestLogMiddleware", "new_request_id", "route_path"]

# HTTP methods logged by name; anything else is logged as "other".
_METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


@dataclass(slots=True)
class RequestInfo:
    """What the request log line says about one request; filled in as the request goes."""

    id: str
    user: str | None = None
    key_id: str | None = None
    model: str | None = None
    route: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    sealed: bool = False
    refused_by: str | None = None


CURRENT: contextvars.ContextVar[RequestInfo | None] = contextvars.ContextVar("sluice_request", default=None)


def new_request_id() -> str:
    """``req_`` and 24 hex digits: random per process, then a counter (unique, and cheap)."""
    prefix, counter = _ids
    return f"req_{prefix}{next(counter):012x}"


def _new_id_source() -> None:
    global _ids
    _ids = (os.urandom(6).hex(), itertools.count(1))


_ids: tuple[str, itertools.count[int]]
_new_id_source()
os.register_at_fork(after_in_child=_new_id_source)  # a forked worker gets ids of its own


def route_path(scope: Scope) -> str:
    """The matched route's template, or ``other`` (a path that matched nothing is the client's text)."""
    return getattr(scope.get("route"), "path", None) or "other"


class RequestLogMiddleware:
    """Request ids and the request log line, for every HTTP request."""

    def __init__(self, app: ASGIApp, access_log: bool = True) -> None:
        self.app = app
        self.access_log = access_log
        self.log = logging.getLogger("sluice.request")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        info = RequestInfo(new_request_id())
        token = CURRENT.set(info)
        started = time.perf_counter()
        status = 0
        header = (b"x-request-id", info.id.encode())

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", ()), header]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except BaseException:
            status = status or 500
            raise
        finally:
            if self.access_log and self.log.isEnabledFor(logging.INFO):
                self._log(scope, info, status, time.perf_counter() - started)
            CURRENT.reset(token)

    def _log(self, scope: Scope, info: RequestInfo, status: int, elapsed: float) -> None:
        method = scope.get("method", "")
        fields: dict[str, Any] = {
            "event": "request",
            "method": method if method in _METHODS else "other",
            "path": route_path(scope),
            "status": status,
            "latency_ms": round(elapsed * 1000, 3),
        }
        for name in ("user", "key_id", "model", "route", "prompt_tokens", "completion_tokens", "refused_by"):
            value = getattr(info, name)
            if value is not None:
                fields[name] = value
        if info.sealed:
            fields["sealed"] = True
        self.log.info("request", extra={"fields": fields})
