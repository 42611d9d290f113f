"""Prometheus metrics: a small registry, the appliance's metrics, and the ``/metrics`` endpoint.

The text exposition format (version 0.0.4) is small enough to write here:
counters, gauges and histograms with fixed label names.  Label values are
only ever route paths, route ids, model names from the gates' listings,
status codes, limit names and cluster names: never users (unbounded, and
personal) and never anything a request carried.

``/metrics`` is closed unless configured (``[metrics]``): either it needs
``Authorization: Bearer <token>`` (the token read from ``token_file``), or it
is served only on a separate admin address (``admin_bind``), or both.
"""

from __future__ import annotations

import asyncio
import bisect
import hashlib
import hmac
import math
from collections.abc import Iterable, Sequence
from typing import Final, TypeVar

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from policy.errors import SluiceError

from .api.errors import error_response
from .catalog import ClusterSet

__all__ = ["CONTENT_TYPE", "Counter", "Gauge", "Histogram", "Metrics", "Registry", "metrics_app", "metrics_route"]

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"

# End to end, from the request's arrival to its last byte: quick embeddings up to long generations.
LATENCY_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
# Time to the first token of a stream: queueing and prefill.
FIRST_TOKEN_BUCKETS: Final = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
# Generation speed of one answer: a slow CPU model to a fast GPU one.
TOKEN_RATE_BUCKETS: Final = (1.0, 2.0, 5.0, 10.0, 20.0, 35.0, 50.0, 75.0, 100.0, 150.0, 250.0, 500.0, 1000.0)

# A scrape waits this long for the clusters' listings before it reports them as down.
SCRAPE_TIMEOUT: Final = 2.0


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


class _Metric:
    kind = "untyped"

    def __init__(self, name: str, help_text: str, labels: Sequence[str] = ()) -> None:
        self.name = name
        self.help = help_text
        self.label_names = tuple(labels)

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]

    def render(self) -> list[str]:
        raise NotImplementedError


class Counter(_Metric):
    kind = "counter"

    def __init__(self, name: str, help_text: str, labels: Sequence[str] = ()) -> None:
        super().__init__(name, help_text, labels)
        self.values: dict[tuple[str, ...], float] = {}

    def inc(self, labels: tuple[str, ...] = (), amount: float = 1.0) -> None:
        self.values[labels] = self.values.get(labels, 0.0) + amount

    def get(self, labels: tuple[str, ...] = ()) -> float:
        return self.values.get(labels, 0.0)

    def render(self) -> list[str]:
        lines = self.header()
        for labels, value in sorted(self.values.items()):
            lines.append(f"{self.name}{_labels(self.label_names, labels)} {_number(value)}")
        return lines


class Gauge(Counter):
    kind = "gauge"

    def set(self, labels: tuple[str, ...], value: float) -> None:
        self.values[labels] = value


class Histogram(_Metric):
    kind = "histogram"

    def __init__(self, name: str, help_text: str, labels: Sequence[str], buckets: Sequence[float]) -> None:
        super().__init__(name, help_text, labels)
        self.buckets = tuple(sorted(buckets))
        # Per label set: counts per bucket (not cumulative; +Inf last), then the sum.
        self.values: dict[tuple[str, ...], tuple[list[int], list[float]]] = {}

    def observe(self, labels: tuple[str, ...], value: float) -> None:
        found = self.values.get(labels)
        if found is None:
            found = self.values[labels] = ([0] * (len(self.buckets) + 1), [0.0])
        found[0][bisect.bisect_left(self.buckets, value)] += 1
        found[1][0] += value

    def count(self, labels: tuple[str, ...]) -> int:
        found = self.values.get(labels)
        return sum(found[0]) if found else 0

    def render(self) -> list[str]:
        lines = self.header()
        for labels, (counts, total) in sorted(self.values.items()):
            running = 0
            for bound, count in zip((*self.buckets, math.inf), counts, strict=True):
                running += count
                le = 'le="' + _number(bound) + '"'
                lines.append(f"{self.name}_bucket{_labels(self.label_names, labels, le)} {running}")
            lines.append(f"{self.name}_sum{_labels(self.label_names, labels)} {_number(total[0])}")
            lines.append(f"{self.name}_count{_labels(self.label_names, labels)} {running}")
        return lines


_M = TypeVar("_M", bound=_Metric)


class Registry:
    def __init__(self) -> None:
        self.metrics: list[_Metric] = []

    def add(self, metric: _M) -> _M:
        self.metrics.append(metric)
        return metric

    def render(self, extra: Iterable[_Metric] = ()) -> bytes:
        lines: list[str] = []
        for metric in (*self.metrics, *extra):
            lines.extend(metric.render())
        return ("\n".join(lines) + "\n").encode()


