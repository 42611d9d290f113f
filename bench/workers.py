"""Benchmark: `sluice serve` with ``[server] workers`` = 1, 2, ...: requests/s and CPU per request.

Every row runs the same stack: one stand-in model that answers at once, the
gate over pipes (mux; each worker starts its own gate sessions), SQLite
accounting, metrics and JSON request logs on, and quotas in Redis (several
workers cannot count quotas in memory: each would count alone, and
`sluice serve` refuses that configuration), with a policy that never refuses.
A reference row runs one worker with quotas in memory, the single-process
default.  Rows are interleaved (each round runs every row once, wrk with
``--connections`` for ``--seconds``); the table prints the median with the
min-max of the rounds, and CPU milliseconds per request of the appliance
(the parent and its workers), of the gates, and of Redis.

    .venv/bin/python bench/workers.py [--workers 1,2] [--rounds 3] [--seconds 5] [--connections 32]

Read the requests/s with the core count it prints: wrk, the workers, the
gates, Redis and the stand-in share those cores, so on a 2-core machine a
second worker has no core of its own and cannot show how throughput grows;
run it where the cores outnumber the workers for that.  Needs wrk and
redis-server; all traffic goes to 127.0.0.1, for a bounded time.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._load import free_port, wrk  # noqa: E402
from bench.compare import (  # noqa: E402
    MODEL,
    PLAIN,
    QUOTAS,
    Gateway,
    Sample,
    _children,
    _median_range,
    _stop,
    _tree,
    _wait_ok,
    backend,
    measure,
)


def _roles(serve: int, redis_pid: int | None) -> Callable[[], dict[str, list[int]]]:
    """The appliance (the parent and its workers), the gates they started, and Redis."""

    def roles() -> dict[str, list[int]]:
        tree = _children()
        appliance, gate = [], []
        for pid in _tree(serve, tree):
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            (gate if b"cluster.cli" in cmdline else appliance).append(pid)
        found = {"appliance": appliance, "gate": gate}
        if redis_pid is not None:
            found["redis"] = [redis_pid]
        return found

    return roles


def _toml(workdir: Path, name: str, port: int, gate_config: Path, key: str, workers: int, storage: str) -> Path:
    """The row's configuration; ``storage`` empty: quotas off."""
    argv = [sys.executable, "-m", "cluster.cli", "gate", "--config", str(gate_config), "--local-pipe"]
    command = ", ".join(f'"{a}"' for a in argv)
    (workdir / "quotas.toml").write_text(QUOTAS)
    (workdir / "metrics.token").write_text(secrets.token_urlsafe(24))
    (workdir / "access.toml").write_text(f'[groups.bench]\nmodels = ["{MODEL}"]\n')  # as deployed: default deny
    digest = hashlib.sha256(key.encode()).hexdigest()
    config = workdir / f"{name}.toml"
    quotas = f'[quotas]\npolicy = "quotas.toml"\nstorage = "{storage}"' if storage else "[quotas]\nenabled = false"
    config.write_text(
        f"""[server]
host = "127.0.0.1"
port = {port}
workers = {workers}

[[clusters]]
name = "local"
transport = "local"
mode = "mux"
gate_command = [{command}]

[[api_keys]]
user = "bench"
key_id = "{name}"
sha256 = "{digest}"

groups = ["bench"]

[access]
policy = "access.toml"

{quotas}

[accounting]
backend = "sqlite"
path = "{workdir / (name + "-usage.db")}"

[metrics]
token_file = "metrics.token"

[logging]
level = "info"
requests = true
"""
    )
    return config


@contextmanager
def appliance(
    workdir: Path, name: str, gate_config: Path, workers: int, storage: str, redis_pid: int | None
) -> Iterator[Gateway]:
    key = "sk-bench-" + secrets.token_urlsafe(24)
    port = free_port()
    config = _toml(workdir, name, port, gate_config, key, workers, storage)
    log = (workdir / f"{name}.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "appliance.cli", "serve", "--config", str(config)],
        cwd=workdir,
        stdout=log,
        stderr=log,
        stdin=subprocess.DEVNULL,
    )
    try:
        _wait_ok(f"http://127.0.0.1:{port}/readyz")
        yield Gateway(name, f"http://127.0.0.1:{port}/v1/chat/completions", key, _roles(process.pid, redis_pid))
    finally:
        _stop(process)
        log.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", default="1,2", help="worker counts to compare, e.g. 1,2,4 (default 1,2)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument(
        "--quotas", choices=("redis", "off"), default="redis", help="the worker rows' quotas: in Redis (default) or off"
    )
    args = parser.parse_args()
    counts = [int(n) for n in args.workers.split(",")]
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    from tests.services.redis import RedisServer

    workdir = Path(tempfile.mkdtemp(prefix="sluice-workers-"))
    results: dict[str, list[Sample]] = {}
    with ExitStack() as stack:
        api_base, token = stack.enter_context(backend(workdir))
        gate_config = workdir / "cluster.toml"
        (workdir / "chat.token").write_text(token)
        gate_config.write_text(
            f'[gate]\nrouting_table = "routing.json"\n[[backends]]\nmodel = "{MODEL}"\n'
            f'url = "{api_base}"\nroutes = ["chat", "completions"]\ntoken_file = "chat.token"\n'
        )
        storage, where, redis_pid = "", "off", None
        if args.quotas == "redis":
            redis = RedisServer()
            stack.callback(redis.close)
            storage, where, redis_pid = redis.url, "in Redis", int(redis.pidfile.read_text())
        gateways = [
            stack.enter_context(appliance(workdir, "w1-memory", gate_config, 1, "memory://", None)),
            *(stack.enter_context(appliance(workdir, f"w{n}", gate_config, n, storage, redis_pid)) for n in counts),
        ]
        names = {"w1-memory": "1 worker, quotas in memory"} | {f"w{n}": f"{n} worker(s), quotas {where}" for n in counts}
        for gateway in gateways:  # warm-up: every worker's gate sessions started
            wrk(gateway.url, gateway.key, args.connections, 2, workdir, body=PLAIN)
        for _ in range(args.rounds):
            for gateway in gateways:
                results.setdefault(gateway.name, []).append(measure(gateway, PLAIN, args.connections, args.seconds, workdir))
    shutil.rmtree(workdir, ignore_errors=True)
    print(
        f"\n{os.cpu_count()} cores (wrk, the appliance, gates, Redis and the stand-in share them); "
        f"{args.rounds} interleaved rounds of {args.seconds} s, {args.connections} connections; median (min-max)"
    )
    print(f"\n{'configuration':<30} {'req/s':>22} {'p50 ms':>20}  CPU ms per request")
    for name, samples in results.items():
        roles = sorted({role for sample in samples for role in sample.cpu_ms})
        parts = ", ".join(f"{role} {statistics.median(s.cpu_ms.get(role, 0.0) for s in samples):.3f}" for role in roles)
        total = statistics.median(sum(s.cpu_ms.values()) for s in samples)
        print(
            f"{names[name]:<30} {_median_range([s.rps for s in samples]):>22} "
            f"{_median_range([s.p50 for s in samples], 3):>20}  {total:.3f} ({parts})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
