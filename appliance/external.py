"""External models: an OpenAI-compatible API elsewhere, whose key the appliance holds.

As the published system's external proxy did, the appliance can pass some
model names to an external provider.  This path never touches the gate or
the cluster, and the gate never reaches it: it has its own routes,
``/external/v1/{models,chat/completions,completions,embeddings}``, and a
name configured here is unknown on ``/v1`` (and the other way round).

Per request, in order: the caller is authenticated like any API request;
the body is read with the route's bound and checked against the same route
policy the gate enforces (``policy/routes.toml``), and re-serialized; the
model must be one of an upstream's, served on this route, and the caller
must be in one of its ``groups`` (and within its key's scope) -- otherwise
404, like an unknown model; the request's worst-case output (the larger of
``max_tokens`` and ``max_completion_tokens``, times ``n`` and the prompts) may
not exceed the upstream's ceiling (``max_tokens`` is set to it when neither is
named); then the upstream's strict limits
(requests per minute per user, requests in flight) and the quota engine
(:class:`~appliance.metering.Metering`) admit it.  The upstream's limits run
on the quota engine's own machinery (``limits``; Redis when ``[quotas]``
stores there), so they hold across appliance replicas, and fail closed
(503) when the store cannot be reached, as the quotas do.  The upstream gets the
checked body and the appliance's key, nothing of the client's headers;
the client gets the upstream's answer body, or a short error code.

```toml
[[external]]
name = "openai"
base_url = "https://api.openai.com/v1"
api_key_file = "/etc/sluice/openai.key"
models = ["gpt-4o-mini"]
groups = ["staff"]
routes = ["chat"]              # of chat, completions, embeddings
requests_per_minute = 10       # per user (across replicas with Redis quotas)
max_concurrent = 4             # across all users (and replicas)
max_tokens = 1024              # ceiling on a request's output: max(max_tokens, max_completion_tokens) x n x prompts
timeout = 120                  # seconds for the whole answer
```
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import httpx2
import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from policy.config import ConfigError, Table, build, config_keys, setting
from policy.errors import BodyRejected, SluiceError
from policy.events import event_line

from .api.errors import error_response, from_error
from .api.openai import read_body
from .auth.base import Principal
from .auth.config import check_url
from .auth.secret import Secret, read_secret_file
from .metering import Outcome, Ticket
from .quotas import Limit, MemoryBackend, Plan, QuotaExceeded, QuotaPolicy, Quotas
from .quotas.policy import subject
from .quotas.reservation import OutputCeilings, reserve

if TYPE_CHECKING:
    from .app import Appliance

__all__ = ["ExternalProxy", "ExternalUpstream", "parse_external"]

log = logging.getLogger("sluice.external")

ROUTE_PATHS: Final = {"chat": "/chat/completions", "completions": "/completions", "embeddings": "/embeddings"}
# An upstream answer larger than this (non-streamed) is refused: no completion is that big.
MAX_ANSWER_BYTES: Final = 32 * 1024 * 1024
_MAX_SSE_EVENT: Final = 1024 * 1024


@dataclass(frozen=True, slots=True)
class ExternalUpstream:
    name: str = setting(max_length=64)
    base_url: str = setting(max_length=1024)
    api_key_file: Path = setting(must_exist=True)
    models: tuple[str, ...] = setting(max_items=256)
    groups: frozenset[str] = frozenset()  # in the file: a list of 1 to 256 group names
    routes: tuple[str, ...] = setting(("chat",), max_items=3)
    requests_per_minute: int = setting(10, low=1, high=10_000)
    max_concurrent: int = setting(4, low=1, high=1024)
    max_tokens: int = setting(1024, low=1, high=1_000_000)
    timeout: float = setting(120.0, low=1, high=3600)


def parse_external(data: Any, base: Path) -> tuple[ExternalUpstream, ...]:
    """The ``[[external]]`` entries; raises ConfigError naming the key."""
    if not isinstance(data, list):
        raise ConfigError("external must be an array of tables ([[external]])", key="external")
    upstreams: list[ExternalUpstream] = []
    seen_models: set[str] = set()
    for index, entry in enumerate(data):
        where = f"external[{index}]"
        table = Table(entry, where, config_keys(ExternalUpstream))
        groups = frozenset(table.strings("groups", max_items=256))
        upstream: ExternalUpstream = build(ExternalUpstream, table, base, groups=groups)
        if not upstream.name.replace("-", "").replace("_", "").isalnum():
            raise table.error("name", "must be letters, digits, '-' and '_'")
        base_url = check_url(upstream.base_url, f"{where}.base_url").rstrip("/")
        taken = seen_models.intersection(upstream.models)
        if taken:
            raise table.error("models", f": {min(taken)!r} is already served by another [[external]]")
        seen_models.update(upstream.models)
        if not set(upstream.routes) <= set(ROUTE_PATHS):
            raise table.error("routes", f"must be some of {', '.join(ROUTE_PATHS)}")
        try:
            read_secret_file(upstream.api_key_file, f"{where}.api_key_file")
        except ValueError as exc:
            raise ConfigError(str(exc), key=f"{where}.api_key_file") from None
        upstreams.append(dataclasses.replace(upstream, base_url=base_url))
    return tuple(upstreams)


class _Upstream:
    def __init__(self, settings: ExternalUpstream, key: Secret) -> None:
        self.settings = settings
        self.key = key
        # Storage identities are hashed, like the quotas' ("x." for external upstreams).
        self._slots = (Limit("concurrent_requests", "upstream", subject("x", settings.name), settings.max_concurrent, 0),)

    def plan(self, user: str) -> Plan:
        """This upstream's limits for ``user``: requests per minute, and requests in flight overall."""
        per_user = Limit(
            "requests_per_minute", "user", subject("x", f"{self.settings.name}\0{user}"), self.settings.requests_per_minute, 60
        )
        return Plan((per_user,), (), self._slots)


