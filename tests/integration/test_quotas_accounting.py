"""Accounting, metrics and logs of `sluice serve` as deployed.

- a row for every answered request survives ``kill -9`` right after the answer;
- ``sluice usage --config`` reports it per user, model and day;
- ``/metrics`` needs its token on the API address, and is open on the admin address;
- the logs are JSON lines with request ids, and a 429 carries Retry-After.
"""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from tests.conftest import ROOT, Cluster, free_port
from tests.services.serve import Served, api_keys_toml, local_cluster_toml, start_serve

pytestmark = pytest.mark.integration

KEY = "sk-accounting-" + "q" * 24
OTHER = "sk-accounting-other-" + "r" * 20
TOKEN = "metrics-" + "t" * 32
POLICY = '[users."limited"]\nrequests_per_minute = 2\n'


def _config(cluster: Cluster, directory: Path, admin: int | None = None) -> str:
    (directory / "metrics.token").write_text(TOKEN)
    (directory / "metrics.token").chmod(0o600)
    (directory / "quotas.toml").write_text(POLICY)
    return "\n".join(
        [
            local_cluster_toml(cluster.gate_argv()),
            api_keys_toml({KEY: ("ada", "ada-laptop"), OTHER: ("limited", "limited-key")}),
            '[quotas]\npolicy = "quotas.toml"',
            '[accounting]\npath = "usage.db"',
            '[metrics]\ntoken_file = "metrics.token"',
            f'admin_bind = "127.0.0.1:{admin}"' if admin is not None else "",
            "",
        ]
    )


