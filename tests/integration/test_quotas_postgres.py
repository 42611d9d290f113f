"""Accounting in PostgreSQL (the option for several replicas) against a real server.

Needs the PostgreSQL server binaries and ``asyncpg``, which ``scripts/test``
installs (apt ``postgresql``; the test lock's ``postgres`` extra): it never
skips.  The server runs from a fresh data directory on a loopback port for
the module (:class:`tests.services.postgres.PostgresServer`).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx2
import pytest

from tests.conftest import ROOT, Cluster, free_port
from tests.services.postgres import PostgresServer
from tests.services.serve import api_keys_toml, local_cluster_toml, start_serve

pytestmark = pytest.mark.integration

KEY = "sk-postgres-" + "p" * 24


@pytest.fixture(scope="module")
def dsn() -> Iterator[str]:
    server = PostgresServer()
    try:
        dsn = server.dsn()
        asyncio.run(_upgrade(dsn))
        yield dsn
    finally:
        server.close()


async def _upgrade(dsn: str) -> None:
    from appliance.migrations import postgres_upgrade

    connection = await asyncpg.connect(dsn)
    try:
        await postgres_upgrade(connection, "accounting", "test")
    finally:
        await connection.close()


def test_rows_and_report(dsn: str) -> None:
    from appliance.accounting import PostgresAccounting, UsageRow

    async def scenario() -> None:
        store = PostgresAccounting(dsn)
        await store.start()
        try:
            now = time.time()
            for n, (user, sealed) in enumerate((("alice", False), ("alice", True), ("bob", False))):
                await store.record(UsageRow(now, f"req_x{n}", user, "k", "m1", "chat", 200, 10, 5, 3.5, None, sealed))
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
                ("alice", 3, 1, 1, 20),
                ("bob", 1, 0, 0, 10),
            ]
            assert [r.user for r in await store.report(today, today, user="bob")] == ["bob"]
        finally:
            await store.aclose()

    asyncio.run(scenario())


def test_sluice_serve_accounts_in_postgres(dsn: str, cluster: Cluster, tmp_path: Path) -> None:
    (tmp_path / "usage.dsn").write_text(dsn)
    (tmp_path / "usage.dsn").chmod(0o600)
    body = "\n".join(
        [
            local_cluster_toml(cluster.gate_argv()),
            api_keys_toml({KEY: ("pg-user", "pg-key")}),
            '[accounting]\nbackend = "postgresql"\ndsn_file = "usage.dsn"\njournal = "usage.journal"',
            "",
        ]
    )
    served = start_serve(tmp_path, "appliance", free_port(), body)
    try:
        answer = httpx2.post(
            f"{served.url}/v1/chat/completions",
            headers={"Authorization": f"Bearer {KEY}"},
            timeout=30,
            json={"model": "standin-chat", "messages": [{"role": "user", "content": "x"}], "max_tokens": 3},
        )
        assert answer.status_code == 200
    finally:
        served.stop()
    report = subprocess.run(
        [
            sys.executable,
            "-m",
            "appliance.cli",
            "usage",
            "--config",
            str(tmp_path / "appliance.toml"),
            "--format",
            "json",
            "--user",
            "pg-user",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    )
    rows = json.loads(report.stdout)
    assert len(rows) == 1 and rows[0]["requests"] == 1 and rows[0]["completion_tokens"] == 3
