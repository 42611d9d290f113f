"""Serving one stream command: check the body, pick an instance, forward, stream back.

The body is parsed once and checked against its route's policy; what goes to
the backend is the gate's own re-serialization.  Backend hosts, ports and
tokens never leave this module: the appliance sees a status, a media type,
the response bytes and the usage numbers.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from typing import TYPE_CHECKING, Final

from policy.bodies import RESPONSES, CheckedBody, RouteTable
from policy.errors import (
    BackendFailed,
    BackendTimeout,
    BodyRejected,
    InternalError,
    LocalError,
    ModelNotFound,
    NoBackend,
    PeerError,
    SealedUnavailable,
    SluiceError,
)
from policy.grammar import Call, Keys, Models, Ping, StreamCommand

from ..backend_client import BackendPool, BackendResponse
from ..config import ClusterConfig
from ..routing import Instance, Router
from ..scheduler.availability import ModelStatus, model_statuses
from ..scheduler.census import CENSUS_TTL, ModelCensus, model_census
from ..scheduler.trigger import kick_pass
from .bounds import MAX_RESPONSE_BYTES, HeldBytes, Holder, ResponseTooLarge
from .provenance import Provenance
from .responses import ResponsesUsageFilter
from .sinks import Sink
from .usage import SseUsageFilter, Usage, usage_from_json, with_audio

if TYPE_CHECKING:  # the crypto modules load on the first sealed request, not before
    from sluice_sdk.bhttp import Fields
    from sluice_sdk.keys import KeyRing

    from .sealed import SharedReplayGuard

__all__ = ["Forwarder", "MAX_RESPONSE_BYTES"]

log = logging.getLogger("sluice.gate")

# Backend statuses passed to the client as they are: the request was served,
# or the backend refused the (already checked) request for a reason the client
# can act on, such as a prompt longer than the model's context.  Any other
# status is the backend's or our own fault and becomes a 502.
_PASSED_STATUSES: Final = frozenset({200, 400, 413, 422})

# How often a gate looks for a rotated key ring: a new key is in use within a second.
RING_RELOAD_INTERVAL: Final = 1.0

# While a request waits for an instance to start, a stream gets an SSE comment
# this often (seconds) with the model's state and estimated wait
# (": status=starting estimated_wait=42"), so that proxies on the way do not
# time it out and the client sees progress, and the scheduler is kicked again
# (it runs a pass only when one is due).
HOLD_KEEPALIVE: Final = 5.0
KEEPALIVE_EVENT: Final = b": keepalive\n\n"

# Instances tried for one request whose connection was refused (the instance
# ended since the table was written): the request never reached them.
MAX_REFUSED: Final = 3


class _HeadSent:
    """A sink whose HEAD went out early (``200 sse``, while the request was held)."""

    __slots__ = ("_sink",)

    def __init__(self, sink: Sink) -> None:
        self._sink = sink

    def head(self, status: int, media: str) -> None:
        return None

    async def body(self, data: bytes) -> None:
        await self._sink.body(data)

    def progress(self, usage: Usage) -> None:
        self._sink.progress(usage)

    def end(self, usage: Usage | None) -> None:
        self._sink.end(usage)

    def error(self, error: SluiceError) -> None:
        self._sink.error(error)


def _inner_content_type(headers: Fields) -> str:
    """The sealed inner request's Content-Type (its form's boundary); "" when absent."""
    for name, value in headers:
        if name.lower() == b"content-type":
            return value.decode("latin-1")
    return ""


def _not_delivered(exc: BackendFailed) -> bool:
    """The connection could not be made: the backend saw nothing of the request."""
    return isinstance(exc.__cause__, OSError)


class Forwarder:
    """Everything one gate process needs to serve commands; one per process."""

    def __init__(self, config: ClusterConfig, routes: RouteTable, router: Router, pool: BackendPool) -> None:
        self._config = config
        self._routes = routes
        self._router = router
        self._pool = pool
        self._timeout = config.gate.request_timeout
        self._ring: KeyRing | None = None
        self._ring_stamp: object = None
        self._ring_checked = float("-inf")
        self._ring_expiry = float("inf")  # when a retired key's window ends (wall clock)
        self._replay: SharedReplayGuard | None = None
        self._provenance = Provenance(config.model_revisions(), pool)
        self._census_cache: tuple[dict[str, ModelCensus], dict[str, ModelStatus]] | None = None
        self._census_at = float("-inf")
        self._census_counts: dict[str, int] = {}
        self._held = HeldBytes()  # whole responses held by all streams of this process

    async def aclose(self) -> None:
        await self._pool.aclose()

    def max_body(self, call: Call) -> int:
        """The most body bytes ``call``'s route accepts (sealed: with the sealing overhead)."""
        return self._routes.get(call.route).max_request_bytes(sealed=call.seal is not None)

    async def serve(self, command: StreamCommand, body: bytes, sink: Sink) -> None:
        """Answer ``command``; every failure becomes an ERROR on this stream only."""
        try:
            if isinstance(command, Call) and command.seal is not None:
                await self._sealed(command, body, sink)
            elif isinstance(command, Call):
                await self._call(command, body, sink)
            elif isinstance(command, Models):
                await self._json(sink, self._models())
            elif isinstance(command, Ping):
                await self._json(sink, self._ping())
            elif isinstance(command, Keys):
                await self._json(sink, {"keys": base64.b64encode(self._sealed_keys().encoded_configs()).decode()})
        except InternalError:  # its message is for the operator: logged; the client gets `internal`
            log.exception("internal error while serving a stream")
            sink.error(LocalError())
        except SluiceError as exc:
            sink.error(exc)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("internal error while serving a stream")  # no request data in the record
            sink.error(LocalError())

    def _sealed_keys(self) -> KeyRing:
        """The key ring for sealed requests: loaded on first use (exec-mode gates that
        serve clear requests never import the crypto code), and again after a
        rotation (``ring.json`` changed; looked at no more than once a second) and
        when a retired key's window ended (its file is then deleted)."""
        from ..sealed_keys import keys_dir, load_ring, purge_expired, ring_stamp
        from .sealed import SharedReplayGuard

        if self._config.path is None:
            raise SealedUnavailable()
        now = time.monotonic()
        if self._ring is None or now - self._ring_checked >= RING_RELOAD_INTERVAL:
            self._ring_checked = now
            stamp = ring_stamp(self._config.path)
            if stamp != self._ring_stamp or time.time() >= self._ring_expiry:
                self._ring = load_ring(self._config.path)
                self._ring_stamp = stamp
                self._ring_expiry = purge_expired(self._config.path)
            if self._replay is None:
                self._replay = SharedReplayGuard(keys_dir(self._config.path) / "replay.sqlite")
        if self._ring is None:
            raise SealedUnavailable()
        return self._ring

    async def _sealed(self, call: Call, body: bytes, sink: Sink) -> None:
        """Open a sealed request, check it like a clear one, serve it, seal the answer."""
        from .sealed import SealingSink, open_sealed, sealed_error

        ring = self._sealed_keys()
        if self._replay is None:  # never: _sealed_keys made it
            raise SealedUnavailable()
        route = self._routes.get(call.route)
        opened = open_sealed(ring, self._replay, body, call.seal == "chunked", route.path)
        inner = opened.request.content
        try:
            if route.form is not None:
                checked = route.check_form(inner, content_type=_inner_content_type(opened.request.headers))
            else:
                checked = route.check(inner)
        except BodyRejected as exc:
            # About the sealed content: answered sealed, so the appliance learns nothing of it.
            sink.head(200, "ohttp-chunked" if call.seal == "chunked" else "ohttp")
            # A sealed request comes in a session, so its sink is a FrameSink (which Sink does not promise).
            sink.body_nowait(sealed_error(opened.sealer, exc))  # type: ignore[attr-defined]
            sink.end(None)
            return
        if checked.model != call.model:
            raise BodyRejected("model_mismatch", 400)
        holder = Holder(self._held)  # an answer sealed whole is held until it is complete
        try:
            sealing = SealingSink(sink, opened.sealer, holder)  # type: ignore[arg-type]  # a FrameSink, as above
            await self._call(Call(call.route, call.model, len(inner)), inner, sealing)
        finally:
            holder.release()

    async def _json(self, sink: Sink, document: object) -> None:
        sink.head(200, "json")
        await sink.body(json.dumps(document, separators=(",", ":")).encode())
        sink.end(None)

    def _models(self) -> dict[str, object]:
        """Every configured model, its readiness and routes, and the counts a dashboard shows
        (instances ready and starting, requests held and in flight over all gates): numbers only."""
        ready = self._router.ready()
        census, statuses = self._census(sorted(ready))
        data = []
        for model in sorted(ready):
            entry: dict[str, object] = {
                "id": model,
                "ready": ready[model],
                "routes": list(self._router.routes[model]),
                **census[model].to_json(),
                **statuses[model].to_json(),
                **self._provenance.listing(model),
            }
            # Ready instances are the ones this gate routes to (static backends too, not only scheduled jobs).
            # to_json() is a JSON object (values typed `object`); its "instances" is a dict.
            entry["instances"] = {
                **census[model].to_json()["instances"],  # type: ignore[dict-item]
                "ready": len(self._router.instances(model)),
            }
            data.append(entry)
        return {"object": "list", "data": data}

    def _census(self, models: list[str]) -> tuple[dict[str, ModelCensus], dict[str, ModelStatus]]:
        """The counts and statuses of ``models``, read from the scheduler's files at most every CENSUS_TTL."""
        now = time.monotonic()
        counts = {model: len(self._router.instances(model)) for model in models}
        # Read again when the routing table changed (an instance became ready or went): the
        # status follows what this gate routes to at once, never a stale "starting".
        if self._census_cache is None or now - self._census_at >= CENSUS_TTL or counts != self._census_counts:
            statuses = model_statuses(self._config, counts)
            unknown = ModelStatus("unavailable", 0, None)  # configured, yet neither static nor scheduled
            self._census_cache = (model_census(self._config, models), {m: statuses.get(m, unknown) for m in models})
            self._census_at, self._census_counts = now, counts
        return self._census_cache

    def _ping(self) -> dict[str, object]:
        kick_pass(self._config)  # starts a scheduler pass if one is due; returns at once
        return {"ok": True, "in_flight": self._router.in_flight(), "backend": self._pool.stats()}

    async def _acquire(self, model: str, stream: bool, sink: Sink) -> tuple[Instance, Sink]:
        """An instance of ``model``; held while one starts (a stream gets its HEAD and
        keepalive comments meanwhile); :class:`NoBackend` past the hold bounds."""
        instance = self._router.try_acquire(model)
        if instance is not None:
            return instance, sink
        if not self._router.can_hold(model):
            raise NoBackend()
        kick_pass(self._config)
        if stream and not isinstance(sink, _HeadSent):
            sink.head(200, "sse")
            sink = _HeadSent(sink)
        if stream:
            await sink.body(self._progress(model))  # at once: the client learns the state and the wait
        ticker = asyncio.create_task(self._while_held(model, sink if stream else None))
        try:
            instance = await self._router.wait_acquire(model)
        finally:
            ticker.cancel()
            await asyncio.gather(ticker, return_exceptions=True)
        return instance, sink

    def _progress(self, model: str) -> bytes:
        """An SSE comment with the held model's state and estimated wait (no client data in it)."""
        try:
            status = model_statuses(self._config, {model: len(self._router.instances(model))}).get(model)
        except (OSError, ValueError):
            status = None
        if status is None:
            return KEEPALIVE_EVENT
        wait = "" if status.estimated_wait is None else f" estimated_wait={status.estimated_wait}"
        return f": status={status.status}{wait}\n\n".encode("ascii")

    async def _while_held(self, model: str, sink: Sink | None) -> None:
        while True:
            await asyncio.sleep(HOLD_KEEPALIVE)
            kick_pass(self._config)
            if sink is not None:
                await sink.body(self._progress(model))

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
        instance: Instance | None  # None while none is held (nothing to release)
        instance, sink = await self._acquire(call.model, checked.stream, sink)
        headed = isinstance(sink, _HeadSent)
        refused = 0
        try:
            async with asyncio.timeout(self._timeout):
                while True:
                    try:
                        response = await self._pool.request(
                            instance.host,
                            instance.port,
                            instance.token,
                            route.method,
                            route.path,
                            checked.body,
                            self._timeout,
                            checked.content_type,
                            pin=instance.pin,
                        )
                        break
                    except BackendFailed as exc:
                        refused += 1
                        if not _not_delivered(exc) or refused >= MAX_REFUSED or not self._router.scheduled(call.model):
                            raise
                        # the instance is gone (ended since the table was written): try another
                        self._router.quarantine(instance)
                        self._router.release(instance)
                        instance = None
                        instance, sink = await self._acquire(call.model, checked.stream, sink)
                        headed = isinstance(sink, _HeadSent)
                try:
                    if response.status not in _PASSED_STATUSES:
                        raise BackendFailed()
                    produced_by = await self._provenance.of(call.model, instance)
                    if headed and not response.content_type.startswith("text/event-stream"):
                        # the HEAD already said 200 sse: the backend's refusal can only be an error
                        raise PeerError("backend_rejected", response.status) if response.status != 200 else BackendFailed()
                    if response.content_type.startswith("text/event-stream"):
                        usage_filter = (
                            ResponsesUsageFilter()
                            if route.dialect == RESPONSES
                            else SseUsageFilter(checked.include_usage, checked.continuous_usage)
                        )
                        await self._stream(response, sink, usage_filter, checked, produced_by)
                    else:
                        holder = Holder(self._held)
                        try:
                            data = await _read_whole(response, holder)
                            sink.head(response.status, "text" if response.content_type.startswith("text/plain") else "json")
                            if data:
                                await sink.body(data)
                            usage = with_audio(usage_from_json(data), checked) if response.status == 200 else None
                            # Usage is token counts; the END frame also names who produced them (model, instance: strings).
                            sink.end({**usage, **produced_by} if usage is not None else None)  # type: ignore[dict-item]
                        finally:
                            holder.release()
                finally:
                    response.close()
        except TimeoutError:
            raise BackendTimeout() from None
        finally:
            if instance is not None:
                self._router.release(instance)

    async def _stream(
        self,
        response: BackendResponse,
        sink: Sink,
        usage_filter: SseUsageFilter,
        checked: CheckedBody,
        produced_by: dict[str, str],
    ) -> None:
        sink.head(response.status, "sse")
        async for piece in response.iter_body():
            events = usage_filter.feed(piece)
            if usage_filter.usage is not None:
                sink.progress(usage_filter.usage)
            if events:
                await sink.body(events)
        rest = usage_filter.flush()
        if rest:
            await sink.body(rest)
        usage = with_audio(usage_filter.usage, checked)
        # Usage is token counts; the END frame also names who produced them (model, instance: strings).
        sink.end({**usage, **produced_by} if usage is not None else None)  # type: ignore[dict-item]


async def _read_whole(response: BackendResponse, holder: Holder) -> bytes:
    """A whole response body, counted in ``holder``: :class:`ResponseTooLarge` past
    MAX_RESPONSE_BYTES, :class:`~policy.errors.Overloaded` past the process's bound."""
    declared = response.head.content_length
    if declared is not None and declared > MAX_RESPONSE_BYTES:
        raise ResponseTooLarge()
    pieces: list[bytes] = []
    async for piece in response.iter_body():
        holder.take(len(piece))
        pieces.append(piece)
    return b"".join(pieces)
