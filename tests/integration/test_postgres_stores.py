"""The PostgreSQL stores against a real server: schema versions, the identity store, the journal.

Two store objects on one database stand for two replicas.  The server is
stopped mid-test for the outage cases.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from appliance.accounting import PostgresAccounting, UsageRow
from appliance.auth._db import PostgresDatabase
from appliance.auth.base import IdentityUnavailable
from appliance.auth.identity import Identity
from appliance.auth.keystore import KeyStore
from appliance.auth.sessions import SessionStore
from appliance.auth.users import UserDirectory
from appliance.migrations import SchemaError, latest
from tests.conftest import ROOT
from tests.services.postgres import PostgresServer

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server() -> Iterator[PostgresServer]:
    server = PostgresServer()
    try:
        yield server
    finally:
        server.close()


def _config(directory: Path, dsn: str) -> Path:
    (directory / "db.dsn").write_text(dsn)
    (directory / "db.dsn").chmod(0o600)
    config = directory / "appliance.toml"
    config.write_text(
        '[[clusters]]\nname = "local"\ntransport = "local"\ngate_command = ["true", "--local-pipe"]\n\n'
        '[auth]\ndatabase_dsn_file = "db.dsn"\n\n'
        '[accounting]\nbackend = "postgresql"\ndsn_file = "db.dsn"\njournal = "usage.journal"\n'
    )
    return config


def _db(config: Path, action: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "appliance.cli", "db", action, "--config", str(config)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )


def _row(request_id: str) -> UsageRow:
    return UsageRow(time.time(), request_id, "alice", "k", "m1", "chat", 200, 10, 5, 3.5, None, False)


def test_reject_start_until_db_upgrade_then_on_a_newer_schema(server: PostgresServer, tmp_path: Path) -> None:
    dsn = server.create_database("versions")
    config = _config(tmp_path, dsn)

    async def start_both() -> None:
        identity, accounting = PostgresDatabase(dsn), PostgresAccounting(dsn, tmp_path / "j")
        try:
            await identity.start()
            await accounting.start()
        finally:
            await identity.aclose()
            await accounting.aclose()

    with pytest.raises(SchemaError, match="run `sluice db upgrade --config"):
        asyncio.run(start_both())
    # `sluice serve` on that database stops at once and says what to run.
    served = subprocess.run(
        [sys.executable, "-m", "appliance.cli", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert served.returncode == 2 and "run `sluice db upgrade --config" in served.stderr, served.stderr
    assert "needs" in _db(config, "status").stdout
    upgraded = _db(config, "upgrade")
    assert upgraded.returncode == 0, upgraded.stderr
    assert f"identity\tpostgresql\tversion {latest('identity')} (current)" in upgraded.stdout
    assert _db(config, "upgrade").returncode == 0  # again: nothing to do
    asyncio.run(start_both())
    # A newer release wrote the schema: this one refuses to start, and upgrade refuses to touch it.
    server.psql(f"UPDATE schema_version SET version = {latest('accounting') + 1} WHERE store = 'accounting'", "versions")
    with pytest.raises(SchemaError, match="newer than this Sluice knows"):
        asyncio.run(start_both())
    refused = _db(config, "upgrade")
    assert refused.returncode == 1 and "newer than this Sluice knows" in refused.stderr


def test_identity_shared_by_two_replicas_and_closed_while_away(server: PostgresServer, tmp_path: Path) -> None:
    dsn = server.create_database("identity")
    assert _db(_config(tmp_path, dsn), "upgrade").returncode == 0

    async def scenario() -> None:
        a, b = PostgresDatabase(dsn), PostgresDatabase(dsn)
        await a.start()
        await b.start()
        try:
            users_a, users_b = UserDirectory(a, 86400), UserDirectory(b, 86400)
            keys_a, keys_b = KeyStore(a, users_a), KeyStore(b, users_b)
            await users_a.record(Identity("iss#alice", "a@example.org", "Alice", frozenset({"staff"})), "oidc")
            key, info = await keys_a.create("iss#alice", "laptop", ["m1"])
            principal = await keys_b.verify(key)
            assert principal is not None and principal.groups == frozenset({"staff"})
            assert principal.scope == frozenset({"m1"})
            # A group change and a revocation on one replica hold on the other at once (nothing is cached).
            await users_b.set_groups("iss#alice", frozenset({"guests"}))
            assert (await keys_a.verify(key)).groups == frozenset({"guests"})  # type: ignore[union-attr]
            assert await keys_b.revoke(info.id)
            assert await keys_a.verify(key) is None
            sessions_a, sessions_b = SessionStore(a, 60), SessionStore(b, 60)
            sid = await sessions_a.create("iss#alice", None)
            assert (await sessions_b.get(sid)).user == "iss#alice"  # type: ignore[union-attr]
            await sessions_b.delete(sid)
            assert await sessions_a.get(sid) is None
            live, _ = await keys_a.create("iss#alice", "other")
            server.stop()
            try:
                started = time.monotonic()
                with pytest.raises(IdentityUnavailable):
                    await keys_a.verify(live)  # fails closed, and soon
                assert time.monotonic() - started < 5
            finally:
                server.start()
            assert await keys_a.verify(live) is not None  # the pool reconnects by itself
        finally:
            await a.aclose()
            await b.aclose()

    asyncio.run(scenario())


def test_rows_wait_in_the_journal_while_away_and_are_written_once(server: PostgresServer, tmp_path: Path) -> None:
    dsn = server.create_database("journal")
    assert _db(_config(tmp_path, dsn), "upgrade").returncode == 0
    journal = tmp_path / "usage.journal"
    replaying = tmp_path / "usage.journal.replaying"

    async def count() -> int:
        connection = await asyncpg.connect(dsn)
        try:
            return int(await connection.fetchval("SELECT COUNT(*) FROM usage"))
        finally:
            await connection.close()

    async def scenario() -> None:
        store = PostgresAccounting(dsn, journal)
        await store.start()
        try:
            await store.record(_row("req_before"))
            server.stop()
            try:
                for n in range(20):
                    await store.record(_row(f"req_away_{n}"))  # returns: the row is in the journal, fsync'd
                # In the journal, or in the part of it a replay attempt has set aside.
                kept = "".join(p.read_text() for p in (journal, replaying) if p.exists())
                assert len(kept.splitlines()) == 20 and "req_away_19" in kept
                assert all(p.stat().st_mode & 0o077 == 0 for p in (journal, replaying) if p.exists())  # owner only
                # A replica that crashes now keeps its journal: a copy stands for the file after the crash.
                (tmp_path / "crash-copy").write_text(kept)
            finally:
                server.start()
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and (journal.exists() or replaying.exists() or await count() < 21):
                await asyncio.sleep(0.1)
            assert await count() == 21 and not journal.exists() and not replaying.exists()
            await store.record(_row("req_after"))
        finally:
            await store.aclose()
        # The crashed replica starts again and replays the same rows: none is written twice.
        journal.write_text((tmp_path / "crash-copy").read_text())
        again = PostgresAccounting(dsn, journal)
        await again.start()
        try:
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and journal.exists():
                await asyncio.sleep(0.1)
        finally:
            await again.aclose()
        assert await count() == 22 and not journal.exists()

    asyncio.run(scenario())
