"""The appliance's ASGI app: routes, lifespan, and the keepalive that watches the cluster."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route, Router

from policy.bodies import RouteTable, load_routes
from policy.errors import SluiceError
from policy.events import event_line

from .api.errors import error_response
from .api.openai import OpenAIApi
from .api.sealed_keys import KEYS_TTL
from .auth.base import AccessPolicy, Authenticator, DenyAll, IdentityUnavailable
from .auth.secret import Secret
from .catalog import ClusterSet
from .metering import Metering, NoMetering
from .metrics import Metrics, metrics_route
from .middleware import FrontMiddleware
from .middleware.body_deadline import DEFAULT_BODY_TIMEOUT
from .quotas.reservation import OutputCeilings

__all__ = ["Appliance", "Extension", "create_app"]

log = logging.getLogger("sluice.appliance")

# How long the cluster may stay silent before /readyz says it is unreachable.
READY_GRACE: Final = 3.0


class Extension(Protocol):
    """Routes beside the API (account pages, the external-model proxy), closed at shutdown."""

    def routes(self, appliance: Appliance) -> list[BaseRoute]: ...

    async def aclose(self) -> None: ...


@dataclass
class Appliance:
    """Everything the app serves with; built once at start."""

    clusters: ClusterSet
    auth: Authenticator
    access: AccessPolicy = field(default_factory=DenyAll)
    metering: Metering = field(default_factory=NoMetering)
    routes: RouteTable = field(default_factory=load_routes)
    keepalive_interval: float = 5.0
    request_timeout: float = 300.0
    extensions: Sequence[Extension] = ()
    public_url: str | None = None  # the origin browsers use; None: the Host a request was sent to
    body_timeout: float = DEFAULT_BODY_TIMEOUT
    output_ceilings: OutputCeilings = field(default_factory=OutputCeilings)
    sealed_keys_ttl: float = KEYS_TTL
    metrics: Metrics | None = None  # None: no /metrics route at all
    metrics_token: str | Secret | None = field(default=None, repr=False)  # None: /metrics answers 403 here
    access_log: bool = True
    last_pong: float = field(default=float("-inf"), init=False)

    async def ping(self) -> bool:
        """Ping every cluster (this is also what triggers their scheduler passes)."""
        answered = await self.clusters.ping(max(self.keepalive_interval, 1.0))
        if any(answered.values()):
            self.last_pong = time.monotonic()
            return True
        return False

    async def keepalive(self) -> None:
        while True:
            await self.ping()
            await asyncio.sleep(self.keepalive_interval)


def create_app(appliance: Appliance) -> Starlette:
    api = OpenAIApi(
        appliance.clusters,
        appliance.auth,
        appliance.access,
        appliance.metering,
        appliance.routes,
        appliance.request_timeout,
        appliance.output_ceilings,
        appliance.sealed_keys_ttl,
    )

    async def healthz(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(_: Request) -> Response:
        fresh = time.monotonic() - appliance.last_pong < appliance.keepalive_interval + READY_GRACE
        if not fresh:
            fresh = await appliance.ping()
        # Counts only: which models exist is for callers who may use them (/v1/models).
        ready = 0
        if fresh:
            with contextlib.suppress(SluiceError):
                ready = sum(1 for m in (await appliance.clusters.models()).values() if m.ready)
        if fresh and ready:
            return JSONResponse({"status": "ready", "ready_models": ready})
        return JSONResponse(
            {"status": "not_ready", "cluster": "reachable" if fresh else "unreachable", "ready_models": ready},
            status_code=503,
            headers={"Retry-After": "5"},
        )

    async def not_found(_: Request, __: Exception) -> Response:
        return error_response(404, "not_found")

    async def not_allowed(_: Request, __: Exception) -> Response:
        return error_response(405, "method_not_allowed")

    async def identity_unavailable(_: Request, __: Exception) -> Response:
        # The identity store (PostgreSQL) cannot be reached: fail closed, and say it is ours.
        log.error(event_line("identity_unavailable"))
        return error_response(503, "identity_unavailable", {"Retry-After": "5"})

    async def internal(_: Request, __: Exception) -> Response:
        log.error(event_line("internal_error"))
        return error_response(500, "internal")

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        await appliance.clusters.start()
        keepalive = asyncio.create_task(appliance.keepalive())
        try:
            yield
        finally:
            keepalive.cancel()
            await asyncio.gather(keepalive, return_exceptions=True)
            await appliance.clusters.aclose()
            for extension in appliance.extensions:
                await extension.aclose()

    routes: list[BaseRoute] = [Route("/healthz", healthz), Route("/readyz", readyz), *api.routes()]
    for extension in appliance.extensions:
        routes += extension.routes(appliance)
    if appliance.metrics is not None:
        routes.append(metrics_route(appliance.metrics, appliance.clusters, appliance.metrics_token))
    app = Starlette(
        routes=routes,
        middleware=[
            Middleware(
                FrontMiddleware,
                metrics=appliance.metrics,
                access_log=appliance.access_log,
                body_timeout=appliance.body_timeout,
                public_url=appliance.public_url,
                form_paths=[r.path for r in appliance.routes.routes.values() if r.form is not None],
            ),
        ],
        lifespan=lifespan,
        exception_handlers={404: not_found, 405: not_allowed, 500: internal, IdentityUnavailable: identity_unavailable},
    )
    _no_slash_redirects(app.router)
    return app


def _no_slash_redirects(router: Router) -> None:
    """A path with (or without) a trailing slash that is not a route is 404, not a redirect.

    Starlette would answer 307 to the same path on whatever host the client
    named in its Host header; mounted routers get the same treatment."""
    router.redirect_slashes = False
    for route in router.routes:
        if isinstance(route, Mount) and isinstance(route.app, Router):
            _no_slash_redirects(route.app)
