"""Persistent API keys and the groups they act with."""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from appliance.auth._db import open_database
from appliance.auth.api_keys import ApiKeyAuthenticator, ApiKeyStore
from appliance.auth.identity import Identity
from appliance.auth.keystore import (
    KEY_PREFIX,
    MAX_KEYS_PER_USER,
    KeyRequestError,
    KeyStore,
)
from appliance.auth.sessions import SessionStore
from appliance.auth.users import UserDirectory
from appliance.cli import main


class Sync:
    """The async stores, called from plain tests: each call runs to completion (SQLite needs no loop of its own)."""

    def __init__(self, target: object) -> None:
        self._target = target

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._target, name)
        if not inspect.ismethod(value):
            return value if isinstance(value, (int, float, str, bytes, type(None))) else Sync(value)

        def call(*args: Any, **kwargs: Any) -> Any:
            result = value(*args, **kwargs)
            return asyncio.run(result) if inspect.iscoroutine(result) else result

        return call


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store(tmp_path: Path) -> tuple[Any, Clock]:
    clock = Clock()
    db = open_database(tmp_path / "auth.sqlite3")
    users = UserDirectory(db, groups_max_age=30 * 86400, clock=clock)
    Sync(users).record(Identity("iss#alice", "a@example.org", "Alice", frozenset({"staff"})), "oidc")
    return Sync(KeyStore(db, users, clock=clock)), clock


def test_key_format_and_storage(store: tuple[Any, Clock], tmp_path: Path) -> None:
    keys, _ = store
    key, info = keys.create("iss#alice", "laptop", ["standin-chat"])
    assert key.startswith(KEY_PREFIX + info.id + "-") and len(key) == len(KEY_PREFIX) + 12 + 1 + 43
    principal = keys.verify(key)
    assert principal is not None and principal.user == "iss#alice" and principal.key_id == info.id
    assert principal.groups == frozenset({"staff"}) and principal.scope == frozenset({"standin-chat"})
    # Only the digest is stored; the file is private.
    raw = (tmp_path / "auth.sqlite3").read_bytes()
    assert key.encode() not in raw and key.split("-")[-1].encode() not in raw
    digest = keys._db.connection._target.execute("SELECT digest FROM api_keys").fetchone()[0]
    assert digest == hashlib.sha256(key.encode()).digest()
    assert stat.S_IMODE(os.stat(tmp_path / "auth.sqlite3").st_mode) == 0o600


def test_reject_wrong_unknown_and_malformed_keys(store: tuple[Any, Clock]) -> None:
    keys, _ = store
    key, _ = keys.create("iss#alice", "k")
    assert keys.verify(key[:-1] + ("A" if key[-1] != "A" else "B")) is None
    assert keys.verify(KEY_PREFIX + "aaaaaaaaaaaa-" + key.split("-")[-1]) is None
    for bad in ("", key + "x", key.upper(), key.replace("-", "_"), "sk-sluice-", key[:-1]):
        assert keys.verify(bad) is None


def test_revoke_and_expiry(store: tuple[Any, Clock]) -> None:
    keys, clock = store
    key, _ = keys.create("iss#alice", "k", expires=clock.now + 60)
    other, other_info = keys.create("iss#alice", "other")
    assert keys.verify(key) is not None
    clock.now += 61
    assert keys.verify(key) is None and keys.list_keys("iss#alice")[0].state(clock.now) == "expired"
    assert not keys.revoke(other_info.id, owner="iss#mallory")  # not hers to revoke
    assert keys.revoke(other_info.id, owner="iss#alice")
    assert keys.verify(other) is None and not keys.revoke(other_info.id)
    with pytest.raises(KeyRequestError):
        keys.create("iss#alice", "k", expires=clock.now - 1)


def test_revoke_user(store: tuple[Any, Clock]) -> None:
    keys, _ = store
    made = [keys.create("iss#alice", f"k{i}")[0] for i in range(3)]
    assert keys.revoke_user("iss#alice") == 3
    assert all(keys.verify(k) is None for k in made)


