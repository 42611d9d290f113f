"""The one ASGI layer in front of every route: each request's checks, deadline, headers and records.

For every HTTP request, in one pass and with one wrapped ``send`` and ``receive``:

* an id (:mod:`.request_log`), returned as ``x-request-id`` and set in
  :data:`~.request_log.CURRENT` while the request runs;
* a ``POST /v1/...`` that is not JSON (or sealed, or a form with an API key)
  or comes from a foreign origin is refused before any route sees it
  (:mod:`.api_guard`);
* the body must all arrive within ``body_timeout`` seconds, else 408; a body
  cut off is the client's fault, 400 (:mod:`.body_deadline`);
* every API answer says ``Cache-Control: no-store``
  (:func:`appliance.api.no_store.no_store`; the refusals above carry only
  their own headers);
* at the end, the request is counted and timed in the metrics (when there
  are metrics), by route: the matched route's template, or ``other`` (a path
  that matched nothing is the client's text and never becomes a label), and
  written as one ``request`` log line (when wanted).

Any other exception goes on up (Starlette answers 500), counted and logged as 500.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from prometheus_client import Counter, Histogram
from starlette.datastructures import MutableHeaders
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from policy.errors import PeerError

from ..api.errors import from_error
from ..api.no_store import no_store
from ..metrics import Metrics
from .api_guard import ApiGuard, Refused
from .body_deadline import DEFAULT_BODY_TIMEOUT, BodyIncomplete, BodyTimeout, log_timeout, receive_within
from .request_log import CURRENT, RequestInfo, RequestLog, new_request_id, route_path

__all__ = ["FrontMiddleware"]


class FrontMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        metrics: Metrics | None = None,
        access_log: bool = True,
        body_timeout: float = DEFAULT_BODY_TIMEOUT,
        public_url: str | None = None,
        form_paths: Iterable[str] = (),
    ) -> None:
        """``form_paths``: the clear paths of the form routes (``/v1/audio/transcriptions``)."""
        self.app = app
        self.metrics = metrics
        self.request_log = RequestLog(access_log)
        self.body_timeout = body_timeout
        self.guard = ApiGuard(public_url, form_paths)
        self._series: dict[tuple[str, int], tuple[Counter, Histogram]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        info = RequestInfo(new_request_id())
        token = CURRENT.set(info)
        started = time.perf_counter()
        request_id = (b"x-request-id", info.id.encode())
        marked_no_store = no_store(scope["path"])
        status = 0

        async def send_marked(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", ()))
                if marked_no_store:
                    MutableHeaders(raw=headers)["Cache-Control"] = "no-store"
                headers.append(request_id)
                message = {**message, "headers": headers}
            await send(message)

        try:
            self.guard.check(scope)
            await self.app(scope, receive_within(receive, time.monotonic() + self.body_timeout), send_marked)
        except Refused as refused:
            marked_no_store = False
            await _answer(scope, receive, send_marked, refused)
        except BodyTimeout as late:
            log_timeout(scope)
            if not status:
                marked_no_store = False
                await _answer(scope, receive, send_marked, late, close=True)
        except ClientDisconnect:
            if not status:
                marked_no_store = False
                await _answer(scope, receive, send_marked, BodyIncomplete(), close=True)
        except BaseException:
            status = status or 500
            raise
        finally:
            elapsed = time.perf_counter() - started
            if self.metrics is not None:
                self._count(self.metrics, route_path(scope), status, elapsed)
            if self.request_log.wanted():
                self.request_log.write(scope, info, status, elapsed)
            CURRENT.reset(token)

    def _count(self, metrics: Metrics, path: str, status: int, elapsed: float) -> None:
        # The labelled series, looked up once per route and status (both few: templates, and statuses the app sends).
        series = self._series.get((path, status))
        if series is None:
            series = self._series[path, status] = (
                metrics.http_requests.labels(path, str(status)),
                metrics.http_duration.labels(path),
            )
        series[0].inc()
        series[1].observe(elapsed)


async def _answer(scope: Scope, receive: Receive, send: Send, error: PeerError, close: bool = False) -> None:
    """The error document for ``error``; ``close``: and the connection is closed after it."""
    try:
        await from_error(error, {"Connection": "close"} if close else None)(scope, receive, send)
    except OSError:
        pass  # the client is gone already
