"""The HTTP metrics (pure ASGI): requests by route and status, and their latency by route.

The route is the matched route's template, or ``other``: a path that matched
nothing is the client's text and never becomes a label.
"""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..metrics import Metrics
from .request_log import route_path

__all__ = ["HttpMetricsMiddleware"]


class HttpMetricsMiddleware:
    """Counts and times every HTTP request in ``metrics``."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 0

        async def send_noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_noting_status)
        except BaseException:
            status = status or 500
            raise
        finally:
            path = route_path(scope)
            self.metrics.http_requests.labels(path, str(status)).inc()
            self.metrics.http_duration.labels(path).observe(time.perf_counter() - started)