class ExternalProxy:
    """The external-model routes; an appliance extension (see :class:`appliance.app.Appliance`)."""

    def __init__(
        self,
        upstreams: Iterable[ExternalUpstream],
        transport: httpx2.AsyncBaseTransport | None = None,
        limits: Quotas | None = None,
    ) -> None:
        # The quota engine's store (Redis across replicas); in memory, for this process, without one.
        self._limits = limits if limits is not None else Quotas(QuotaPolicy(), MemoryBackend())
        self._own_limits = limits is None
        self._upstreams: dict[str, _Upstream] = {}
        for settings in upstreams:
            try:
                key = read_secret_file(settings.api_key_file, f"external {settings.name} api_key_file")
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
            upstream = _Upstream(settings, key)
            for model in settings.models:
                self._upstreams[model] = upstream
        self._client = httpx2.AsyncClient(
            transport=transport, follow_redirects=False, trust_env=False, timeout=httpx2.Timeout(30.0, read=None)
        )

    def allowed(self, principal: Principal, model: str, route_id: str | None = None) -> bool:
        upstream = self._upstreams.get(model)
        return (
            upstream is not None
            and (route_id is None or route_id in upstream.settings.routes)
            and not principal.groups.isdisjoint(upstream.settings.groups)
            and (principal.scope is None or model in principal.scope)
        )

    def visible(self, principal: Principal) -> list[str]:
        return sorted(m for m in self._upstreams if self.allowed(principal, m))

    def use_limits(self, limits: Quotas) -> None:
        """Count on the quota engine's store (called before the first request)."""
        self._limits, self._own_limits = limits, False

    async def aclose(self) -> None:
        await self._client.aclose()
        if self._own_limits:
            await self._limits.aclose()

    def routes(self, appliance: Appliance) -> list[BaseRoute]:
        async def list_models(request: Request) -> Response:
            principal = await appliance.auth.authenticate(request)
            if principal is None:
                return error_response(401, "invalid_api_key")
            data = [{"id": m, "object": "model", "created": 0, "owned_by": "external"} for m in self.visible(principal)]
            return Response(orjson.dumps({"object": "list", "data": data}), media_type="application/json")

        return [
            Route("/external/v1/models", list_models, methods=["GET"]),
            *(
                Route(f"/external/v1{path}", self._handler(appliance, route_id), methods=["POST"])
                for route_id, path in ROUTE_PATHS.items()
            ),
        ]

    def _handler(self, appliance: Appliance, route_id: str) -> Callable[[Request], Awaitable[Response]]:
        route = appliance.routes.get(route_id)

        async def handle(request: Request) -> Response:
            started = time.monotonic()
            principal = await appliance.auth.authenticate(request)
            if principal is None:
                return error_response(401, "invalid_api_key")
            try:
                checked = route.check(await read_body(request, route.max_body_bytes), force_usage=True)
                if not self.allowed(principal, checked.model, route_id):
                    return error_response(404, "model_not_found")
                upstream = self._upstreams[checked.model]
                limits = upstream.settings
                # The ceiling bounds everything one request can make the upstream produce: every field
                # that sets output length (max_tokens, max_completion_tokens), times n and the prompts.
                reservation = reserve(route, checked, checked.body, OutputCeilings(limits.max_tokens))
                body, max_tokens = reservation.body, reservation.tokens
                if max_tokens is not None and max_tokens > limits.max_tokens:
                    raise BodyRejected("out_of_range", 422)
                try:
                    grant = await self._limits.admit_plan(upstream.plan(principal.user))
                except QuotaExceeded as exc:
                    return error_response(429, "rate_limited", {"Retry-After": str(max(1, int(exc.retry_after + 0.999)))})
                try:
                    ticket = await appliance.metering.admit(principal, route_id, checked.model, max_tokens, False)
                except BaseException:
                    await asyncio.shield(self._limits.settle(grant, Outcome(429)))
                    raise
            except SluiceError as exc:
                return from_error(exc)
            log.info(event_line("external_request", upstream=limits.name, route=route_id))
            return await self._forward(
                upstream, route_id, body, checked.stream, checked.include_usage, _Settle(ticket, self._limits, grant), started
            )

        return handle

    async def _forward(
        self,
        upstream: _Upstream,
        route_id: str,
        body: bytes,
        stream: bool,
        include_usage: bool,
        ticket: Ticket,
        started: float,
    ) -> Response:
        """Send to the upstream; settle ``ticket`` exactly once, whatever happens."""
        limits = upstream.settings
        request = self._client.build_request(
            "POST",
            limits.base_url + ROUTE_PATHS[route_id],
            content=body,
            headers={
                "Authorization": f"Bearer {upstream.key.reveal()}",
                "Content-Type": "application/json",
                "Accept": "text/event-stream" if stream else "application/json",
            },
        )
        response: httpx2.Response | None = None
        handed_over = False
        try:
            async with asyncio.timeout(limits.timeout):
                response = await self._client.send(request, stream=True)
                if response.status_code != 200:
                    status, code = _map_status(response.status_code)
                    log.warning(event_line("external_upstream_error", upstream=limits.name, status=response.status_code))
                    await ticket.settle(Outcome(status, latency=time.monotonic() - started))
                    return error_response(status, code, {**ticket.headers, **({"Retry-After": "5"} if status == 429 else {})})
                if stream:
                    relay = StreamingResponse(
                        self._relay(upstream, response, include_usage, ticket, started),
                        media_type="text/event-stream",
                        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **ticket.headers},
                    )
                    handed_over = True
                    return relay
                data = bytearray()
                async for chunk in response.aiter_bytes():
                    data += chunk
                    if len(data) > MAX_ANSWER_BYTES:
                        raise httpx2.DecodingError("answer too large")
        except TimeoutError:
            await ticket.settle(Outcome(504, latency=time.monotonic() - started))
            return error_response(504, "backend_timeout", ticket.headers)
        except httpx2.HTTPError:
            log.warning(event_line("external_upstream_failed", upstream=limits.name))
            await ticket.settle(Outcome(502, latency=time.monotonic() - started))
            return error_response(502, "backend_failed", ticket.headers)
        except BaseException:
            await asyncio.shield(ticket.settle(Outcome(499, latency=time.monotonic() - started)))
            raise
        finally:
            if not handed_over:
                if response is not None:
                    await response.aclose()
        usage = _usage(bytes(data))
        await ticket.settle(
            Outcome(200, usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0), time.monotonic() - started)
        )
        return Response(bytes(data), media_type="application/json", headers=ticket.headers)

    async def _relay(
        self, upstream: _Upstream, response: httpx2.Response, include_usage: bool, ticket: Ticket, started: float
    ) -> AsyncIterator[bytes]:
        """The upstream's events, minus the usage chunk the client did not ask for; settles the ticket."""
        status, first, usage = 200, None, {}
        buffer = b""
        try:
            async with asyncio.timeout(upstream.settings.timeout - (time.monotonic() - started)):
                async for chunk in response.aiter_bytes():
                    buffer += chunk
                    while b"\n\n" in buffer:
                        event, buffer = buffer.split(b"\n\n", 1)
                        found = _event_usage(event)
                        if found is not None:
                            usage = found[0]
                            if not include_usage and found[1]:
                                continue
                        if first is None:
                            first = time.monotonic() - started
                        yield event + b"\n\n"
                    if len(buffer) > _MAX_SSE_EVENT:
                        raise httpx2.DecodingError("event too large")
                if buffer.strip():
                    yield buffer
        except (TimeoutError, httpx2.HTTPError):
            status = 502
            yield (
                b'data: {"error":{"message":"The model server failed to answer.","type":"server_error",'
                b'"param":null,"code":"backend_failed"}}\n\n'
            )
        except BaseException:
            status = 499
            raise
        finally:
            await asyncio.shield(response.aclose())
            await asyncio.shield(
                ticket.settle(
                    Outcome(
                        status,
                        usage.get("prompt_tokens", 0),
                        usage.get("completion_tokens", 0),
                        time.monotonic() - started,
                        first,
                    )
                )
            )


