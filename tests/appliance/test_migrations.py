"""Numbered schema steps on SQLite (PostgreSQL: tests/integration/test_postgres_stores.py)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path

import pytest

from appliance import migrations
from appliance.accounting import SqliteAccounting, UsageRow
from appliance.accounting._journal import Journal
from appliance.auth._db import open_database
from appliance.migrations import SchemaError, Step, latest, sqlite_upgrade, sqlite_version


def test_steps_are_numbered_from_one_without_gaps() -> None:
    for steps in migrations.STORES.values():
        assert [s.version for s in steps] == list(range(1, len(steps) + 1))


def test_a_database_from_before_versions_is_upgraded_in_place(tmp_path: Path) -> None:
    # The identity file as the first release wrote it: its own tables, PRAGMA user_version, no schema_version.
    path = tmp_path / "auth.sqlite3"
    old = sqlite3.connect(path)
    old.executescript(
        "CREATE TABLE users (user TEXT PRIMARY KEY, email TEXT, name TEXT, groups TEXT NOT NULL,"
        " source TEXT NOT NULL, refreshed REAL NOT NULL);"
        "INSERT INTO users VALUES ('alice', NULL, NULL, '[\"staff\"]', 'admin', 1.0);"
        "PRAGMA user_version = 1;"
    )
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


def test_an_accounting_file_of_an_older_release_gains_the_provenance_columns(tmp_path: Path) -> None:
    """Step 3: a usage table at step 2, with a row, gains audio_ms, model_revision and backend_version
    (the old row reads 0 and NULL), and the appliance writes its full rows into it."""
    path = tmp_path / "usage.db"
    old = sqlite3.connect(path, isolation_level=None)
    old.executescript(migrations.ACCOUNTING[0].sqlite + migrations.ACCOUNTING[1].sqlite + _VERSION_2)
    old.execute(
        "INSERT INTO usage (time, day, request_id, user_id, key_id, model, route, status, prompt_tokens,"
        " completion_tokens, latency_ms, first_token_ms, sealed) VALUES"
        " (1.0, '1970-01-01', 'old', 'alice', NULL, 'm', 'chat', 200, 1, 2, 3.0, NULL, 0)"
    )
    old.close()
    accounting = SqliteAccounting(path)

    async def write() -> None:
        await accounting.start()
        try:
            await accounting.record(
                UsageRow(
                    2.0, "new", "alice", None, "m", "transcriptions", 200, 4, 5, 6.0, None, False, 1500, "rev-1", "standin-1"
                )
            )
        finally:
            await accounting.aclose()

    asyncio.run(write())
    with sqlite3.connect(path) as db:
        assert sqlite_version(db, "accounting") == latest("accounting")
        rows = db.execute("SELECT request_id, audio_ms, model_revision, backend_version FROM usage ORDER BY time").fetchall()
    assert rows == [("old", 0, None, None), ("new", 1500, "rev-1", "standin-1")]


def test_a_journal_of_an_older_release_replays_with_the_added_columns(tmp_path: Path) -> None:
    """A PostgreSQL journal written before step 3 holds 13 values a row: they replay padded (0, NULL, NULL)."""
    journal = tmp_path / "journal"
    old_row = [1.0, "1970-01-01", "r1", "alice", None, "m", "chat", 200, 1, 2, 3.0, None, 0]
    new_row = [*old_row[:2], "r2", *old_row[3:], 10, "rev", "v1"]
    journal.write_text(json.dumps(old_row) + "\n" + json.dumps(new_row) + "\n" + json.dumps(old_row[:5]) + "\n")
    assert Journal.read(journal) == [(*old_row, 0, None, None), tuple(new_row)]


_VERSION_2 = (
    "CREATE TABLE schema_version (store TEXT PRIMARY KEY, version INTEGER NOT NULL);"
    "INSERT INTO schema_version VALUES ('accounting', 2);"
)
