"""The OpenAI-compatible routes: ``/v1/models``, chat, completions, embeddings, responses,
rerank, score, audio transcriptions and translations (multipart forms).

Each request is authenticated, its body read with a bound and checked
against the same route policy the gate enforces (so that mistakes get a
clear 4xx here, before any cluster work), its model checked against what
the caller may use, admitted by metering (quotas), then sent to the gate as a
``call`` with the client's bytes.  The gate checks again: it is the boundary.
The ticket is settled with the gate's usage numbers when the answer is over.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from typing import Final

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from policy.bodies import RouteTable
from policy.errors import BodyRejected, Disallowed, SluiceError
from policy.grammar import Call

from ..auth.aliases import NO_NAMES
from ..auth.base import AccessPolicy, Authenticator
from ..catalog import ClusterSet, ModelInfo
from ..metering import Metering, Outcome, Ticket
from ..quotas.reservation import OutputCeilings, reserve
from ..transport.replies import GateReply
from .errors import error_body, error_response, from_error
from .sealed_keys import KEYS_TTL, AddressLimiter, KeyConfigCache, fetch_configs
from .stateless import produced_by_headers, stateless
from .streamed import StreamedAnswer

__all__ = ["OpenAIApi"]

log = logging.getLogger("sluice.api")

_SSE_HEADERS: Final = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}

# The gate's media (policy/FRAMES.md) as HTTP content types.
_MEDIA: Final = {
    "json": "application/json",
    "text": "text/plain; charset=utf-8",
    "sse": "text/event-stream",
    "ohttp": "message/ohttp-res",
    "ohttp-chunked": "message/ohttp-chunked-res",
}
_STREAMED: Final = frozenset({"sse", "ohttp-chunked"})

# Sealed requests: RFC 9458 and chunked-OHTTP request media types -> seal kinds.
_SEAL_KINDS: Final = {"message/ohttp-req": "ohttp", "message/ohttp-chunked-req": "chunked"}
_OHTTP_KEYS: Final = "application/ohttp-keys"


class OpenAIApi:
    """The handlers, bound to the appliance's services."""

    def __init__(
        self,
        clusters: ClusterSet,
        auth: Authenticator,
        access: AccessPolicy,
        metering: Metering,
        routes: RouteTable,
        request_timeout: float,
        ceilings: OutputCeilings | None = None,
        sealed_keys_ttl: float = KEYS_TTL,
    ) -> None:
        self._clusters = clusters
        self._auth = auth
        self._access = access
        self._metering = metering
        self._routes = routes
        self._timeout = request_timeout
        self._ceilings = ceilings or OutputCeilings()
        self._keys = KeyConfigCache(lambda: fetch_configs(clusters), sealed_keys_ttl)
        self._key_limiter = AddressLimiter()

    def routes(self) -> list[Route]:
        return [
            Route("/v1/models", self.list_models, methods=["GET"]),
            Route("/v1/chat/completions", self._handler("chat"), methods=["POST"]),
            Route("/v1/completions", self._handler("completions"), methods=["POST"]),
            Route("/v1/embeddings", self._handler("embeddings"), methods=["POST"]),
            Route("/v1/responses", stateless(self._handler("responses")), methods=["POST"]),
            Route("/v1/rerank", self._handler("rerank"), methods=["POST"]),
            Route("/v1/score", self._handler("score"), methods=["POST"]),
            Route("/v1/audio/transcriptions", self._handler("transcriptions"), methods=["POST"]),
            Route("/v1/audio/translations", self._handler("translations"), methods=["POST"]),
            Route("/v1/sealed/keys", self.sealed_keys, methods=["GET"]),
            *(
                Route(f"/v1/sealed{route.path.removeprefix('/v1')}", self._sealed_handler(route_id), methods=["POST"])
                for route_id, route in self._routes.routes.items()
            ),
        ]

    async def list_models(self, request: Request) -> Response:
        principal = await self._auth.authenticate(request)
        if principal is None:
            return error_response(401, "invalid_api_key")
        try:
            models = await self._clusters.models()
        except SluiceError as exc:
            return from_error(exc)
        visible = self._access.visible(principal, models)
        data = [model_entry(models[m]) for m in visible]
        names = getattr(self._access, "names", NO_NAMES)
        data += [  # aliases of the models the caller may use, naming their target
            {**model_entry(models[target]), "id": alias, "alias_of": target}
            for alias, target in sorted(names.aliases.items())
            if target in visible
        ]
        return Response(orjson.dumps({"object": "list", "data": data}), media_type="application/json")

    def _handler(self, route_id: str) -> Callable[[Request], Awaitable[Response]]:
        route = self._routes.get(route_id)

        async def handle(request: Request) -> Response:
            started = time.monotonic()
            principal = await self._auth.authenticate(request)
            if principal is None:
                return error_response(401, "invalid_api_key")
            try:
                body = await read_body(request, route.max_request_bytes(sealed=False))
                content_type = request.headers.get("content-type", "")
                checked = route.check_form(body, content_type=content_type) if route.form is not None else route.check(body)
                names = getattr(self._access, "names", NO_NAMES)
                model = names.resolve(checked.model)  # an alias: everything below sees the real model
                if model != checked.model:
                    body = route.with_model(body, model, content_type=content_type)
                    checked = route.check(body)  # the body the gate will see (a form names its own boundary)
                info = (await self._clusters.models()).get(model)
                if info is None or not self._access.allows(principal, model):
                    return error_response(404, "model_not_found")
                if route_id not in info.routes:
                    return error_response(404, "route_not_served")
                reservation = reserve(route, checked, body, self._ceilings)
                body = reservation.body
                ticket = await self._metering.admit(principal, route_id, model, reservation.tokens, False)
            except SluiceError as exc:
                return from_error(exc)
            response = await self._forward(
                ticket, info.cluster, Call(route_id, model, len(body)), body, started, info.produced_by
            )
            if response.status_code == 503 and info.estimated_wait is not None:
                response.headers["Retry-After"] = str(max(1, info.estimated_wait))  # the model is starting
            response.headers.update(names.headers(model))
            return response

        return handle

    async def sealed_keys(self, request: Request) -> Response:
        """The gates' key configurations for sealed requests (``application/ohttp-keys``).

        Public, like any OHTTP key configuration: clients pin it by fingerprint.  Served from a
        cache (:mod:`.sealed_keys`), and limited per client address."""
        wait = self._key_limiter.hit(request.client.host if request.client else "")
        if wait is not None:
            return error_response(429, "rate_limited", {"Retry-After": str(max(1, int(wait + 0.999)))})
        configs = await self._keys.get()
        if not configs:
            return error_response(503, "sealed_unavailable", {"Retry-After": "30"})
        return Response(configs, media_type=_OHTTP_KEYS, headers={"Cache-Control": f"max-age={int(self._keys.ttl)}"})

    def _sealed_handler(self, route_id: str) -> Callable[[Request], Awaitable[Response]]:
        route = self._routes.get(route_id)
        # The same limit the gate applies to the sealed line (policy/bodies.py).
        limit = route.max_request_bytes(sealed=True)

        async def handle(request: Request) -> Response:
            started = time.monotonic()
            principal = await self._auth.authenticate(request)
            if principal is None:
                return error_response(401, "invalid_api_key")
            seal = _SEAL_KINDS.get(request.headers.get("content-type", "").split(";")[0].strip().lower())
            if seal is None:
                return error_response(415, "unsupported_media_type")
            model = request.headers.get("sluice-model", "")
            try:
                body = await read_body(request, limit)
                call = Call(route_id, model, len(body), seal)  # the grammar's rules for the model name
                info = (await self._clusters.models()).get(model)
                if info is None or not self._access.allows(principal, model):
                    return error_response(404, "model_not_found")
                if route_id not in info.routes:
                    return error_response(404, "route_not_served")
                # The token budget cannot see max_tokens inside: metering estimates and reconciles.
                ticket = await self._metering.admit(principal, route_id, model, None, True)
            except Disallowed:
                return error_response(400, "invalid_model_header")
            except SluiceError as exc:
                return from_error(exc)
            response = await self._forward(ticket, info.cluster, call, body, started, info.produced_by)
            response.headers.update(getattr(self._access, "names", NO_NAMES).headers(model))
            return response

        return handle

    async def _forward(
        self,
        ticket: Ticket,
        cluster: str,
        call: Call,
        body: bytes,
        started: float,
        produced: tuple[tuple[str, str], ...] = (),
    ) -> Response:
        """Send ``call`` to its cluster; settle ``ticket`` exactly once, whatever happens.

        ``produced`` is what the model listing says produced the model's answers: the
        headers of a stream (a plain answer names its own, from the gate's END frame)."""
        reply: GateReply | None = None
        try:
            async with asyncio.timeout(self._timeout):
                reply = await self._clusters.transport(cluster).request(call, body)
                if reply.media in _STREAMED:
                    response = StreamedAnswer(
                        _relay(reply, ticket, started),
                        reply.status,
                        _MEDIA[reply.media],
                        {**_SSE_HEADERS, **ticket.headers, **produced_by_headers(dict(produced))},
                        partial(_unread, reply, ticket, started),
                    )
                    reply = None  # _relay settles from here on
                    return response
                try:
                    data = await reply.read()
                finally:
                    reply.cancel()
        except SluiceError as exc:
            if exc.code == "sealed_invalid":
                self._keys.stale()  # the client's key may be one the gate has rotated away
            await ticket.settle(Outcome(exc.status, latency=time.monotonic() - started))
            return from_error(exc, ticket.headers)
        except TimeoutError:
            if reply is not None:
                reply.cancel()
            await ticket.settle(Outcome(504, latency=time.monotonic() - started))
            return error_response(504, "backend_timeout", ticket.headers)
        except BaseException:
            await asyncio.shield(ticket.settle(Outcome(499, latency=time.monotonic() - started)))
            raise
        await ticket.settle(_outcome(reply, started, sealed=call.seal is not None))
        headers = {**ticket.headers, **produced_by_headers(reply.produced_by or dict(produced))}
        return Response(data, status_code=reply.status, media_type=_MEDIA[reply.media], headers=headers)