class _Settle:
    """The metering ticket, and the upstream's limits released when it is settled (exactly once)."""

    __slots__ = ("_grant", "_limits", "_ticket")

    def __init__(self, ticket: Ticket, limits: Quotas, grant: Any) -> None:
        self._ticket, self._limits, self._grant = ticket, limits, grant

    @property
    def headers(self) -> dict[str, str]:
        return self._ticket.headers

    async def settle(self, outcome: Outcome) -> None:
        grant, self._grant = self._grant, None
        if grant is not None:
            await self._limits.settle(grant, outcome)
        await self._ticket.settle(outcome)


def _map_status(status: int) -> tuple[int, str]:
    """The client's status and code for an upstream failure: never the upstream's own words."""
    if status == 429:
        return 429, "rate_limited"
    if status in (400, 413, 422):
        return 400, "upstream_rejected"
    if status == 404:
        return 404, "model_not_found"
    return 502, "backend_failed"  # 401/403 are our key's problem, not the client's


def _usage(data: bytes) -> dict[str, int]:
    try:
        usage = json.loads(data).get("usage") or {}
    except (ValueError, AttributeError):
        return {}
    return {k: v for k, v in usage.items() if k in ("prompt_tokens", "completion_tokens") and type(v) is int}


def _event_usage(event: bytes) -> tuple[dict[str, int], bool] | None:
    """(usage, is a usage-only chunk) for an SSE event that reports usage, else None."""
    if b'"usage"' not in event or not event.startswith(b"data: {"):
        return None
    try:
        obj = json.loads(event[6:])
    except ValueError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("usage"), dict):
        return None
    usage = {k: v for k, v in obj["usage"].items() if k in ("prompt_tokens", "completion_tokens") and type(v) is int}
    return usage, obj.get("choices") == []