@pytest.fixture(scope="module")
def served(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    directory = tmp_path_factory.mktemp("accounting")
    admin = free_port()
    running = start_serve(directory, "appliance", free_port(), _config(cluster, directory, admin=admin))
    running.env["ADMIN_PORT"] = str(admin)
    try:
        yield running
    finally:
        running.stop()


def _chat(url: str, key: str, max_tokens: int = 3, stream: bool = False) -> httpx2.Response:
    body = {
        "model": "standin-chat",
        "messages": [{"role": "user", "content": "hello"}],
        "max_tokens": max_tokens,
        "stream": stream,
    }
    return httpx2.post(f"{url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=30)


@pytest.mark.parametrize("stream", [False, True])
def test_a_row_survives_kill_9_right_after_the_answer(cluster: Cluster, tmp_path: Path, stream: bool) -> None:
    doomed = start_serve(tmp_path, "doomed", free_port(), _config(cluster, tmp_path))
    try:
        answer = _chat(doomed.url, KEY, 4, stream)
        assert answer.status_code == 200
        request_id = answer.headers["x-request-id"]
        doomed.kill()  # at once: no shutdown, no checkpoint, no flush
    finally:
        doomed.stop()
    with sqlite3.connect(tmp_path / "usage.db") as db:
        rows = db.execute(
            "SELECT request_id, user_id, key_id, model, route, status, completion_tokens, sealed,"
            " first_token_ms IS NOT NULL FROM usage"
        ).fetchall()
    assert rows == [(request_id, "ada", "ada-laptop", "standin-chat", "chat", 200, 4, 0, 1 if stream else 0)]


def test_every_answered_request_has_a_row_and_sluice_usage_reports_them(served: Served) -> None:
    answers = [_chat(served.url, KEY, n) for n in (1, 2, 3)]
    answers.append(_chat(served.url, KEY, 2, stream=True))
    embed = httpx2.post(
        f"{served.url}/v1/embeddings",
        json={"model": "standin-embed", "input": ["a", "b c"]},
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=30,
    )
    assert [a.status_code for a in answers] == [200] * 4 and embed.status_code == 200
    config = served.directory / "appliance.toml"
    report = subprocess.run(
        [sys.executable, "-m", "appliance.cli", "usage", "--config", str(config), "--format", "json"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    )
    rows = {(r["user"], r["model"]): r for r in json.loads(report.stdout)}
    chat, embeddings = rows[("ada", "standin-chat")], rows[("ada", "standin-embed")]
    assert chat["requests"] >= 4 and chat["completion_tokens"] >= 1 + 2 + 3 + 2 and chat["errors"] == 0
    assert embeddings["requests"] >= 1 and embeddings["prompt_tokens"] >= 3 and embeddings["completion_tokens"] == 0
    table = subprocess.run(
        [sys.executable, "-m", "appliance.cli", "usage", "--config", str(config)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    ).stdout
    assert re.search(r"^\d{4}-\d\d-\d\d\s+ada\s+standin-chat\s+\d+", table, re.MULTILINE)


def test_a_rejection_is_a_429_with_retry_after_and_is_accounted(served: Served) -> None:
    statuses = [_chat(served.url, OTHER).status_code for _ in range(4)]
    assert statuses == [200, 200, 429, 429]
    refused = _chat(served.url, OTHER)
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
    assert refused.json()["error"]["type"] == "rate_limit_error"
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    metrics = httpx2.get(f"{served.url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).text
    assert re.search(r'^sluice_quota_rejections_total\{limit="requests_per_minute",scope="user"\} [3-9]', metrics, re.MULTILINE)


def test_metrics_behind_a_token_and_on_the_admin_address(served: Served) -> None:
    assert _chat(served.url, KEY, 2, stream=True).status_code == 200
    assert httpx2.get(f"{served.url}/metrics").status_code == 401
    assert httpx2.get(f"{served.url}/metrics", headers={"Authorization": "Bearer nope"}).status_code == 401
    text = httpx2.get(f"{served.url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).text
    # Labels in prometheus-client's order (sorted by name).
    for pattern in (
        r'^sluice_requests_total\{model="standin-chat",route="chat",status="200"\} \d+',
        r'^sluice_request_duration_seconds_bucket\{le="\+Inf",model="standin-chat",route="chat"\} \d+',
        r'^sluice_time_to_first_token_seconds_count\{model="standin-chat",route="chat"\} [1-9]',
        r'^sluice_tokens_total\{model="standin-chat",route="chat",type="completion"\} \d+',
        r'^sluice_http_requests_total\{path="/v1/chat/completions",status="200"\} \d+',
        r'^sluice_requests_in_flight\{model="standin-chat"\} 0',
        r'^sluice_cluster_up\{cluster="local"\} 1',
        r'^sluice_model_ready\{cluster="local",model="standin-chat"\} 1',
        r'^sluice_gate_sessions\{cluster="local"\} 1',
    ):
        assert re.search(pattern, text, re.MULTILINE), pattern
    # The admin address serves the metrics, and nothing else.
    admin = f"http://127.0.0.1:{served.env['ADMIN_PORT']}"
    assert httpx2.get(f"{admin}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    assert httpx2.get(f"{admin}/v1/models", headers={"Authorization": f"Bearer {KEY}"}).status_code == 404


def test_logs_are_json_lines_with_request_ids(served: Served) -> None:
    answer = _chat(served.url, KEY, 2)
    request_id = answer.headers["x-request-id"]
    deadline = time.monotonic() + 5
    while request_id not in served.stderr.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)  # the request line is written as the answer ends
    complete = served.stderr.read_text().rpartition("\n")[0].splitlines()  # whole lines only
    lines = [json.loads(line) for line in complete]  # every line is JSON
    mine = [line for line in lines if line.get("request_id") == request_id]
    assert [line["event"] for line in mine] == ["request"]
    assert mine[0]["user"] == "ada" and mine[0]["model"] == "standin-chat" and mine[0]["status"] == 200
    assert mine[0]["completion_tokens"] == 2 and "latency_ms" in mine[0]


def test_reject_cut_stream_accounted_with_zero_tokens(served: Served) -> None:
    """Finding 11: a stream the client cuts is settled and accounted with the tokens it
    delivered (the gate's answer to the CANCEL carries the usage so far), not with 0."""
    prompt = "tell me a long story 3"  # the stand-in's natural answer: 2363 words, 5 ms each
    body = {"model": "standin-chat", "messages": [{"role": "user", "content": prompt}], "max_tokens": 2000, "stream": True}
    seen = 0
    with httpx2.stream(
        "POST", f"{served.url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=30
    ) as response:
        assert response.status_code == 200
        request_id = response.headers["x-request-id"]
        for line in response.iter_lines():
            seen += line.startswith("data: {")
            if seen >= 30:
                break
    row = None
    deadline = time.monotonic() + 15
    while row is None and time.monotonic() < deadline:
        time.sleep(0.2)
        with sqlite3.connect(served.directory / "usage.db") as db:
            row = db.execute(
                "SELECT status, prompt_tokens, completion_tokens FROM usage WHERE request_id = ?", (request_id,)
            ).fetchone()
    assert row is not None
    status, prompt_tokens, completion_tokens = row
    assert status == 499 and prompt_tokens == 6 and 30 <= completion_tokens < 2000, row


def test_usage_row_names_what_produced_the_answer(served: Served) -> None:
    answer = _chat(served.url, KEY, 2)
    assert answer.status_code == 200 and answer.headers["sluice-backend-version"] == "sluice-standin-1"
    request_id = answer.headers["x-request-id"]
    deadline = time.monotonic() + 10
    row = None
    while row is None and time.monotonic() < deadline:
        with sqlite3.connect(served.directory / "usage.db") as db:
            row = db.execute(
                "SELECT model_revision, backend_version, audio_ms FROM usage WHERE request_id = ?", (request_id,)
            ).fetchone()
        time.sleep(0.1)
    assert row == (None, "sluice-standin-1", 0)
