"""`sluice serve` with ``[server] workers = 2``: real worker processes on one port.

- both workers serve requests on the one port;
- a killed worker is started again, and requests go on being answered;
- /metrics shows the whole appliance from any worker (counters summed over every worker);
- SIGTERM drains: a stream in flight ends whole, then everything exits 0;
- the audit trail's chain stays intact with several writers, and the start is recorded once;
- quotas in memory with several workers are refused at start, naming the fix.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from appliance.audit import open_store
from policy.audit import verify
from tests.conftest import ROOT, Cluster, free_port
from tests.services.serve import Served, api_keys_toml, local_cluster_toml, start_serve

pytestmark = pytest.mark.integration

KEY = "sk-workers-" + "w" * 24
TOKEN = "metrics-" + "m" * 32
WORKERS = 2


def _config(cluster: Cluster, directory: Path) -> str:
    (directory / "metrics.token").write_text(TOKEN)
    (directory / "metrics.token").chmod(0o600)
    return "\n".join(
        [
            local_cluster_toml(cluster.gate_argv()),
            api_keys_toml({KEY: ("ada", "ada-laptop")}),
            "[quotas]\nenabled = false",  # several workers need quotas in Redis (or none); see the refusal test
            '[accounting]\npath = "usage.db"',
            '[metrics]\ntoken_file = "metrics.token"',
            "",
        ]
    )


def _workers(parent: int) -> list[int]:
    """The parent's worker processes (spawned interpreters), by pid."""
    pids = []
    for task in Path(f"/proc/{parent}/task").iterdir():
        children = (task / "children").read_text().split()
        for child in children:
            try:
                cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
            except FileNotFoundError:
                continue
            if b"spawn_main" in cmdline:
                pids.append(int(child))
    return sorted(pids)


def _wait_workers(parent: int, count: int, excluding: set[int] = frozenset(), timeout: float = 60) -> list[int]:  # type: ignore[assignment]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = _workers(parent)
        if len(pids) == count and not excluding & set(pids):
            return pids
        time.sleep(0.1)
    raise AssertionError(f"workers of {parent}: {_workers(parent)}, wanted {count} not in {excluding}")


def _cpu(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def _chat(url: str, max_tokens: int = 3, stream: bool = False, timeout: float = 30) -> httpx2.Response:
    body = {"model": "standin-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": max_tokens, "stream": stream}
    return httpx2.post(f"{url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=timeout)


async def _many(url: str, count: int, concurrency: int) -> list[int]:
    """``count`` chat requests over ``concurrency`` connections opened at once (new ones: any worker may take them)."""
    statuses: list[int] = []
    body = b'{"model":"standin-chat","messages":[{"role":"user","content":"hi"}],"max_tokens":2}'
    port = int(url.rsplit(":", 1)[1])

    async def client(n: int) -> None:
        for _ in range(n):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(
                b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                b"authorization: Bearer " + KEY.encode() + b"\r\nconnection: close\r\n"
                b"content-length: %d\r\n\r\n%s" % (len(body), body)
            )
            await writer.drain()
            head = await reader.readline()
            statuses.append(int(head.split()[1]))
            await reader.read()
            writer.close()

    assert count % concurrency == 0
    await asyncio.gather(*(client(count // concurrency) for _ in range(concurrency)))
    return statuses


def _served_requests(url: str) -> float:
    text = httpx2.get(f"{url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10).text
    pattern = r'^sluice_http_requests_total\{path="/v1/chat/completions",status="200"\} ([0-9.e+]+)$'
    return sum(float(m) for m in re.findall(pattern, text, re.MULTILINE))


@pytest.fixture
def served(cluster: Cluster, tmp_path: Path) -> Iterator[Served]:
    running = start_serve(tmp_path, "workers", free_port(), _config(cluster, tmp_path), server=f"workers = {WORKERS}")
    try:
        yield running
    finally:
        running.stop()


def test_workers_share_the_port_and_a_killed_one_is_restarted(served: Served) -> None:
    pids = _wait_workers(served.process.pid, WORKERS)
    before = {pid: _cpu(pid) for pid in pids}
    statuses = asyncio.run(_many(served.url, 192, 16))
    assert statuses == [200] * 192
    used = {pid: _cpu(pid) - before[pid] for pid in pids}
    assert all(ticks > 0 for ticks in used.values()), used  # each worker did request work
    # The metrics are the whole appliance's, whichever worker answers the scrape.
    counts = {_served_requests(served.url) for _ in range(6)}
    assert counts == {192.0}, counts
    # A crash: the worker is started again, and its counters are not lost.
    os.kill(pids[0], signal.SIGKILL)
    renewed = _wait_workers(served.process.pid, WORKERS, excluding={pids[0]})
    assert pids[1] in renewed
    for _ in range(20):
        assert _chat(served.url).status_code == 200
    assert {_served_requests(served.url) for _ in range(6)} == {212.0}
    assert served.process.poll() is None


def test_sigterm_drains_a_stream_in_flight_then_exits_0(served: Served) -> None:
    _wait_workers(served.process.pid, WORKERS)
    result: dict[str, object] = {}

    def stream() -> None:
        response = _chat(served.url, max_tokens=300, stream=True)  # 300 tokens at 5 ms: about 1.5 s
        result["status"], result["body"] = response.status_code, response.text

    thread = threading.Thread(target=stream)
    thread.start()
    time.sleep(0.5)
    served.process.send_signal(signal.SIGTERM)
    assert served.process.wait(60) == 0
    thread.join(30)
    assert result["status"] == 200
    assert str(result["body"]).rstrip().endswith("data: [DONE]")
    # Every worker wrote to the one audit chain; it verifies, and the start is recorded once.
    store = open_store("sqlite", path=served.directory / "usage.db", read_only=True)
    records = asyncio.run(store.records())
    head = asyncio.run(store.head())
    asyncio.run(store.aclose())
    assert verify(records, head) == []
    assert [r.kind for r in records].count("config_loaded") == 1


def test_reject_workers_with_quotas_in_memory(cluster: Cluster, tmp_path: Path) -> None:
    config = tmp_path / "sluice.toml"
    config.write_text(f"[server]\nworkers = 2\n\n{local_cluster_toml(cluster.gate_argv())}\n[access]\nunsafe_allow_all = true\n")
    done = subprocess.run(
        [sys.executable, "-m", "appliance.cli", "serve", "--config", str(config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "server.workers" in done.stderr and "quotas.storage" in done.stderr and "Redis" in done.stderr
