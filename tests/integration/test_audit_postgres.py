"""The audit trail in a real PostgreSQL 15: chained across two writers, append-only, tampering found.

Needs ``asyncpg`` (like the PostgreSQL accounting tests, skipped without it) and the server binaries.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from policy.audit import AuditEvent, verify
from tests.conftest import ROOT, Cluster, free_port
from tests.integration.test_quotas_postgres import dsn  # noqa: F401 (the real server fixture)
from tests.services.serve import local_cluster_toml, start_serve

pytestmark = pytest.mark.integration

asyncpg = pytest.importorskip("asyncpg", reason="asyncpg is not installed (pip install asyncpg)")

KEY = b"p" * 32


def test_two_writers_one_chain_and_tampering_found(dsn: str) -> None:  # noqa: F811
    from appliance.audit import Query, open_store

    async def scenario() -> None:
        first = open_store("postgresql", dsn=dsn, key=KEY)
        second = open_store("postgresql", dsn=dsn, key=KEY)  # a second replica
        await asyncio.gather(
            *(
                (first if n % 2 else second).append(AuditEvent("key_created", f"replica{n % 2}", f"key{n}", {}, 1e9 + n))
                for n in range(20)
            )
        )
        records = await first.records()
        assert [r.seq for r in records] == list(range(1, 21))
        assert verify(records, await first.head(), KEY) == []
        connection = await asyncpg.connect(dsn)
        try:
            with pytest.raises(asyncpg.RaiseError, match="append-only"):
                await connection.execute("UPDATE audit SET actor = 'mallory' WHERE seq = 5")
            with pytest.raises(asyncpg.RaiseError, match="append-only"):
                await connection.execute("DELETE FROM audit WHERE seq = 20")
            # someone with the owner's rights drops the trigger and edits, deletes and truncates
            await connection.execute("ALTER TABLE audit DISABLE TRIGGER audit_append_only")
            await connection.execute("UPDATE audit SET actor = 'mallory' WHERE seq = 5")
            await connection.execute("DELETE FROM audit WHERE seq = 9 OR seq >= 19")
        finally:
            await connection.close()
        problems = {str(p) for p in verify(await first.records(), await first.head(), KEY)}
        assert "record 5: altered" in problems
        assert "record 10: missing_before" in problems
        assert any(p.startswith("truncated: the head says 20 records, 18 remain") for p in problems)
        filtered = await first.records(Query(actor="replica1"))
        assert {r.actor for r in filtered} == {"replica1"}
        await first.aclose()
        await second.aclose()

    asyncio.run(scenario())


def test_sluice_serve_audits_into_postgres(dsn: str, cluster: Cluster, tmp_path: Path) -> None:  # noqa: F811
    async def fresh_database() -> str:
        connection = await asyncpg.connect(dsn)
        try:
            await connection.execute("CREATE DATABASE audit_serve")
        finally:
            await connection.close()
        return dsn.rsplit("/", 1)[0] + "/audit_serve"

    (tmp_path / "usage.dsn").write_text(asyncio.run(fresh_database()))
    (tmp_path / "usage.dsn").chmod(0o600)
    body = "\n".join(
        [
            local_cluster_toml(cluster.gate_argv()),
            '[accounting]\nbackend = "postgresql"\ndsn_file = "usage.dsn"\njournal = "usage.journal"',
            "",
        ]
    )
    (tmp_path / "appliance.toml").write_text(body)
    config = str(tmp_path / "appliance.toml")
    upgraded = subprocess.run(
        [sys.executable, "-m", "appliance.cli", "db", "upgrade", "--config", config],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert upgraded.returncode == 0, upgraded.stderr
    served = start_serve(tmp_path, "appliance", free_port(), body)
    served.stop()
    listing = subprocess.run(
        [sys.executable, "-m", "appliance.cli", "audit", "--config", config, "--json"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert listing.returncode == 0, listing.stderr
    assert [json.loads(line)["kind"] for line in listing.stdout.splitlines()] == ["config_loaded"]
    verified = subprocess.run(
        [sys.executable, "-m", "appliance.cli", "audit", "verify", "--config", config],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert verified.returncode == 0 and "intact: 1 records" in verified.stdout
