"""The OpenAI-compatible routes: ``/v1/models``, chat, completions, embeddings.

Each request is authenticated, its body read with a bound and checked
against the same route policy the gate enforces (so that mistakes get a
clear 4xx here, before any cluster work), then sent to the gate as a
``call`` with the client's bytes.  The gate checks again: it is the boundary.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Final

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from policy.bodies import RouteTable
from policy.errors import BodyRejected, SluiceError
from policy.grammar import Call

from ..auth.api_keys import ApiKeyStore, Principal
from ..catalog import ClusterSet
from .errors import error_body, error_response, from_error

__all__ = ["OpenAIApi"]

log = logging.getLogger("sluice.api")

_BEARER: Final = "bearer "

_SSE_HEADERS: Final = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class OpenAIApi:
    """The handlers, bound to the appliance's services."""

    def __init__(self, clusters: ClusterSet, keys: ApiKeyStore, routes: RouteTable, request_timeout: float) -> None:
        self._clusters = clusters
        self._keys = keys
        self._routes = routes
        self._timeout = request_timeout

    def routes(self) -> list[Route]:
        return [
            Route("/v1/models", self.list_models, methods=["GET"]),
            Route("/v1/chat/completions", self._handler("chat"), methods=["POST"]),
            Route("/v1/completions", self._handler("completions"), methods=["POST"]),
            Route("/v1/embeddings", self._handler("embeddings"), methods=["POST"]),
        ]

    def _principal(self, request: Request) -> Principal | None:
        header = request.headers.get("authorization", "")
        if header[:7].lower() != _BEARER:
            return None
        return self._keys.verify(header[7:].strip())

    async def list_models(self, request: Request) -> Response:
        if self._principal(request) is None:
            return error_response(401, "invalid_api_key")
        try:
            models = await self._clusters.models()
        except SluiceError as exc:
            return from_error(exc)
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "sluice"} for m in sorted(models)]
        return Response(orjson.dumps({"object": "list", "data": data}), media_type="application/json")

    def _handler(self, route_id: str):  # type: ignore[no-untyped-def]
        route = self._routes.get(route_id)

        async def handle(request: Request) -> Response:
            if self._principal(request) is None:
                return error_response(401, "invalid_api_key")
            try:
                body = await _read_body(request, route.max_body_bytes)
                checked = route.check(body)
                models = await self._clusters.models()
                info = models.get(checked.model)
                if info is None:
                    return error_response(404, "model_not_found")
                if route_id not in info.routes:
                    return error_response(404, "route_not_served")
                async with asyncio.timeout(self._timeout):
                    transport = self._clusters.transport(info.cluster)
                    reply = await transport.request(Call(route_id, checked.model, len(body)), body)
                    if reply.media == "sse":
                        return StreamingResponse(
                            _relay(reply), status_code=reply.status, media_type="text/event-stream", headers=_SSE_HEADERS
                        )
                    try:
                        data = await reply.read()
                    finally:
                        reply.cancel()
            except SluiceError as exc:
                return from_error(exc)
            except TimeoutError:
                return error_response(504, "backend_timeout")
            return Response(data, status_code=reply.status, media_type="application/json")

        return handle


async def _read_body(request: Request, limit: int) -> bytes:
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > limit):
        raise BodyRejected("body_too_large", 413)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyRejected("body_too_large", 413)
        chunks.append(chunk)
    return b"".join(chunks)


async def _relay(reply: object) -> AsyncIterator[bytes]:
    """The gate's SSE bytes as they arrive; an error mid-stream becomes an error event."""
    try:
        async for piece in reply:  # type: ignore[attr-defined]
            yield piece
    except SluiceError as exc:
        yield b"data: " + error_body(exc.status, exc.code) + b"\n\n"
    finally:
        reply.cancel()  # type: ignore[attr-defined]
