"""Accounting in PostgreSQL (the option for several replicas) against a real server.

Needs the PostgreSQL server binaries (Debian: ``postgresql``) and ``asyncpg``;
skipped, saying so, where either is missing.  The server runs from a fresh
data directory on a loopback port for the module, as the ``postgres`` account
when the tests run as root.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from tests.conftest import ROOT, Cluster, free_port
from tests.services.serve import api_keys_toml, local_cluster_toml, start_serve

pytestmark = pytest.mark.integration

asyncpg = pytest.importorskip("asyncpg", reason="asyncpg is not installed (pip install asyncpg)")

KEY = "sk-postgres-" + "p" * 24


def _binaries() -> Path | None:
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (candidate / "initdb").exists() and (candidate / "pg_ctl").exists():
            return candidate
    return None


def _as_postgres(*argv: str) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else list(argv)


@pytest.fixture(scope="module")
def dsn() -> Iterator[str]:
    binaries = _binaries()
    if binaries is None:
        pytest.skip("PostgreSQL server binaries are not installed (apt-get install postgresql)")
    directory = Path(tempfile.mkdtemp(prefix="sluice-pg-"))
    if os.geteuid() == 0:
        shutil.chown(directory, "postgres")
    port = free_port()
    data = directory / "data"
    subprocess.run(_as_postgres(str(binaries / "initdb"), "-D", str(data), "-A", "trust", "-U", "sluice", "--no-sync",
                                "-E", "UTF8"), check=True, stdout=subprocess.DEVNULL)
    subprocess.run(_as_postgres(str(binaries / "pg_ctl"), "-D", str(data), "-l", str(directory / "log"), "-w", "-o",
                                f"-c listen_addresses=127.0.0.1 -p {port} -k {directory}", "start"),
                   check=True, stdout=subprocess.DEVNULL)
    try:
        yield f"postgresql://sluice@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(_as_postgres(str(binaries / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"),
                       check=False, stdout=subprocess.DEVNULL)
        shutil.rmtree(directory, ignore_errors=True)


def test_rows_and_report(dsn: str) -> None:
    from appliance.accounting import PostgresAccounting, UsageRow

    async def scenario() -> None:
        store = PostgresAccounting(dsn)
        await store.start()
        try:
            now = time.time()
            for user, sealed in (("alice", False), ("alice", True), ("bob", False)):
                await store.record(UsageRow(now, "req_x", user, "k", "m1", "chat", 200, 10, 5, 3.5, None, sealed))
            await store.record(UsageRow(now, "req_y", "alice", None, "m1", "chat", 429, 0, 0, 0.5, None, False))
            connection = await asyncpg.connect(dsn)
            try:
                assert await connection.fetchval("SELECT COUNT(*) FROM usage") == 4  # committed on return
            finally:
                await connection.close()
            from appliance.accounting._rows import day_of

            today = day_of(now)
            rows = await store.report(today, today)
            assert [(r.user, r.requests, r.errors, r.sealed, r.prompt_tokens) for r in rows] == [
                ("alice", 3, 1, 1, 20), ("bob", 1, 0, 0, 10)]
            assert [r.user for r in await store.report(today, today, user="bob")] == ["bob"]
        finally:
            await store.aclose()

    asyncio.run(scenario())


def test_sluice_serve_accounts_in_postgres(dsn: str, cluster: Cluster, tmp_path: Path) -> None:
    (tmp_path / "usage.dsn").write_text(dsn)
    (tmp_path / "usage.dsn").chmod(0o600)
    body = "\n".join([local_cluster_toml(cluster.gate_argv()), api_keys_toml({KEY: ("pg-user", "pg-key")}),
                      '[accounting]\nbackend = "postgresql"\ndsn_file = "usage.dsn"', ""])
    served = start_serve(tmp_path, "appliance", free_port(), body)
    try:
        answer = httpx2.post(f"{served.url}/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"}, timeout=30,
                            json={"model": "standin-chat", "messages": [{"role": "user", "content": "x"}], "max_tokens": 3})
        assert answer.status_code == 200
    finally:
        served.stop()
    report = subprocess.run([sys.executable, "-m", "appliance.cli", "usage", "--config", str(tmp_path / "appliance.toml"),
                             "--format", "json", "--user", "pg-user"], capture_output=True, text=True, cwd=ROOT, check=True)
    rows = json.loads(report.stdout)
    assert len(rows) == 1 and rows[0]["requests"] == 1 and rows[0]["completion_tokens"] == 3
