"""Prometheus metrics: the appliance's metrics in a ``prometheus_client`` registry, and ``/metrics``.

Label values are only ever route paths, route ids, model names from the
gates' listings, status codes, limit names and cluster names: never users
(unbounded, and personal) and never anything a request carried.

``/metrics`` is closed unless configured (``[metrics]``): either it needs
``Authorization: Bearer <token>`` (the token read from ``token_file``), or it
is served only on a separate admin address (``admin_bind``), or both.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from collections.abc import Iterable, Iterator
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from policy.errors import SluiceError

from .api.errors import error_response
from .auth.secret import Secret, carried
from .catalog import ClusterSet
from .metrics_shared import shared_registry

__all__ = ["CONTENT_TYPE", "Metrics", "ModelSeries", "metrics_app", "metrics_route"]

CONTENT_TYPE: Final = CONTENT_TYPE_PLAIN_0_0_4

# End to end, from the request's arrival to its last byte: quick embeddings up to long generations.
LATENCY_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
# Time to the first token of a stream: queueing and prefill.
FIRST_TOKEN_BUCKETS: Final = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
# Generation speed of one answer: a slow CPU model to a fast GPU one.
TOKEN_RATE_BUCKETS: Final = (1.0, 2.0, 5.0, 10.0, 20.0, 35.0, 50.0, 75.0, 100.0, 150.0, 250.0, 500.0, 1000.0)

# A scrape waits this long for the clusters' listings before it reports them as down.
SCRAPE_TIMEOUT: Final = 2.0

# No ``*_created`` series: a scrape shows what the metrics above say, and nothing per process start.
disable_created_metrics()  # type: ignore[no-untyped-call]  # prometheus-client leaves this one function unannotated


# (route, model) pairs whose labelled series are kept at hand; past this many the cache starts
# over (the series themselves stay in the registry: only the shortcut to them is dropped).
MAX_CACHED_SERIES: Final = 10_000


class ModelSeries:
    """The labelled series of one route and model, looked up once (``labels()`` hashes and
    locks on every call): what settling a request updates."""

    __slots__ = (
        "_requests",
        "_statuses",
        "_labels",
        "completion_tokens",
        "first_token",
        "in_flight",
        "latency",
        "prompt_tokens",
        "token_rate",
    )

    def __init__(self, metrics: Metrics, route: str, model: str) -> None:
        self._requests = metrics.requests
        self._statuses: dict[int, Counter] = {}
        self.latency = metrics.latency.labels(route, model)
        self.first_token = metrics.first_token.labels(route, model)
        self.token_rate = metrics.token_rate.labels(route, model)
        self.prompt_tokens = metrics.tokens.labels(route, model, "prompt")
        self.completion_tokens = metrics.tokens.labels(route, model, "completion")
        self.in_flight = metrics.in_flight.labels(model)
        self._labels = (route, model)

    def requests(self, status: int) -> Counter:
        """``sluice_requests_total`` of this route and model with ``status``."""
        found = self._statuses.get(status)
        if found is None:
            route, model = self._labels
            found = self._statuses[status] = self._requests.labels(route, model, str(status))
        return found


class _Families:
    """A collector for metric families read at scrape time."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = tuple(families)

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