class Metrics(Registry):
    """Everything the appliance counts."""

    def __init__(self) -> None:
        super().__init__()
        add = self.add
        self.http_requests = add(Counter(
            "sluice_http_requests_total", "HTTP requests answered, by route and status.", ("path", "status")))
        self.http_duration = add(Histogram(
            "sluice_http_request_duration_seconds", "Time from a request's arrival to its last response byte.",
            ("path",), LATENCY_BUCKETS))
        self.requests = add(Counter(
            "sluice_requests_total", "Requests admitted to a model, by route, model and final status.",
            ("route", "model", "status")))
        self.latency = add(Histogram(
            "sluice_request_duration_seconds", "End-to-end time of admitted requests, to the last byte.",
            ("route", "model"), LATENCY_BUCKETS))
        self.first_token = add(Histogram(
            "sluice_time_to_first_token_seconds",
            "Time to the first content of a clear streamed answer (keepalives of a held stream do not count).",
            ("route", "model"), FIRST_TOKEN_BUCKETS))
        self.token_rate = add(Histogram(
            "sluice_output_tokens_per_second",
            "Completion tokens per second of generation (after the first token for streams), by route and model.",
            ("route", "model"), TOKEN_RATE_BUCKETS))
        self.tokens = add(Counter(
            "sluice_tokens_total", "Tokens the gates reported, by route, model and type (prompt, completion).",
            ("route", "model", "type")))
        self.in_flight = add(Gauge(
            "sluice_requests_in_flight", "Admitted requests not yet finished, by model (queued or answering).",
            ("model",)))
        self.quota_rejections = add(Counter(
            "sluice_quota_rejections_total", "Requests refused by a quota, by limit and scope (user, key, group).",
            ("limit", "scope")))
        self.quota_storage_errors = add(Counter(
            "sluice_quota_storage_errors_total",
            "Admissions that found the quota storage unreachable, by what happened (denied, unmetered).",
            ("outcome",)))
        self.accounting_errors = add(Counter(
            "sluice_accounting_errors_total", "Usage rows that could not be written."))
        self.accounting_backlog = add(Gauge(
            "sluice_accounting_backlog", "Usage rows handed to the store and not yet committed."))
        self.accounting_backlog.set((), 0)

    async def cluster_metrics(self, clusters: ClusterSet) -> list[_Metric]:
        """Read at scrape time: each cluster's gate pool, and each model's state as its gate lists it."""
        up = Gauge("sluice_cluster_up", "1 if the cluster's gate answered its latest model listing.", ("cluster",))
        ready = Gauge("sluice_model_ready", "1 if the model has a ready instance, by cluster.", ("cluster", "model"))
        instances = Gauge("sluice_model_instances", "Instances of the model by state (ready, starting), by cluster.",
                          ("cluster", "model", "state"))
        held = Gauge("sluice_gate_held_requests",
                     "Requests waiting in the gates' hold queue for an instance of the model to start.",
                     ("cluster", "model"))
        gate_in_flight = Gauge("sluice_gate_requests_in_flight",
                               "Requests the gates are answering for the model, over all gate processes.",
                               ("cluster", "model"))
        pool: dict[str, Counter] = {}
        for name, catalog in clusters.catalogs.items():
            for key, value in catalog.transport.stats().items():
                if key.isidentifier() and key.isascii():
                    metric = pool.get(key)
                    if metric is None:
                        metric = pool[key] = _pool_metric(key)
                    metric.values[(name,)] = float(value)
            try:
                async with asyncio.timeout(SCRAPE_TIMEOUT):
                    listing = await catalog.models()
            except (SluiceError, TimeoutError):
                up.set((name,), 0)
                continue
            up.set((name,), 1)
            for model in listing.values():
                ready.set((name, model.id), 1 if model.ready else 0)
                instances.set((name, model.id, "ready"), model.instances_ready)
                instances.set((name, model.id, "starting"), model.instances_starting)
                held.set((name, model.id), model.held)
                gate_in_flight.set((name, model.id), model.gate_in_flight)
        return [up, ready, instances, held, gate_in_flight, *pool.values()]


def _pool_metric(key: str) -> Counter:
    """A transport statistic as a metric: ``..._total`` keys are counters, the rest gauges."""
    name = f"sluice_gate_{key.lower()}"
    if key.endswith("_total"):
        return Counter(name, f"The transport to the gate: {key[:-6].replace('_', ' ')} so far.", ("cluster",))
    if key == "slots":
        return Gauge(name, "The transport to the gate: connections configured (sessions of them usable).", ("cluster",))
    return Gauge(name, f"The transport to the gate: open {key}.", ("cluster",))


def _token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


async def _render(metrics: Metrics, clusters: ClusterSet) -> Response:
    body = metrics.render(await metrics.cluster_metrics(clusters))
    return Response(body, media_type=CONTENT_TYPE)


def metrics_route(metrics: Metrics, clusters: ClusterSet, token: str | None) -> Route:
    """``/metrics``: with ``token``, only for ``Authorization: Bearer <token>``; without, closed (403)."""
    digest = _token_digest(token) if token else None

    async def endpoint(request: Request) -> Response:
        if digest is None:
            return error_response(403, "metrics_closed")
        header = request.headers.get("authorization", "")
        offered = header[7:].strip() if header[:7].lower() == "bearer " else ""
        if not hmac.compare_digest(_token_digest(offered), digest):
            return error_response(401, "invalid_metrics_token", {"WWW-Authenticate": "Bearer"})
        return await _render(metrics, clusters)

    return Route("/metrics", endpoint, methods=["GET"])


def metrics_app(metrics: Metrics, clusters: ClusterSet, token: str | None = None) -> Starlette:
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
