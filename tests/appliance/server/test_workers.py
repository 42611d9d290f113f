"""The worker supervisor (appliance.server.workers) with real spawned processes, and what workers share.

- a dead worker is started again; a graceful stop sends SIGTERM and waits for the drain;
- a worker that ignores SIGTERM is killed after the grace period;
- workers that keep dying make the parent give up (exit status 1);
- the listening socket is bound once and inherited;
- several processes appending to one SQLite audit trail keep its chain intact;
- metrics of several workers are summed (counters over every worker, live gauges over the live ones).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
from multiprocessing.process import BaseProcess
from pathlib import Path

import pytest

from appliance.audit import open_store
from appliance.metrics import Metrics
from appliance.metrics_shared import ENV, close_shared_metrics, forget_worker, shared_metrics_dir
from appliance.server.workers import Deaths, Supervisor, bind_socket, spawn_context
from policy.audit import AuditEvent, verify

# -- worker bodies (top-level: a spawned process imports them by name) -------------------------


def _exit_with(code: int) -> None:
    sys.exit(code)


def _until_term(marker: str) -> None:
    """Serve until SIGTERM, then 'drain' (write the marker) and exit 0."""
    stopped = False

    def term(*_: object) -> None:
        nonlocal stopped
        stopped = True

    signal.signal(signal.SIGTERM, term)
    Path(marker + ".ready").touch()
    deadline = time.monotonic() + 60
    while not stopped and time.monotonic() < deadline:
        time.sleep(0.02)
    Path(marker).write_text("drained")


def _deaf(ready: str) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    Path(ready).touch()
    time.sleep(60)


def _append(path: str, writer: int, count: int) -> None:
    async def run() -> None:
        store = open_store("sqlite", path=path)
        for n in range(count):
            await store.append(AuditEvent("key_created", f"writer-{writer}", f"key-{n}", {}))
        await store.aclose()

    asyncio.run(run())


def _count(worker: int, requests: int) -> None:
    metrics = Metrics(worker)
    metrics.http_requests.labels("/v1/chat/completions", "200").inc(requests)
    metrics.in_flight.labels("m").inc()


# -- the supervisor ------------------------------------------------------------------------------


def test_deaths_give_up_past_the_limit_within_the_window() -> None:
    deaths = Deaths(limit=3, window=10)
    assert not deaths.record(0) and not deaths.record(1)
    assert deaths.record(2)
    spaced = Deaths(limit=3, window=10)
    assert not spaced.record(0) and not spaced.record(1) and not spaced.record(20)


def test_restart_delay_grows_with_recent_deaths_and_is_capped() -> None:
    deaths = Deaths(limit=100, window=1000)
    delays = []
    for moment in range(8):
        deaths.record(moment)
        delays.append(deaths.delay())
    assert delays == sorted(delays) and delays[0] < delays[-1] == 5.0


def _spawn(target: object, *args: object) -> BaseProcess:
    process = spawn_context().Process(target=target, args=args)  # type: ignore[attr-defined]
    process.start()
    return process  # type: ignore[no-any-return]


def test_a_dead_worker_is_restarted_and_a_stop_drains_every_worker(tmp_path: Path) -> None:
    launched: list[int] = []

    def start(index: int) -> BaseProcess:
        launched.append(index)
        if launched.count(0) == 1 and index == 0:
            return _spawn(_exit_with, 3)  # worker 0 dies at once, the first time
        return _spawn(_until_term, str(tmp_path / f"drained-{len(launched)}"))

    async def run() -> tuple[int, Supervisor]:
        supervisor = Supervisor(start, 2)
        task = asyncio.create_task(supervisor.run())
        deadline = time.monotonic() + 30
        while len(list(tmp_path.glob("*.ready"))) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        supervisor.stop()
        return await task, supervisor

    status, supervisor = asyncio.run(run())
    assert status == 0
    assert supervisor.restarts == 1 and sorted(launched) == [0, 0, 1]
    assert sorted(p.name for p in tmp_path.glob("drained-?")) == ["drained-2", "drained-3"]


def test_a_worker_deaf_to_sigterm_is_killed_after_the_grace(tmp_path: Path) -> None:
    started: list[BaseProcess] = []

    def start(_: int) -> BaseProcess:
        started.append(_spawn(_deaf, str(tmp_path / "ready")))
        return started[-1]

    async def run() -> int:
        supervisor = Supervisor(start, 1, grace=1.0)
        task = asyncio.create_task(supervisor.run())
        deadline = time.monotonic() + 30
        while not (tmp_path / "ready").exists() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        supervisor.stop()
        return await task

    began = time.monotonic()
    assert asyncio.run(run()) == 0
    assert time.monotonic() - began < 20
    assert not started[0].is_alive() and started[0].exitcode == -signal.SIGKILL


def test_reject_workers_that_keep_dying() -> None:
    forgotten: list[int | None] = []

    def start(_: int) -> BaseProcess:
        return _spawn(_exit_with, 2)

    async def run() -> int:
        supervisor = Supervisor(start, 1, deaths=Deaths(limit=3, window=60), on_death=lambda p: forgotten.append(p.pid))
        return await asyncio.wait_for(supervisor.run(), 60)

    assert asyncio.run(run()) == 1
    assert len(forgotten) == 3 and None not in forgotten


# -- the shared socket and shared stores ---------------------------------------------------------


def test_the_socket_is_bound_once_listening_and_inheritable() -> None:
    sock = bind_socket("127.0.0.1", 0)
    try:
        assert sock.get_inheritable()
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
        port = sock.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass  # queued by the kernel before anyone accepts
        with pytest.raises(OSError):
            bind_socket("127.0.0.1", port).close()
    finally:
        sock.close()


def test_several_processes_keep_one_audit_chain_intact(tmp_path: Path) -> None:
    path = tmp_path / "usage.db"
    writers = [_spawn(_append, str(path), n, 25) for n in range(3)]
    for writer in writers:
        writer.join(60)
        assert writer.exitcode == 0
    store = open_store("sqlite", path=path, read_only=True)
    records = asyncio.run(store.records())
    head = asyncio.run(store.head())
    asyncio.run(store.aclose())
    assert len(records) == 75 and [r.seq for r in records] == list(range(1, 76))
    assert verify(records, head) == []


def test_metrics_of_several_workers_are_summed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV, raising=False)
    directory = shared_metrics_dir()
    try:
        workers = [_spawn(_count, n, 3 + n) for n in range(2)]
        for worker in workers:
            worker.join(60)
            assert worker.exitcode == 0
        forget_worker(directory, workers[0].pid)  # dead: its gauge no longer counts, its counter does
        text = Metrics().render().decode()
    finally:
        close_shared_metrics(directory)
    assert ENV not in os.environ and not directory.exists()
    assert 'sluice_http_requests_total{path="/v1/chat/completions",status="200"} 7.0' in text
    assert 'sluice_requests_in_flight{model="m"} 1.0' in text


def test_a_workers_gate_connection_statistics_carry_its_index() -> None:
    from appliance.catalog import ClusterSet
    from tests.appliance.test_metrics_gate_counts import LISTING, ListingTransport

    metrics = Metrics(worker=3)
    clusters = ClusterSet.single(ListingTransport(LISTING), "hpc")  # type: ignore[arg-type]
    text = metrics.render(asyncio.run(metrics.cluster_metrics(clusters))).decode()
    assert 'sluice_gate_reconnects_total{cluster="hpc",worker="3"} 3' in text
    assert 'sluice_gate_slots{cluster="hpc",worker="3"} 2' in text
    assert 'sluice_gate_held_requests{cluster="hpc",model="chat"} 4' in text  # the gates' view: the same from any worker
