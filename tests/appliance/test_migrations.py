"""Numbered schema steps on SQLite (PostgreSQL: tests/integration/test_postgres_stores.py)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from appliance import migrations
from appliance.auth._db import open_database
from appliance.migrations import SchemaError, Step, latest, sqlite_upgrade, sqlite_version


def test_steps_are_numbered_from_one_without_gaps() -> None:
    for steps in migrations.STORES.values():
        assert [s.version for s in steps] == list(range(1, len(steps) + 1))


def test_a_database_from_before_versions_is_upgraded_in_place(tmp_path: Path) -> None:
    # The identity file as the first release wrote it: its own tables, PRAGMA user_version, no schema_version.
    path = tmp_path / "auth.sqlite3"
    old = sqlite3.connect(path)
    old.executescript("CREATE TABLE users (user TEXT PRIMARY KEY, email TEXT, name TEXT, groups TEXT NOT NULL,"
                      " source TEXT NOT NULL, refreshed REAL NOT NULL);"
                      "INSERT INTO users VALUES ('alice', NULL, NULL, '[\"staff\"]', 'admin', 1.0);"
                      "PRAGMA user_version = 1;")
    old.close()
    db = open_database(path)
    assert sqlite_version(db.connection, "identity") == latest("identity")
    assert db.connection.execute('SELECT "groups" FROM users WHERE "user" = ?', ("alice",)).fetchone() == ('["staff"]',)


def test_reject_a_newer_schema(tmp_path: Path) -> None:
    path = tmp_path / "auth.sqlite3"
    open_database(path).connection.execute("UPDATE schema_version SET version = 99 WHERE store = 'identity'")
    with pytest.raises(SchemaError, match="newer than this Sluice knows"):
        open_database(path)


def test_reject_a_failing_step_and_it_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    connection = sqlite3.connect(":memory:", isolation_level=None)
    sqlite_upgrade(connection, "accounting", "test")
    broken = Step(latest("accounting") + 1, "broken", "CREATE TABLE extra (x INTEGER); SELECT * FROM missing;", "")
    monkeypatch.setitem(migrations.STORES, "accounting", (*migrations.ACCOUNTING, broken))
    with pytest.raises(sqlite3.OperationalError):
        sqlite_upgrade(connection, "accounting", "test")
    assert sqlite_version(connection, "accounting") == len(migrations.ACCOUNTING)
    assert connection.execute("SELECT name FROM sqlite_master WHERE name = 'extra'").fetchone() is None
    assert not connection.in_transaction
