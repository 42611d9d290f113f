"""Prometheus exposition, the /metrics gate, JSON log lines and the request-id middleware."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from appliance.catalog import ClusterSet
from appliance.logs import JsonFormatter, configure_logging
from appliance.metrics import Metrics, metrics_app, metrics_route
from appliance.middleware.front import FrontMiddleware
from appliance.middleware.request_log import CURRENT


class FakeTransport:
    async def start(self) -> None: ...

    async def aclose(self) -> None: ...

    async def request(self, command: object, body: bytes) -> object:
        from policy.errors import TransportError

        raise TransportError("gate_closed")

    def stats(self) -> dict[str, int]:
        return {"sessions": 2, "streams": 5}


def test_exposition_format() -> None:
    """What a scrape shows (prometheus_client, text format 0.0.4): escaped label values,
    cumulative buckets with an inclusive ``le``, the sum and the count, no ``_created`` series."""
    registry = CollectorRegistry()
    requests = Counter("x_requests_total", "Requests.", ("path", "status"), registry=registry)
    requests.labels("/v1/chat", "200").inc()
    requests.labels("/v1/chat", "200").inc(2)
    requests.labels('we"ird\\path\n', "500").inc()
    gauge = Gauge("x_up", "Up.", registry=registry)
    gauge.set(1)
    histogram = Histogram("x_seconds", "Latency.", ("route",), buckets=(0.1, 1.0), registry=registry)
    for value in (0.05, 0.1, 0.5, 5.0):
        histogram.labels("chat").observe(value)
    text = generate_latest(registry).decode()
    assert "# HELP x_requests_total Requests.\n# TYPE x_requests_total counter\n" in text
    assert 'x_requests_total{path="/v1/chat",status="200"} 3.0\n' in text
    assert 'x_requests_total{path="we\\"ird\\\\path\\n",status="500"} 1.0\n' in text
    assert "# TYPE x_up gauge\nx_up 1.0\n" in text
    assert 'x_seconds_bucket{le="0.1",route="chat"} 2.0\n' in text  # le is inclusive
    assert 'x_seconds_bucket{le="1.0",route="chat"} 3.0\n' in text
    assert 'x_seconds_bucket{le="+Inf",route="chat"} 4.0\n' in text
    assert 'x_seconds_sum{route="chat"} 5.65\n' in text
    assert 'x_seconds_count{route="chat"} 4.0\n' in text
    assert "_created" not in text
    assert registry.get_sample_value("x_seconds_count", {"route": "chat"}) == 4


def _metrics_client(token: str | None) -> TestClient:
    metrics = Metrics()
    metrics.quota_rejections.labels("requests_per_minute", "user").inc()
    clusters = ClusterSet.single(FakeTransport())  # type: ignore[arg-type]
    return TestClient(Starlette(routes=[metrics_route(metrics, clusters, token)]))


def test_metrics_closed_without_a_token() -> None:
    with _metrics_client(None) as client:
        response = client.get("/metrics")
        assert response.status_code == 403 and response.json()["error"]["code"] == "metrics_closed"


def test_metrics_need_the_token() -> None:
    token = "metrics-token-" + "x" * 20
    with _metrics_client(token) as client:
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert client.get("/metrics", headers={"Authorization": f"Basic {token}"}).status_code == 401
        response = client.get("/metrics", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
        text = response.text
        assert 'sluice_quota_rejections_total{limit="requests_per_minute",scope="user"} 1' in text
        # Gauges read at scrape time: the gate pool, and the cluster (down here).
        assert 'sluice_gate_sessions{cluster="local"} 2' in text
        assert 'sluice_gate_streams{cluster="local"} 5' in text
        assert 'sluice_cluster_up{cluster="local"} 0' in text


def test_admin_app_serves_metrics_only() -> None:
    metrics = Metrics()
    clusters = ClusterSet.single(FakeTransport())  # type: ignore[arg-type]
    with TestClient(metrics_app(metrics, clusters)) as client:
        assert client.get("/metrics").status_code == 200
        assert client.get("/v1/models").status_code == 404
    with TestClient(metrics_app(metrics, clusters, "admin-token-" + "y" * 20)) as client:
        assert client.get("/metrics").status_code == 401


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (
        root.handlers[:],
        root.level,
        logging.getLogger("asyncssh").level,
        logging._srcfile,  # type: ignore[attr-defined]
        logging.logThreads,
        logging.logProcesses,
        logging.logMultiprocessing,
    )
    configure_logging("info", stream)
    try:
        yield stream
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        logging.getLogger("asyncssh").setLevel(saved[2])
        logging._srcfile, logging.logThreads, logging.logProcesses, logging.logMultiprocessing = saved[3:]  # type: ignore[attr-defined]
        logging.captureWarnings(False)


def _lines(stream: io.StringIO) -> list[dict[str, object]]:
    """Sluice's own lines (the test client logs too)."""
    lines = [json.loads(line) for line in stream.getvalue().splitlines() if line]
    return [line for line in lines if str(line["logger"]).startswith("sluice")]


