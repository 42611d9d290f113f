"""The demo scraped by a real Prometheus server, queried through its HTTP API; the dashboard's queries run
there; `sluice status` and `sluice audit` against the same running demo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.appliance.test_dashboard import dashboard_queries, exposed_names, metric_names
from tests.conftest import ROOT
from tests.integration.test_demo import Demo, start_demo, stop_demo
from tests.services.prometheus import PrometheusServer

pytestmark = pytest.mark.integration


@dataclass
class Running:
    demo: Demo
    token: str
    database: Path
    token_file: Path


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    demo = start_demo("mux")
    try:
        assert demo.process.stdout is not None
        token = database = None
        for line in demo.process.stdout:
            if "Authorization: Bearer " in line:
                token = line.split("Authorization: Bearer ", 1)[1].split("'", 1)[0]
            if line.strip().startswith("usage:"):
                database = Path(line.split("--database", 1)[1].strip())
            if line.startswith("Press Ctrl-C"):
                break
        assert token and database
        token_file = tmp_path_factory.mktemp("status") / "metrics.token"
        token_file.write_text(token)
        token_file.chmod(0o600)
        yield Running(demo, token, database, token_file)
    finally:
        if demo.process.poll() is None:
            stop_demo(demo)


@pytest.fixture(scope="module")
def prometheus(running: Running) -> Iterator[PrometheusServer]:
    server = PrometheusServer(running.demo.url.removeprefix("http://"), running.token)
    try:
        yield server
    finally:
        server.stop()


def _traffic(demo: Demo) -> None:
    client = demo.client()
    for _ in range(3):
        stream = client.chat.completions.create(
            model="standin-chat", messages=[{"role": "user", "content": "Hello there"}], max_tokens=8, stream=True
        )
        assert len([c for c in stream if c.choices and c.choices[0].delta.content]) == 8
    client.chat.completions.create(model="standin-chat", messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
    client.embeddings.create(model="standin-embed", input="hello")


def test_prometheus_scrapes_the_demo(running: Running, prometheus: PrometheusServer) -> None:
    _traffic(running.demo)
    prometheus.wait_for('up{job="sluice"} == 1')
    ready = prometheus.wait_for('sluice_model_instances{model="standin-chat",state="ready"} >= 1')
    assert ready[0]["metric"]["cluster"] == "local"
    held = prometheus.wait_for('sluice_gate_held_requests{model="standin-chat"}')
    assert float(held[0]["value"][1]) == 0
    ttft = prometheus.wait_for('sluice_time_to_first_token_seconds_count{model="standin-chat"} >= 3')
    assert ttft[0]["metric"]["route"] == "chat"
    rate = prometheus.wait_for('sluice_output_tokens_per_second_count{model="standin-chat"} >= 4')
    assert rate
    tokens = prometheus.wait_for('sum(sluice_tokens_total{model="standin-chat",type="completion"}) >= 28')
    assert float(tokens[0]["value"][1]) == 3 * 8 + 4
    prometheus.wait_for("sluice_gate_sessions >= 1")
    prometheus.wait_for("sluice_accounting_backlog == 0")
    prometheus.wait_for('sluice_gate_reconnects_total{cluster="local"} == 0')


def test_every_dashboard_query_runs_on_prometheus(running: Running, prometheus: PrometheusServer) -> None:
    prometheus.wait_for('up{job="sluice"} == 1')
    names = set(prometheus.api("/api/v1/label/__name__/values"))
    page = subprocess.run(
        ["curl", "-sf", "-H", f"Authorization: Bearer {running.token}", f"{running.demo.url}/metrics"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    exposed = exposed_names(page)
    for expr in dashboard_queries():
        assert metric_names(expr) <= exposed, expr
        prometheus.api("/api/v1/query", query=expr)  # a syntax error is an error answer (RuntimeError)
    assert {"sluice_gate_held_requests", "sluice_model_instances", "sluice_accounting_backlog"} <= names


def _sluice(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "appliance.cli", *args], capture_output=True, text=True, cwd=ROOT, env=env, timeout=60, check=False
    )


def test_status_against_the_demo(running: Running) -> None:
    _traffic(running.demo)
    table = _sluice("status", "--url", running.demo.url, "--token-file", str(running.token_file))
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0] == "CLUSTERS" and any(line.startswith("local") and " up " in line for line in lines)
    assert any("standin-chat" in line and " ready " in line for line in lines)
    document = json.loads(_sluice("status", "--url", running.demo.url, "--token-file", str(running.token_file), "--json").stdout)
    chat = next(m for m in document["models"] if m["model"] == "standin-chat")
    assert chat["ready"] and chat["instances_ready"] >= 1 and chat["held"] == 0
    assert document["clusters"][0]["up"] and document["clusters"][0]["sessions"] >= 1
    assert document["requests_total"] >= 5


def test_reject_status_without_the_right_token(running: Running, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.token"
    wrong.write_text("x" * 32)
    wrong.chmod(0o600)
    answer = _sluice("status", "--url", running.demo.url, "--token-file", str(wrong))
    assert answer.returncode == 1 and "the metrics token was refused" in answer.stderr
    assert "Traceback" not in answer.stderr and "x" * 32 not in answer.stderr


def test_the_demo_start_is_in_its_audit_trail(running: Running) -> None:
    listing = _sluice("audit", "--database", str(running.database), "--json")
    assert listing.returncode == 0, listing.stderr
    kinds = [json.loads(line)["kind"] for line in listing.stdout.splitlines()]
    assert kinds[0] == "config_loaded"
    verified = _sluice("audit", "verify", "--database", str(running.database))
    assert verified.returncode == 0 and "intact" in verified.stdout
