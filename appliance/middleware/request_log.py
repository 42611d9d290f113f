"""Request ids and the request log line.

:class:`~.front.FrontMiddleware` gives each HTTP request an id
(:func:`new_request_id`), made here and never taken from the client, returns
it as ``x-request-id``, makes it available to everything that runs for the
request (:data:`CURRENT`, which ``appliance/logs.py`` adds to every log
line), and at the end writes one ``request`` line (:class:`RequestLog`):
method, route, status, latency, and what metering filled in (user, key id,
model, route id, tokens).  The path logged is the route's
template, or ``other``: a path that matched nothing is the client's text and
is not logged.
"""

from __future__ import annotations

import contextvars
import itertools
import logging
import os
from dataclasses import dataclass
from typing import Any, Final

from starlette.types import Scope

__all__ = ["CURRENT", "RequestInfo", "RequestLog", "new_request_id", "route_path"]

# HTTP methods logged by name; anything else is logged as "other".
_METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# What metering may fill in, logged when it did.
_OPTIONAL: Final = ("user", "key_id", "model", "route", "prompt_tokens", "completion_tokens", "refused_by")


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


class RequestLog:
    """The ``request`` line, written once a request is done (``enabled`` False: never)."""

    __slots__ = ("enabled", "log")

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.log = logging.getLogger("sluice.request")

    def wanted(self) -> bool:
        return self.enabled and self.log.isEnabledFor(logging.INFO)

    def write(self, scope: Scope, info: RequestInfo, status: int, elapsed: float) -> None:
        method = scope["method"]
        fields: dict[str, Any] = {
            "event": "request",
            "method": method if method in _METHODS else "other",
            "path": route_path(scope),
            "status": status,
            "latency_ms": round(elapsed * 1000, 3),
        }
        for name in _OPTIONAL:
            value = getattr(info, name)
            if value is not None:
                fields[name] = value
        if info.sealed:
            fields["sealed"] = True
        self.log.info("request", extra={"fields": fields})
