"""Benchmark: one appliance replica against two behind HAProxy, and accounting on PostgreSQL vs SQLite.

Part 1 runs the multi-replica stack as docs/operator-scale.md describes it:
PostgreSQL (identity and accounting), Redis (quotas), HAProxy
(tests/services/haproxy.py, the guide's configuration), `sluice serve`
replicas with the gate over pipes (mux), and a stand-in model that answers
at once.  wrk sends small chat requests with an API key from the database;
it prints requests/s and p50/p99 for one replica called directly and for
two replicas through HAProxy.  Everything shares this machine's cores, so
the second replica competes with the first for CPU: read the ratio with
the core count in mind.

Part 2 is the cost of one usage row in each store, measured in-process:
sequential ``record`` calls (each waits for its commit), and 64 at once.

    .venv/bin/python bench/replicas.py [--seconds 10]

Needs the PostgreSQL server binaries, redis-server, haproxy and wrk (scripts/test
installs them).  All traffic goes to 127.0.0.1, for a bounded time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _load import free_port, wrk  # noqa: E402

from tests.conftest import start_standin, stop, write_static_config  # noqa: E402
from tests.services.haproxy import HAProxy  # noqa: E402
from tests.services.postgres import PostgresServer  # noqa: E402
from tests.services.redis import RedisServer  # noqa: E402
from tests.services.serve import local_cluster_toml, start_serve  # noqa: E402

QUOTAS = "[user]\nrequests_per_minute = 100000000\ntokens_per_minute = 100000000\nconcurrent_requests = 10000\n"


def _body(gate: list[str], redis: RedisServer, name: str) -> str:
    return "\n".join(
        [
            local_cluster_toml(gate),
            "[auth]",
            'database_dsn_file = "db.dsn"',
            "",
            "[access]",
            'policy = "access.toml"',
            "",
            "[quotas]",
            'policy = "quotas.toml"',
            f'storage = "{redis.url}"',
            "storage_timeout = 2",
            "",
            "[accounting]",
            'backend = "postgresql"',
            'dsn_file = "db.dsn"',
            f'journal = "{name}.journal"',
            "",
            "[logging]",
            "requests = false",
            "",
        ]
    )


def _cli(workdir: Path, gate: list[str], redis: RedisServer, *argv: str) -> str:
    config = workdir / "setup.toml"
    config.write_text("[server]\nport = 1\n" + _body(gate, redis, "setup"))
    done = subprocess.run(
        [sys.executable, "-m", "appliance.cli", *argv, "--config", str(config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


def replicas(seconds: int, workdir: Path) -> list[tuple[str, int, dict[str, float]]]:
    postgres, redis = PostgresServer(), RedisServer()
    standin = start_standin("standin-chat", "chat")
    served = []
    proxy = None
    rows = []
    try:
        cluster = write_static_config(workdir, [("standin-chat", "127.0.0.1", standin.port, standin.token, ["chat"])])
        gate = [sys.executable, "-m", "cluster.cli", "gate", "--config", str(cluster), "--local-pipe"]
        for name, text in (
            ("db.dsn", postgres.dsn()),
            ("access.toml", '[groups.bench]\nmodels = ["*"]\n'),
            ("quotas.toml", QUOTAS),
        ):
            (workdir / name).write_text(text)
            (workdir / name).chmod(0o600)
        _cli(workdir, gate, redis, "db", "upgrade")
        key = _cli(workdir, gate, redis, "keys", "create", "--user", "bench", "--name", "b", "--groups", "bench")
        for name in ("a", "b"):
            served.append(start_serve(workdir, name, free_port(), _body(gate, redis, name), ready_path="/readyz"))
        one = f"{served[0].url}/v1/chat/completions"
        wrk(one, key, 4, 2, workdir)  # warm-up
        for connections in (1, 16):
            rows.append(("one replica", connections, wrk(one, key, connections, seconds, workdir)))
        proxy = HAProxy(free_port(), [(s.name, f"127.0.0.1:{s.port}") for s in served])
        proxy.wait_ready()
        both = f"{proxy.url}/v1/chat/completions"
        wrk(both, key, 4, 2, workdir)
        for connections in (1, 16):
            rows.append(("two replicas + HAProxy", connections, wrk(both, key, connections, seconds, workdir)))
    finally:
        if proxy is not None:
            proxy.close()
        for replica in served:
            replica.stop()
        stop(standin.process)
        redis.close()
        postgres.close()
    return rows


async def _record_cost(store: object, rounds: int) -> tuple[float, float]:
    from appliance.accounting import UsageRow

    def row(n: int) -> UsageRow:
        return UsageRow(time.time(), f"req_bench_{id(store)}_{n}", "bench", "k", "m", "chat", 200, 10, 5, 3.0, None, False)

    await store.start()  # type: ignore[attr-defined]
    try:
        for n in range(50):  # warm-up
            await store.record(row(-n - 1))  # type: ignore[attr-defined]
        started = time.perf_counter()
        for n in range(rounds):
            await store.record(row(n))  # type: ignore[attr-defined]
        sequential = (time.perf_counter() - started) / rounds
        started = time.perf_counter()
        for batch in range(rounds // 64):
            await asyncio.gather(
                *(
                    store.record(row(rounds + batch * 64 + i), True)  # type: ignore[attr-defined]
                    for i in range(64)
                )
            )
        concurrent = (time.perf_counter() - started) / (rounds // 64 * 64)
    finally:
        await store.aclose()  # type: ignore[attr-defined]
    return sequential, concurrent


def accounting_cost(workdir: Path, rounds: int) -> list[tuple[str, float, float]]:
    from appliance.accounting import PostgresAccounting, SqliteAccounting
    from appliance.migrations import postgres_upgrade

    postgres = PostgresServer()
    results = []
    try:

        async def upgrade() -> None:
            import asyncpg

            connection = await asyncpg.connect(postgres.dsn())
            await postgres_upgrade(connection, "accounting", "bench")
            await connection.close()

        asyncio.run(upgrade())
        for name, store in (
            ("sqlite (synchronous=normal)", SqliteAccounting(workdir / "usage.db")),
            ("sqlite (synchronous=full)", SqliteAccounting(workdir / "usage-full.db", synchronous="full")),
            ("postgresql (fsync=off, test server)", PostgresAccounting(postgres.dsn(), workdir / "pg.journal")),
        ):
            sequential, concurrent = asyncio.run(_record_cost(store, rounds))
            results.append((name, sequential, concurrent))
    finally:
        postgres.close()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rows", type=int, default=2000)
    args = parser.parse_args()
    for tool in ("wrk", "haproxy", "redis-server"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            raise SystemExit(f"{tool} is not installed (scripts/test installs it)")
    workdir = Path(tempfile.mkdtemp(prefix="sluice-bench-replicas-"))
    try:
        rows = replicas(args.seconds, workdir)
        costs = accounting_cost(workdir, args.rows)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"\ncores: {os.cpu_count()}")
    print(f"{'path':<28} {'in flight':>9} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8}")
    for name, connections, result in rows:
        print(f"{name:<28} {connections:>9} {result['rps']:>9.0f} {result['p50']:>8.3f} {result['p99']:>8.3f}")
    best_one = max(r["rps"] for n, _, r in rows if n == "one replica")
    best_two = max(r["rps"] for n, _, r in rows if n != "one replica")
    print(f"two replicas / one: {best_two / best_one:.2f}x requests/s")
    print(f"\n{'accounting store':<38} {'sequential us/row':>18} {'64 at once us/row':>18}")
    for name, sequential, concurrent in costs:
        print(f"{name:<38} {sequential * 1e6:>18.1f} {concurrent * 1e6:>18.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
