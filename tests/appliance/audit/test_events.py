"""Security and admin events reach the audit trail: keys, groups, and the CLI with a configuration."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.audit import AuditTrail, install, open_store
from appliance.auth._db import open_database
from appliance.auth.identity import Identity
from appliance.auth.keystore import KeyStore
from appliance.auth.users import UserDirectory
from appliance.cli import main
from policy.audit import AuditRecord, verify


def _records(path: Path) -> list[AuditRecord]:
    async def go() -> list[AuditRecord]:
        store = open_store("sqlite", path=path, read_only=True)
        try:
            records = await store.records()
            assert verify(records, await store.head()) == []
            return records
        finally:
            await store.aclose()

    return asyncio.run(go())


@pytest.fixture
def trail(tmp_path: Path) -> Iterator[tuple[AuditTrail, Path]]:
    path = tmp_path / "usage.db"
    trail = AuditTrail(open_store("sqlite", path=path))
    previous = install(trail)
    yield trail, path
    install(previous)
    trail.close()


class Clock:
    now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def test_key_and_group_events(tmp_path: Path, trail: tuple[AuditTrail, Path]) -> None:
    writer, path = trail
    clock = Clock()

    async def scenario() -> tuple[str, object, object]:
        db = open_database(tmp_path / "auth.sqlite3")
        users = UserDirectory(db, groups_max_age=86400 * 30, clock=clock)
        keys = KeyStore(db, users, clock=clock)
        await users.record(Identity("alice", None, None, frozenset({"staff"})), "oidc")
        await users.record(Identity("alice", None, None, frozenset({"staff"})), "oidc")  # unchanged: no event
        await users.record(Identity("alice", None, None, frozenset({"staff", "gpu"})), "oidc")
        secret, info = await keys.create("alice", "laptop", ["standin-chat"], clock.now + 60, created_by="web")
        _, other = await keys.create("alice", "batch", None, None, created_by="cli")
        clock.now += 120
        assert await keys.verify(secret) is None
        assert await keys.verify(secret) is None  # noticed once
        assert await keys.revoke(other.id, owner="alice")
        assert await keys.revoke_user("alice") == 1  # the expired one
        await db.aclose()
        return secret, info, other

    secret, info, other = asyncio.run(scenario())
    assert writer.flush()
    events = [(r.kind, r.actor, r.subject) for r in _records(path)]
    assert events == [
        ("groups_changed", "oidc", "alice"),
        ("groups_changed", "oidc", "alice"),
        ("key_created", "web", info.id),
        ("key_scoped", "web", info.id),
        ("key_created", "cli", other.id),
        ("key_expired", "alice", info.id),
        ("key_revoked", "alice", other.id),
        ("key_revoked", "operator", "user:alice"),
    ]
    details = [r.details for r in _records(path)]
    assert details[1] == {"added": "gpu", "removed": ""} and details[3]["models"] == "standin-chat"
    assert secret not in path.read_bytes().decode("latin-1")  # never a key, only its id


def test_cli_key_actions_with_a_configuration_are_audited(tmp_path: Path) -> None:
    (tmp_path / "appliance.toml").write_text(f"""\
[[clusters]]
name = "local"
transport = "local"
gate_command = ["true", "--local-pipe"]

[auth]
database = "{tmp_path / "auth.sqlite3"}"

[accounting]
backend = "sqlite"
path = "{tmp_path / "usage.db"}"
""")
    config = str(tmp_path / "appliance.toml")
    assert main(["keys", "create", "--config", config, "--user", "svc", "--name", "n", "--groups", "batch"]) == 0
    assert main(["keys", "revoke", "--config", config, "--user", "svc"]) == 0
    assert [r.kind for r in _records(tmp_path / "usage.db")] == ["groups_changed", "key_created", "key_revoked"]
