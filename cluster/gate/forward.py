"""Serving one stream command: check the body, pick an instance, forward, stream back.

The body is parsed once and checked against its route's policy; what goes to
the backend is the gate's own re-serialization.  Backend hosts, ports and
tokens never leave this module: the appliance sees a status, a media type,
the response bytes and the usage numbers.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Final, Protocol

from policy.bodies import RouteTable
from policy.errors import BackendFailed, BackendTimeout, BodyRejected, ModelNotFound, SluiceError
from policy.grammar import Call, Models, Ping, StreamCommand

from ..backend_client import BackendPool
from ..config import ClusterConfig
from ..routing import Router
from .usage import SseUsageFilter, Usage, usage_from_json

__all__ = ["Sink", "Forwarder", "MAX_RESPONSE_BYTES"]

log = logging.getLogger("sluice.gate")

# A whole (non-streamed) response held in memory: embeddings of a large batch
# are the largest legitimate ones.
MAX_RESPONSE_BYTES: Final = 64 * 1024 * 1024

# Backend statuses passed to the client as they are: the request was served,
# or the backend refused the (already checked) request for a reason the client
# can act on, such as a prompt longer than the model's context.  Any other
# status is the backend's or our own fault and becomes a 502.
_PASSED_STATUSES: Final = frozenset({200, 400, 413, 422})


class Sink(Protocol):
    """Where the answer to one stream goes (frames in a mux or exec session)."""

    def head(self, status: int, media: str) -> None: ...
    async def body(self, data: bytes) -> None: ...
    def end(self, usage: Usage | None) -> None: ...
    def error(self, error: SluiceError) -> None: ...


class Forwarder:
    """Everything one gate process needs to serve commands; one per process."""

    def __init__(self, config: ClusterConfig, routes: RouteTable, router: Router, pool: BackendPool) -> None:
        self._config = config
        self._routes = routes
        self._router = router
        self._pool = pool
        self._timeout = config.gate.request_timeout

    async def aclose(self) -> None:
        await self._pool.aclose()

    def max_body(self, call: Call) -> int:
        """The most body bytes ``call``'s route accepts."""
        return self._routes.get(call.route).max_body_bytes

    async def serve(self, command: StreamCommand, body: bytes, sink: Sink) -> None:
        """Answer ``command``; every failure becomes an ERROR on this stream only."""
        try:
            if isinstance(command, Call):
                await self._call(command, body, sink)
            elif isinstance(command, Models):
                await self._json(sink, self._models())
            elif isinstance(command, Ping):
                await self._json(sink, self._ping())
        except SluiceError as exc:
            sink.error(exc)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("internal error while serving a stream")  # no request data in the record
            sink.error(SluiceError())

    async def _json(self, sink: Sink, document: object) -> None:
        sink.head(200, "json")
        await sink.body(json.dumps(document, separators=(",", ":")).encode())
        sink.end(None)

    def _models(self) -> dict[str, object]:
        ready = self._router.ready()
        return {
            "object": "list",
            "data": [
                {"id": model, "ready": ready[model], "routes": list(self._router.routes[model])}
                for model in sorted(ready)
            ],
        }

    def _ping(self) -> dict[str, object]:
        return {"ok": True, "in_flight": self._router.in_flight(), "backend": self._pool.stats()}

    async def _call(self, call: Call, body: bytes, sink: Sink) -> None:
        route = self._routes.get(call.route)
        checked = route.check(body, force_usage=True)
        if checked.model != call.model:
            raise BodyRejected("model_mismatch", 400)
        served = self._router.routes.get(call.model)
        if served is None:
            raise ModelNotFound()
        if call.route not in served:
            raise ModelNotFound("route_not_served")
        instance = self._router.acquire(call.model)
        try:
            async with asyncio.timeout(self._timeout):
                response = await self._pool.request(
                    instance.host, instance.port, instance.token, route.method, route.path, checked.body, self._timeout
                )
                try:
                    if response.status not in _PASSED_STATUSES:
                        raise BackendFailed()
                    if response.content_type.startswith("text/event-stream"):
                        await self._stream(response, sink, checked.include_usage)
                    else:
                        data = await response.read(MAX_RESPONSE_BYTES)
                        sink.head(response.status, "json")
                        if data:
                            await sink.body(data)
                        sink.end(usage_from_json(data) if response.status == 200 else None)
                finally:
                    response.close()
        except TimeoutError:
            raise BackendTimeout() from None
        finally:
            self._router.release(instance)

    async def _stream(self, response: object, sink: Sink, client_asked_for_usage: bool) -> None:
        usage_filter = SseUsageFilter(client_asked_for_usage)
        sink.head(response.status, "sse")  # type: ignore[attr-defined]
        async for piece in response.iter_body():  # type: ignore[attr-defined]
            events = usage_filter.feed(piece)
            if events:
                await sink.body(events)
        rest = usage_filter.flush()
        if rest:
            await sink.body(rest)
        sink.end(usage_filter.usage)