class Metrics:
    """Everything the appliance counts, in a registry of its own.

    ``worker``: this process is that worker of several (see :mod:`appliance.metrics_shared`).
    """

    def __init__(self, worker: int | None = None) -> None:
        self.worker = worker
        self.registry = registry = CollectorRegistry(auto_describe=True)
        self.http_requests = Counter(
            "sluice_http_requests_total", "HTTP requests answered, by route and status.", ("path", "status"), registry=registry
        )
        self.http_duration = Histogram(
            "sluice_http_request_duration_seconds",
            "Time from a request's arrival to its last response byte.",
            ("path",),
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.requests = Counter(
            "sluice_requests_total",
            "Requests admitted to a model, by route, model and final status.",
            ("route", "model", "status"),
            registry=registry,
        )
        self.latency = Histogram(
            "sluice_request_duration_seconds",
            "End-to-end time of admitted requests, to the last byte.",
            ("route", "model"),
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.first_token = Histogram(
            "sluice_time_to_first_token_seconds",
            "Time to the first content of a clear streamed answer (keepalives of a held stream do not count).",
            ("route", "model"),
            buckets=FIRST_TOKEN_BUCKETS,
            registry=registry,
        )
        self.token_rate = Histogram(
            "sluice_output_tokens_per_second",
            "Completion tokens per second of generation (after the first token for streams), by route and model.",
            ("route", "model"),
            buckets=TOKEN_RATE_BUCKETS,
            registry=registry,
        )
        self.tokens = Counter(
            "sluice_tokens_total",
            "Tokens the gates reported, by route, model and type (prompt, completion).",
            ("route", "model", "type"),
            registry=registry,
        )
        self.in_flight = Gauge(
            "sluice_requests_in_flight",
            "Admitted requests not yet finished, by model (queued or answering).",
            ("model",),
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.quota_rejections = Counter(
            "sluice_quota_rejections_total",
            "Requests refused by a quota, by limit and scope (user, key, group).",
            ("limit", "scope"),
            registry=registry,
        )
        self.quota_storage_errors = Counter(
            "sluice_quota_storage_errors_total",
            "Admissions that found the quota storage unreachable, by what happened (denied, unmetered).",
            ("outcome",),
            registry=registry,
        )
        self.accounting_errors = Counter(
            "sluice_accounting_errors_total", "Usage rows that could not be written.", registry=registry
        )
        self.accounting_backlog = Gauge(
            "sluice_accounting_backlog",
            "Usage rows handed to the store and not yet committed.",
            registry=registry,
            multiprocess_mode="livesum",
        )

        self._series: dict[tuple[str, str], ModelSeries] = {}

    def series(self, route: str, model: str) -> ModelSeries:
        """The series of ``route`` and ``model`` (a route id and a model the catalog lists)."""
        key = (route, model)
        found = self._series.get(key)
        if found is None:
            if len(self._series) >= MAX_CACHED_SERIES:
                self._series.clear()
            found = self._series[key] = ModelSeries(self, route, model)
        return found

    def render(self, extra: Iterable[Metric] = ()) -> bytes:
        """The text exposition of these metrics and of ``extra`` (families read at scrape time)."""
        scraped = CollectorRegistry(auto_describe=False)
        scraped.register(_Families(extra))
        return generate_latest(shared_registry() or self.registry) + generate_latest(scraped)

    async def cluster_metrics(self, clusters: ClusterSet) -> list[Metric]:
        """Read at scrape time: each cluster's gate pool, and each model's state as its gate lists it."""
        up = GaugeMetricFamily(
            "sluice_cluster_up", "1 if the cluster's gate answered its latest model listing.", labels=("cluster",)
        )
        ready = GaugeMetricFamily(
            "sluice_model_ready", "1 if the model has a ready instance, by cluster.", labels=("cluster", "model")
        )
        instances = GaugeMetricFamily(
            "sluice_model_instances",
            "Instances of the model by state (ready, starting), by cluster.",
            labels=("cluster", "model", "state"),
        )
        held = GaugeMetricFamily(
            "sluice_gate_held_requests",
            "Requests waiting in the gates' hold queue for an instance of the model to start.",
            labels=("cluster", "model"),
        )
        gate_in_flight = GaugeMetricFamily(
            "sluice_gate_requests_in_flight",
            "Requests the gates are answering for the model, over all gate processes.",
            labels=("cluster", "model"),
        )
        pool: dict[str, CounterMetricFamily | GaugeMetricFamily] = {}
        worker = () if self.worker is None else (str(self.worker),)  # each worker's own gate connections
        for name, catalog in clusters.catalogs.items():
            for key, value in catalog.transport.stats().items():
                if key.isidentifier() and key.isascii():
                    metric = pool.get(key)
                    if metric is None:
                        metric = pool[key] = _pool_metric(key, bool(worker))
                    metric.add_metric((name, *worker), float(value))
            try:
                async with asyncio.timeout(SCRAPE_TIMEOUT):
                    listing = await catalog.models()
            except (SluiceError, TimeoutError):
                up.add_metric((name,), 0)
                continue
            up.add_metric((name,), 1)
            for model in listing.values():
                ready.add_metric((name, model.id), 1 if model.ready else 0)
                instances.add_metric((name, model.id, "ready"), model.instances_ready)
                instances.add_metric((name, model.id, "starting"), model.instances_starting)
                held.add_metric((name, model.id), model.held)
                gate_in_flight.add_metric((name, model.id), model.gate_in_flight)
        return [up, ready, instances, held, gate_in_flight, *pool.values()]


def _pool_metric(key: str, per_worker: bool = False) -> CounterMetricFamily | GaugeMetricFamily:
    """A transport statistic as a metric: ``..._total`` keys are counters, the rest gauges."""
    name = f"sluice_gate_{key.lower()}"
    labels = ("cluster", "worker") if per_worker else ("cluster",)
    if key.endswith("_total"):
        return CounterMetricFamily(name, f"The transport to the gate: {key[:-6].replace('_', ' ')} so far.", labels=labels)
    if key == "slots":
        return GaugeMetricFamily(
            name, "The transport to the gate: connections configured (sessions of them usable).", labels=labels
        )
    return GaugeMetricFamily(name, f"The transport to the gate: open {key}.", labels=labels)


def _token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


async def _render(metrics: Metrics, clusters: ClusterSet) -> Response:
    body = metrics.render(await metrics.cluster_metrics(clusters))
    return Response(body, media_type=CONTENT_TYPE)


def metrics_route(metrics: Metrics, clusters: ClusterSet, token: str | Secret | None) -> Route:
    """``/metrics``: with ``token``, only for ``Authorization: Bearer <token>``; without, closed (403)."""
    digest = _token_digest(carried(token).reveal()) if token else None  # only the digest is kept

    async def endpoint(request: Request) -> Response:
        if digest is None:
            return error_response(403, "metrics_closed")
        header = request.headers.get("authorization", "")
        offered = header[7:].strip() if header[:7].lower() == "bearer " else ""
        if not hmac.compare_digest(_token_digest(offered), digest):
            return error_response(401, "invalid_metrics_token", {"WWW-Authenticate": "Bearer"})
        return await _render(metrics, clusters)

    return Route("/metrics", endpoint, methods=["GET"])


def metrics_app(metrics: Metrics, clusters: ClusterSet, token: str | Secret | None = None) -> Starlette:
    """The admin listener's app: ``/metrics`` and nothing else (a token as well, if configured)."""
    if token:
        route = metrics_route(metrics, clusters, token)
    else:

        async def endpoint(_: Request) -> Response:
            return await _render(metrics, clusters)

        route = Route("/metrics", endpoint, methods=["GET"])

    async def not_found(_: Request, __: Exception) -> Response:
        return error_response(404, "not_found")

    return Starlette(routes=[route], exception_handlers={404: not_found})