def test_limits_on_names_scopes_and_counts(store: tuple[Any, Clock]) -> None:
    keys, _ = store
    for name in ("", " ", "x" * 65, "tab\there"):
        with pytest.raises(KeyRequestError):
            keys.create("iss#alice", name)
    for scope in (["bad model name"], [f"m{i}" for i in range(65)]):
        with pytest.raises(KeyRequestError):
            keys.create("iss#alice", "k", scope)
    for i in range(MAX_KEYS_PER_USER):
        keys.create("iss#bob", f"k{i}")
    with pytest.raises(KeyRequestError):
        keys.create("iss#bob", "one too many")


def test_keys_act_with_current_groups(store: tuple[Any, Clock]) -> None:
    keys, clock = store
    key, _ = keys.create("iss#alice", "k")
    keys.users.record(Identity("iss#alice", None, None, frozenset({"guests"})), "oidc")
    assert keys.verify(key).groups == frozenset({"guests"})  # type: ignore[union-attr]
    # Not asserted by the provider for longer than groups_max_age: no groups at all.
    clock.now += 31 * 86400
    principal = keys.verify(key)
    assert principal is not None and principal.groups == frozenset()
    # An operator's assignment does not age.
    keys.users.set_groups("iss#alice", frozenset({"svc"}))
    clock.now += 365 * 86400
    assert keys.verify(key).groups == frozenset({"svc"})  # type: ignore[union-attr]
    # Unknown owner: no groups.
    orphan, _ = keys.create("iss#nobody", "k")
    assert keys.verify(orphan).groups == frozenset()  # type: ignore[union-attr]


def test_sessions(tmp_path: Path) -> None:
    clock = Clock()
    sessions = Sync(SessionStore(open_database(tmp_path / "s.sqlite3"), lifetime=60, clock=clock))
    sid = sessions.create("iss#alice", "id.token.x")
    assert sessions.get(sid).user == "iss#alice"  # type: ignore[union-attr]
    assert sessions.get(sid + "x") is None and sessions.get(None) is None and sessions.get("x" * 500) is None
    clock.now += 61
    assert sessions.get(sid) is None
    sid = sessions.create("iss#alice", None)
    sessions.delete(sid)
    assert sessions.get(sid) is None


def test_in_memory_store_still_works() -> None:
    """The demo's and [[api_keys]]' store keeps its interface."""
    import asyncio

    from starlette.requests import HTTPConnection

    keys = ApiKeyStore()
    keys.add("sk-demo-" + "d" * 24, "demo", "demo")
    scope = {"type": "http", "headers": [(b"authorization", b"Bearer sk-demo-" + b"d" * 24)]}
    principal = asyncio.run(ApiKeyAuthenticator(keys).authenticate(HTTPConnection(scope)))
    assert principal is not None and principal.user == "demo"


def test_admin_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = str(tmp_path / "cli.sqlite3")
    assert (
        main(
            [
                "keys",
                "create",
                "--database",
                db,
                "--user",
                "svc",
                "--name",
                "batch",
                "--models",
                "a,b",
                "--expires-days",
                "7",
                "--groups",
                "g1,g2",
            ]
        )
        == 0
    )
    key = capsys.readouterr().out.strip()
    assert key.startswith(KEY_PREFIX)
    assert main(["keys", "list", "--database", db, "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["owner"] == "svc" and row["models"] == ["a", "b"] and row["state"] == "active" and key not in str(row)
    connection = open_database(db)
    users = UserDirectory(connection, 1.0)
    principal = Sync(KeyStore(connection, users)).verify(key)
    assert principal is not None and principal.groups == frozenset({"g1", "g2"})
    assert main(["keys", "revoke", "--database", db, row["id"]]) == 0
    assert Sync(KeyStore(connection, users)).verify(key) is None
    assert main(["keys", "revoke", "--database", db, row["id"]]) == 1
    assert main(["keys", "create", "--database", db, "--user", "svc", "--name", "x", "--expires-days", "0"]) == 2