def model_entry(info: ModelInfo) -> dict[str, object]:
    """One ``/v1/models`` entry: OpenAI's shape plus the model's state (extra fields are allowed),
    with the estimated wait in seconds while it is not ready."""
    entry: dict[str, object] = {
        "id": info.id,
        "object": "model",
        "created": 0,
        "owned_by": "sluice",
        "status": info.status,
        "routes": sorted(info.routes),
        "ready_instances": info.instances_ready,
        "starting_instances": info.instances_starting,
    }
    if info.estimated_wait is not None and info.status != "ready":
        entry["estimated_wait"] = info.estimated_wait
    return entry


def _outcome(
    reply: GateReply, started: float, first_token: float | None = None, status: int | None = None, sealed: bool = False
) -> Outcome:
    usage = reply.usage or {}
    return Outcome(
        reply.status if status is None else status,
        usage.get("prompt_tokens", 0),
        usage.get("completion_tokens", 0),
        time.monotonic() - started,
        first_token,
        sealed,
        usage.get("audio_ms", 0),
        reply.produced_by.get("revision"),
        reply.produced_by.get("backend_version"),
    )


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is over ``limit`` bytes."""
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


def sse_has_content(piece: bytes) -> bool:
    """Whether ``piece`` of an SSE stream holds more than comments (a held stream's keepalives)."""
    return any(line and not line.startswith(b":") for line in piece.replace(b"\r", b"\n").split(b"\n"))


async def _relay(reply: GateReply, ticket: Ticket, started: float) -> AsyncIterator[bytes]:
    """The gate's SSE bytes as they arrive; an error mid-stream becomes an error event.

    The ticket is settled when the stream ends, fails, or the client goes away
    (then with status 499 and the usage so far that the gate reports in its
    answer to the CANCEL; a timeout's ERROR comes with it too).
    """
    first: float | None = None
    status = reply.status
    try:
        async for piece in reply.chunks():
            if first is None and (reply.media != "sse" or sse_has_content(piece)):
                first = time.monotonic() - started
            yield piece
    except SluiceError as exc:
        status = exc.status
        if reply.media == "sse":
            yield b"data: " + error_body(exc.status, exc.code) + b"\n\n"
        # A sealed stream just stops: its missing final chunk tells the client.
    except BaseException:
        status = 499
        raise
    finally:
        reply.cancel()
        await asyncio.shield(_settle_cut(reply, ticket, started, first, status))


async def _unread(reply: GateReply, ticket: Ticket, started: float) -> None:
    """The client went away before the stream's first piece was asked for: stop the gate, settle as 499."""
    reply.cancel()
    await _settle_cut(reply, ticket, started, None, 499)


async def _settle_cut(reply: GateReply, ticket: Ticket, started: float, first: float | None, status: int) -> None:
    """Settle a stream once the gate has said how much it delivered (bounded wait after a CANCEL)."""
    await reply.wait_last()
    await ticket.settle(_outcome(reply, started, first, status, reply.media != "sse"))
