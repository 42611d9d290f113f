"""Structured logs: one JSON object per line, each with its request's id, never any content.

:func:`configure_logging` sends every logger through :class:`JsonFormatter`.
A message that is itself a JSON object (the appliance's habit:
``log.warning('{"event":"..."}')``) is merged into the line; any other
message is kept as ``message``.  Exceptions are logged as their type and
where they were raised, never their text (an exception's text can quote what
a request carried).

:class:`RequestLogMiddleware` (pure ASGI) gives each HTTP request an id, made
here and never taken from the client, returns it as ``x-request-id``, makes
it available to everything that runs for the request (:data:`CURRENT`), and
at the end writes one ``request`` line: method, route, status, latency, and
what metering filled in (user, key id, model, route id, tokens).  The path
logged is the route's template, or ``other``: a path that matched nothing is
the client's text and is not logged.
"""

from __future__ import annotations

import contextvars
import itertools
import json
import logging
import os
import sys
import time
import traceback
from dataclasses import dataclass
from typing import IO, Any, Final

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .metrics import Metrics

__all__ = ["CURRENT", "JsonFormatter", "RequestInfo", "RequestLogMiddleware", "configure_logging", "new_request_id"]

# HTTP methods logged by name; anything else is logged as "other".
_METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

# Frames of a traceback kept in a log line (innermost last).
MAX_FRAMES: Final = 8

# Libraries whose INFO lines are noise for an operator (and may name peers): warnings and up only.
_QUIET: Final = ("asyncssh", "hypercorn.access")


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


class JsonFormatter(logging.Formatter):
    _second = -1
    _prefix = ""

    def _timestamp(self, created: float) -> str:
        """ISO 8601, UTC, milliseconds (the date part is formatted once per second)."""
        second = int(created)
        if second != self._second:
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        return f"{self._prefix}.{int((created - second) * 1000):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": self._timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        request = CURRENT.get()
        if request is not None:
            line["request_id"] = request.id
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            line.update(fields)
        else:
            try:
                message = record.getMessage()
            except (TypeError, ValueError):
                message = str(record.msg)
            parsed: object = None
            if message.startswith("{"):
                try:
                    parsed = json.loads(message)
                except ValueError:
                    parsed = None
            if isinstance(parsed, dict):
                line.update(parsed)
            else:
                line["message"] = message
        if record.exc_info and record.exc_info[0] is not None:
            exc_type, _, tb = record.exc_info
            line["exception"] = exc_type.__name__
            frames = traceback.extract_tb(tb)[-MAX_FRAMES:]
            line["where"] = [f"{os.path.basename(f.filename)}:{f.lineno}:{f.name}" for f in frames]
        return orjson.dumps(line, default=str).decode()

    def formatException(self, ei: Any) -> str:
        return ""  # never the exception's text; format() logs its type and frames


def configure_logging(level: str = "info", stream: IO[str] | None = None) -> None:
    """Every log line as JSON on ``stream`` (stderr by default), at ``level`` and above."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # The logging HOWTO's "Optimization": no caller frame lookup, no thread or process names
    # (the lines do not carry them), which makes a log line several microseconds cheaper.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    for name in _QUIET:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
    logging.captureWarnings(True)


class RequestLogMiddleware:
    """Request ids, the request log line and the HTTP metrics, for every HTTP request."""

    def __init__(self, app: ASGIApp, metrics: Metrics | None = None, access_log: bool = True) -> None:
        self.app = app
        self.metrics = metrics
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
            elapsed = time.perf_counter() - started
            route = scope.get("route")
            path = getattr(route, "path", None) or "other"
            if self.metrics is not None:
                self.metrics.http_requests.inc((path, str(status)))
                self.metrics.http_duration.observe((path,), elapsed)
            if self.access_log and self.log.isEnabledFor(logging.INFO):
                method = scope.get("method", "")
                fields: dict[str, Any] = {
                    "event": "request",
                    "method": method if method in _METHODS else "other",
                    "path": path,
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
            CURRENT.reset(token)
