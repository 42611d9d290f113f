"""The gate's side of scheduling: the routing table, least outstanding requests,
held requests for a model with no ready instance, and the load it publishes."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import pytest

from cluster.config import ClusterConfig, load_config
from cluster.routing import (
    Instance,
    Router,
    TableError,
    read_table,
    update_table,
    write_table,
)
from cluster.scheduler.availability import model_statuses
from policy.errors import NoBackend

CONFIG = """\
[gate]
routing_table = "routing.json"
[services.held]
backend = "local"
routes = ["chat"]
command = ["true"]
unsafe_plain_http = true
min_instances = 0
hold_queue = 2
hold_timeout = {hold_timeout}
[services.never]
backend = "local"
routes = ["chat"]
command = ["true"]
unsafe_plain_http = true
min_instances = 0
max_instances = 1
[[services.never.schedule]]
start = "00:00"
end = "00:00"
max_instances = 0
[services.unheld]
backend = "local"
routes = ["chat"]
command = ["true"]
unsafe_plain_http = true
hold_queue = 0
"""


def config(tmp_path: Path, hold_timeout: float = 5.0) -> ClusterConfig:
    (tmp_path / "cluster.toml").write_text(CONFIG.format(hold_timeout=hold_timeout))
    return load_config(tmp_path / "cluster.toml")


def publish(cfg: ClusterConfig, model: str, *instances: Instance) -> None:
    update_table(cfg.gate.routing_table, {model: instances}, set(cfg.model_routes()), cfg.gate.routing_table.parent / "t.lock")


def test_update_table_merges_writers_and_drops_unknown_models(tmp_path: Path) -> None:
    path, lock = tmp_path / "routing.json", tmp_path / "lock"
    a, b = Instance("slurm:1", "n1", 20001, "t1"), Instance("local:p9", "127.0.0.1", 20002, "t2")
    write_table(path, {"gone": [a]})
    assert update_table(path, {"chat": [a]}, {"chat", "embed"}, lock)
    assert update_table(path, {"embed": [b]}, {"chat", "embed"}, lock)
    assert read_table(path) == {"chat": (a,), "embed": (b,)}
    stamp = path.stat().st_mtime_ns
    assert not update_table(path, {"embed": [b]}, {"chat", "embed"}, lock)  # unchanged: not rewritten
    assert path.stat().st_mtime_ns == stamp
    path.write_text("{garbled")
    with pytest.raises(TableError):
        read_table(path)
    assert update_table(path, {"chat": []}, {"chat"}, lock) and read_table(path) == {"chat": ()}


def test_least_outstanding_requests(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    a, b = Instance("local:a", "127.0.0.1", 20001), Instance("local:b", "127.0.0.1", 20002)
    publish(cfg, "held", a, b)
    router = Router(cfg)
    first, second, third = (router.acquire("held") for _ in range(3))
    assert {first.id, second.id} == {"local:a", "local:b"}
    router.release(first)
    assert router.acquire("held") == first  # the one with fewer in flight, not a random one
    router.release(third)
    router.quarantine(a)
    assert all(router.acquire("held") == b for _ in range(3))


def test_held_request_is_served_when_an_instance_appears(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    router = Router(cfg)

    async def scenario() -> Instance:
        waiting = asyncio.create_task(router.wait_acquire("held"))
        await asyncio.sleep(0.3)
        assert router.held("held") == 1 and not waiting.done()
        publish(cfg, "held", Instance("local:a", "127.0.0.1", 20001))
        return await asyncio.wait_for(waiting, 2)

    assert asyncio.run(scenario()).id == "local:a"
    assert router.held("held") == 0


def test_hold_bounds(tmp_path: Path) -> None:
    cfg = config(tmp_path, hold_timeout=0.5)
    router = Router(cfg)

    async def scenario() -> None:
        holders = [asyncio.create_task(router.wait_acquire("held")) for _ in range(2)]
        await asyncio.sleep(0.05)
        started = time.monotonic()
        with pytest.raises(NoBackend):  # the queue holds two
            await router.wait_acquire("held")
        assert time.monotonic() - started < 0.1
        for task in holders:
            with pytest.raises(NoBackend):  # the wait is bounded
                await task
        assert 0.4 < time.monotonic() - started < 1.5
        for model in ("never", "unheld"):  # nothing may run now / holding is off: at once
            started = time.monotonic()
            with pytest.raises(NoBackend):
                await router.wait_acquire(model)
            assert time.monotonic() - started < 0.1

    asyncio.run(scenario())
    assert router.held("held") == 0 and not router.can_hold("never") and not router.can_hold("unheld")


def test_router_publishes_load_for_scheduled_models(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    publish(cfg, "held", Instance("local:a", "127.0.0.1", 20001))
    router = Router(cfg)
    instance = router.acquire("held")
    (path,) = list((cfg.gate.state / "load").iterdir())
    document = json.loads(path.read_text())
    assert document["pid"] == os.getpid() and document["models"]["held"]["in_flight"] == 1
    assert document["instances"] == {"local:a": 1}
    router.release(instance)
    router._meter.close()  # type: ignore[union-attr]
    assert json.loads(path.read_text())["models"]["held"]["in_flight"] == 0


def test_static_only_config_writes_no_load(tmp_path: Path) -> None:
    (tmp_path / "cluster.toml").write_text(
        '[gate]\nrouting_table = "routing.json"\n[[backends]]\nmodel = "s"\nurl = "http://127.0.0.1:9"\nroutes = ["chat"]\n'
    )
    router = Router(load_config(tmp_path / "cluster.toml"))
    router.release(router.acquire("s"))
    assert not (tmp_path / "state").exists()


def test_a_reader_never_sees_a_half_written_table(tmp_path: Path) -> None:
    import threading

    path = tmp_path / "routing.json"
    write_table(path, {})
    stop = threading.Event()

    def writer() -> None:
        size = 0
        while not stop.is_set():
            size = (size + 7) % 300
            write_table(path, {"m": [Instance(f"slurm:{i}", f"node{i:04d}", 20000 + i, "t" * 43) for i in range(size)]})

    thread = threading.Thread(target=writer)
    thread.start()
    seen: set[int] = set()
    deadline = time.monotonic() + 1.0
    try:
        while time.monotonic() < deadline or len(seen) < 3:
            seen.add(len(read_table(path).get("m", ())))  # TableError here would fail the test
    finally:
        stop.set()
        thread.join()
    assert len(seen) >= 3  # it really changed under the reader, which never saw a broken file


def test_model_status_for_listings(tmp_path: Path) -> None:
    """What /v1/models shows: ready, scaled to zero (a request is held), unavailable, starting."""
    cfg = config(tmp_path)
    (tmp_path / "extra.toml").write_text(
        CONFIG.format(hold_timeout=5.0)
        + """
[services.kept]
backend = "local"
routes = ["chat"]
command = ["true"]
min_instances = 1
unsafe_plain_http = true
"""
    )
    kept = load_config(tmp_path / "extra.toml")
    router = Router(cfg)

    def status(config: object, model: str, ready: int = 0) -> str:
        return model_statuses(config, {model: ready})[model].status  # type: ignore[arg-type]

    assert status(cfg, "held") == "scaled_to_zero"
    assert status(cfg, "never") == "unavailable"  # its schedule allows no instance now
    assert "unknown-model" not in model_statuses(cfg, {})
    assert status(kept, "kept") == "starting"  # the scheduler keeps one and has none ready yet
    publish(cfg, "held", Instance("local:a", "127.0.0.1", 20001))
    router.reload()
    assert len(router.instances("held")) == 1 and status(cfg, "held", len(router.instances("held"))) == "ready"
