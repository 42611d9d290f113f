"""The series of a route and model, looked up once (appliance/metrics.py): the same counts as labels()."""

from __future__ import annotations

import pytest

from appliance import metrics as metrics_module
from appliance.metrics import Metrics


def test_series_count_what_labels_count() -> None:
    metrics = Metrics()
    series = metrics.series("chat", "m1")
    assert metrics.series("chat", "m1") is series  # looked up once
    series.requests(200).inc()
    series.requests(200).inc()
    series.requests(429).inc()
    series.latency.observe(0.2)
    series.prompt_tokens.inc(5)
    series.completion_tokens.inc(7)
    series.in_flight.inc()
    assert metrics.requests.labels("chat", "m1", "200")._value.get() == 2
    assert metrics.requests.labels("chat", "m1", "429")._value.get() == 1
    assert metrics.tokens.labels("chat", "m1", "prompt")._value.get() == 5
    assert metrics.tokens.labels("chat", "m1", "completion")._value.get() == 7
    assert metrics.in_flight.labels("m1")._value.get() == 1
    text = metrics.render().decode()
    assert 'sluice_requests_total{model="m1",route="chat",status="200"} 2.0' in text
    assert 'sluice_request_duration_seconds_count{model="m1",route="chat"} 1.0' in text
    assert metrics.series("embeddings", "m1").in_flight is series.in_flight  # in flight is per model


def test_the_series_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics_module, "MAX_CACHED_SERIES", 3)
    metrics = Metrics()
    for index in range(10):
        metrics.series("chat", f"m{index}").requests(200).inc()
    assert len(metrics._series) <= 3
    assert metrics.requests.labels("chat", "m0", "200")._value.get() == 1  # the series stay in the registry