def test_json_lines(log_stream: io.StringIO) -> None:
    log = logging.getLogger("sluice.test")
    log.warning('{"event":"ssh_failed","cluster":"hpc"}')
    log.info("plain %s", "text")
    try:
        raise ValueError("secret-content-in-an-exception")
    except ValueError:
        log.exception('{"event":"internal_error"}')
    lines = _lines(log_stream)
    assert lines[0]["event"] == "ssh_failed" and lines[0]["cluster"] == "hpc" and lines[0]["level"] == "warning"
    assert str(lines[0]["ts"]).endswith("Z")
    assert lines[1]["message"] == "plain text"
    assert lines[2]["exception"] == "ValueError" and lines[2]["where"]
    assert "secret-content" not in log_stream.getvalue()


def test_formatter_never_prints_exception_text() -> None:
    formatter = JsonFormatter()
    try:
        raise KeyError("canary-in-a-key")
    except KeyError:
        import sys

        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", None, sys.exc_info())
    assert "canary" not in formatter.format(record)
    assert formatter.formatException(record.exc_info) == ""


def _app(metrics: Metrics) -> Starlette:
    async def hello(request: Request) -> Response:
        info = CURRENT.get()
        assert info is not None
        info.user, info.model, info.prompt_tokens = "alice", "m1", 3
        logging.getLogger("sluice.test").warning('{"event":"inside"}')
        return JSONResponse({"ok": True}, headers={"x-ratelimit-limit-requests": "5"})

    async def stream(_: Request) -> Response:
        async def body() -> object:
            yield b"data: 1\n\n"
            yield b"data: 2\n\n"

        return StreamingResponse(body(), media_type="text/event-stream")

    async def boom(_: Request) -> Response:
        raise RuntimeError("boom-canary")

    return Starlette(
        routes=[Route("/v1/hello/{name}", hello), Route("/stream", stream), Route("/boom", boom)],
        middleware=[Middleware(FrontMiddleware, metrics=metrics)],
    )


def test_request_ids_and_the_request_line(log_stream: io.StringIO) -> None:
    metrics = Metrics()
    with TestClient(_app(metrics), raise_server_exceptions=False) as client:
        first = client.get("/v1/hello/canary-path-value?q=canary-query", headers={"X-Request-Id": "canary-header"})
        second = client.get("/stream")
        missing = client.get("/canary-not-a-route")
        failed = client.get("/boom")
    assert first.status_code == 200 and first.headers["x-ratelimit-limit-requests"] == "5"
    ids = [r.headers["x-request-id"] for r in (first, second, missing)]
    assert all(i.startswith("req_") and len(i) == 28 for i in ids) and len(set(ids)) == 3
    assert failed.status_code == 500
    lines = _lines(log_stream)
    # Neither the path's values, the query, the client's request id, nor the exception's text.
    assert "canary" not in json.dumps(lines)
    inside = next(line for line in lines if line.get("event") == "inside")
    assert inside["request_id"] == ids[0]
    requests = [line for line in lines if line.get("event") == "request"]
    assert [(r["path"], r["status"]) for r in requests] == [
        ("/v1/hello/{name}", 200),
        ("/stream", 200),
        ("other", 404),
        ("/boom", 500),
    ]
    assert requests[0]["request_id"] == ids[0] and requests[0]["user"] == "alice" and requests[0]["prompt_tokens"] == 3
    assert requests[0]["method"] == "GET" and isinstance(requests[0]["latency_ms"], float)
    assert "user" not in requests[1]
    sample = metrics.registry.get_sample_value
    assert sample("sluice_http_requests_total", {"path": "/v1/hello/{name}", "status": "200"}) == 1
    assert sample("sluice_http_requests_total", {"path": "other", "status": "404"}) == 1
    assert sample("sluice_http_request_duration_seconds_count", {"path": "/stream"}) == 1


def test_request_line_can_be_turned_off(log_stream: io.StringIO) -> None:
    app = Starlette(routes=[Route("/x", lambda _: Response("ok"))], middleware=[Middleware(FrontMiddleware, access_log=False)])
    with TestClient(app) as client:
        assert client.get("/x").headers["x-request-id"]
    assert _lines(log_stream) == []
