"""Accounting in SQLite: durable rows from a background writer, and the usage report."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import sqlite3
import stat
import threading
import time
from pathlib import Path

import pytest

from appliance.accounting import SqliteAccounting, UsageRow, open_accounting
from appliance.accounting._rows import day_of
from appliance.accounting._sqlite import report
from appliance.accounting.report import render
from appliance.cli import main

DAY = 1_767_225_600.0  # 2026-01-01T00:00:00Z


def row(
    user: str = "alice",
    model: str = "m1",
    status: int = 200,
    when: float = DAY + 3600,
    prompt: int = 10,
    completion: int = 20,
    sealed: bool = False,
    key: str | None = "k1",
) -> UsageRow:
    return UsageRow(
        when, "req_1", user, key, model, "chat", status, prompt, completion, 12.5, 3.0 if completion else None, sealed
    )


def test_day_of_is_utc() -> None:
    assert day_of(DAY) == "2026-01-01"
    assert day_of(DAY - 1) == "2025-12-31"
    assert day_of(DAY + 86_399.9) == "2026-01-01"


def test_rows_are_committed_when_record_returns(tmp_path: Path) -> None:
    path = tmp_path / "usage.db"

    async def scenario() -> None:
        store = SqliteAccounting(path)
        await store.start()
        try:
            for index in range(5):
                await store.record(row(prompt=index))
                # Another connection (another process, after a crash) sees the row at once.
                seen = sqlite3.connect(path).execute("SELECT COUNT(*), MAX(prompt_tokens) FROM usage").fetchone()
                assert seen == (index + 1, index)
        finally:
            await store.aclose()

    asyncio.run(scenario())
    connection = sqlite3.connect(path)
    assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    columns = [c[1] for c in connection.execute("PRAGMA table_info(usage)")]
    assert columns == [
        "id",
        "time",
        "day",
        "request_id",
        "user_id",
        "key_id",
        "model",
        "route",
        "status",
        "prompt_tokens",
        "completion_tokens",
        "latency_ms",
        "first_token_ms",
        "sealed",
        "audio_ms",
        "model_revision",
        "backend_version",
    ]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


# Not traced by coverage (scripts/test's unit run): tracing slows the 2000 tasks on the loop
# more than the writer's SQLite work, so the rows can all be written in under 10 ticks
# (seen in 2 of 3 coverage runs, main's code too) though nothing blocked the loop.
@pytest.mark.no_cover
def test_concurrent_rows_share_commits_and_the_loop_is_not_blocked(tmp_path: Path) -> None:
    path = tmp_path / "usage.db"
    writer_threads: set[str] = set()
    original = SqliteAccounting._write

    def spy(self: SqliteAccounting, connection: sqlite3.Connection) -> None:
        writer_threads.add(threading.current_thread().name)
        original(self, connection)

    async def scenario() -> None:
        store = SqliteAccounting(path, synchronous="full")
        store._write = spy.__get__(store)  # type: ignore[method-assign]
        await store.start()
        try:
            ticks = 0

            async def ticker() -> None:
                nonlocal ticks
                while True:
                    ticks += 1
                    await asyncio.sleep(0)

            clock = asyncio.create_task(ticker())
            await asyncio.gather(*(store.record(row(user=f"u{i % 7}")) for i in range(2000)))
            clock.cancel()
            assert ticks > 10  # the event loop kept running while rows were written
        finally:
            await store.aclose()

    asyncio.run(scenario())
    assert writer_threads == {"sluice-accounting"}
    assert sqlite3.connect(path).execute("SELECT COUNT(*) FROM usage").fetchone() == (2000,)


@pytest.mark.parametrize("synchronous", ["normal", "full"])
def test_a_failing_database_raises_to_the_waiter(tmp_path: Path, synchronous: str) -> None:
    path = tmp_path / "usage.db"

    async def scenario() -> None:
        store = SqliteAccounting(path, synchronous)
        await store.start()
        try:
            other = sqlite3.connect(path, isolation_level=None)
            other.execute("DROP TABLE usage")  # the writer's next insert fails
            other.close()
            with pytest.raises(sqlite3.OperationalError):
                await store.record(row())
        finally:
            await store.aclose()

    asyncio.run(scenario())


def test_a_locked_database_is_waited_for_off_the_loop(tmp_path: Path) -> None:
    """A lock held elsewhere (a backup, say) never makes the event loop wait: a thread does."""
    path = tmp_path / "usage.db"

    async def scenario() -> None:
        store = SqliteAccounting(path)
        await store.start()
        try:
            holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            holder.execute("BEGIN IMMEDIATE")  # the write lock, held
            pending = asyncio.create_task(store.record(row(prompt=7)))
            started = time.monotonic()
            await asyncio.sleep(0.3)
            assert time.monotonic() - started < 0.5  # the loop kept running
            assert not pending.done()
            holder.execute("COMMIT")
            holder.close()
            await asyncio.wait_for(pending, 10)
        finally:
            await store.aclose()

    asyncio.run(scenario())
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT prompt_tokens FROM usage").fetchall() == [(7,)]


def test_record_before_start_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="not started"):
        asyncio.run(SqliteAccounting(tmp_path / "u.db").record(row()))


def test_open_accounting_choices(tmp_path: Path) -> None:
    assert isinstance(open_accounting("sqlite", path=str(tmp_path / "u.db")), SqliteAccounting)
    with pytest.raises(ValueError, match="accounting.path"):
        open_accounting("sqlite")
    with pytest.raises(ValueError, match="dsn_file"):
        open_accounting("postgresql")
    with pytest.raises(ValueError, match="unknown"):
        open_accounting("mysql")
    with pytest.raises(ValueError, match="synchronous"):
        SqliteAccounting(tmp_path / "u.db", synchronous="off")


def _filled(tmp_path: Path) -> Path:
    path = tmp_path / "usage.db"

    async def scenario() -> None:
        store = SqliteAccounting(path)
        await store.start()
        for item in [
            row(),
            row(prompt=5, completion=5),
            row(status=429, prompt=0, completion=0),
            row(user="bob", model="m2", sealed=True),
            row(when=DAY + 86_400 + 5),
            row(when=DAY - 10),
        ]:
            await store.record(item)
        await store.aclose()

    asyncio.run(scenario())
    return path


def test_report_per_day_user_and_model(tmp_path: Path) -> None:
    path = _filled(tmp_path)
    rows = report(path, "2026-01-01", "2026-01-02")
    assert [(r.day, r.user, r.model, r.requests, r.errors, r.sealed, r.prompt_tokens, r.completion_tokens) for r in rows] == [
        ("2026-01-01", "alice", "m1", 3, 1, 0, 15, 25),
        ("2026-01-01", "bob", "m2", 1, 0, 1, 10, 20),
        ("2026-01-02", "alice", "m1", 1, 0, 0, 10, 20),
    ]
    assert [r.user for r in report(path, "2025-01-01", "2027-01-01", user="bob")] == ["bob"]
    assert [r.model for r in report(path, "2026-01-01", "2026-01-01", model="m2")] == ["m2"]
    assert report(path, "2030-01-01", "2030-01-02") == []


def test_report_formats(tmp_path: Path) -> None:
    rows = report(_filled(tmp_path), "2026-01-01", "2026-01-02")
    out = io.StringIO()
    render(rows, "json", out)
    data = json.loads(out.getvalue())
    assert data[0] == {
        "day": "2026-01-01",
        "user": "alice",
        "model": "m1",
        "requests": 3,
        "errors": 1,
        "sealed": 0,
        "prompt_tokens": 15,
        "completion_tokens": 25,
        "mean_latency_ms": 12.5,
    }
    out = io.StringIO()
    render(rows, "csv", out)
    parsed = list(csv.reader(io.StringIO(out.getvalue())))
    assert parsed[0][:4] == ["day", "user", "model", "requests"] and len(parsed) == 4
    out = io.StringIO()
    render(rows, "table", out)
    lines = out.getvalue().splitlines()
    assert lines[0].split()[:3] == ["day", "user", "model"]
    assert lines[-1].split()[:2] == ["total", "5"]
    out = io.StringIO()
    render([], "table", out)
    assert "no requests" in out.getvalue()


def test_sluice_usage_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _filled(tmp_path)
    assert main(["usage", "--database", str(path), "--since", "2026-01-01", "--until", "2026-01-02", "--format", "json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 3
    assert main(["usage", "--database", str(path), "--since", "2026-01-02", "--until", "2026-01-01"]) == 2
    assert main(["usage", "--database", str(tmp_path / "missing.db")]) == 1
    assert "no accounting database" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["usage", "--database", str(path), "--since", "yesterday"])


def test_report_reads_beside_a_live_writer(tmp_path: Path) -> None:
    path = tmp_path / "usage.db"

    async def scenario() -> None:
        store = SqliteAccounting(path)
        await store.start()
        try:
            await store.record(row(when=time.time()))
            today = day_of(time.time())
            assert [r.requests for r in await store.report(today, today)] == [1]
        finally:
            await store.aclose()

    asyncio.run(scenario())


def test_insert_statements_follow_the_row() -> None:
    from appliance.accounting import _postgres, _sqlite
    from appliance.accounting._rows import COLUMNS

    for statement in (_sqlite._INSERT, _postgres._INSERT):
        assert statement.split("(")[1].split(")")[0].split(", ") == list(COLUMNS)
        assert statement.count("?") + statement.count("$") == len(COLUMNS) == len(row().values())


def test_busy_rows_share_a_commit_and_idle_ones_commit_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from appliance.accounting import _sqlite

    commits: list[int] = []
    original = _sqlite._commit

    def counting(connection: sqlite3.Connection, rows: list[tuple[object, ...]]) -> None:
        commits.append(len(rows))
        original(connection, rows)

    monkeypatch.setattr(_sqlite, "_commit", counting)
    path = tmp_path / "usage.db"

    async def scenario() -> None:
        store = SqliteAccounting(path)
        await store.start()
        try:
            await store.record(row(), busy=False)  # alone: committed before record returns
            assert commits == [1]
            await asyncio.gather(*(store.record(row(), busy=True) for _ in range(20)))
            assert commits == [1, 20]  # one loop iteration, one commit
        finally:
            await store.aclose()

    asyncio.run(scenario())
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT COUNT(*) FROM usage").fetchone() == (21,)


def test_the_log_is_checkpointed_off_the_loop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from appliance.accounting import _sqlite

    monkeypatch.setattr(_sqlite, "CHECKPOINT_EVERY", 0.05)
    path = tmp_path / "usage.db"

    async def scenario() -> None:
        store = SqliteAccounting(path)
        await store.start()
        try:
            for _ in range(300):
                await store.record(row())
            assert path.stat().st_size <= 8 * 1024  # everything is still in the write-ahead log
            deadline = time.monotonic() + 5
            while path.stat().st_size <= 8 * 1024 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert path.stat().st_size > 8 * 1024  # the checkpointer moved it into the database
        finally:
            await store.aclose()

    asyncio.run(scenario())


def _counting_commits(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    from appliance.accounting import _sqlite

    commits: list[int] = []
    original = _sqlite._commit

    def counting(connection: sqlite3.Connection, rows: list[tuple[object, ...]]) -> None:
        commits.append(len(rows))
        original(connection, rows)

    monkeypatch.setattr(_sqlite, "_commit", counting)
    return commits


def test_busy_rows_of_several_loop_turns_share_a_commit_and_a_full_batch_goes_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from appliance.accounting import _sqlite

    commits = _counting_commits(monkeypatch)
    monkeypatch.setattr(_sqlite, "MAX_BATCH", 4)
    monkeypatch.setattr(_sqlite, "GROUP_WAIT", 0.2)
    path = tmp_path / "usage.db"

    async def scenario() -> None:
        store = SqliteAccounting(path)
        await store.start()
        try:

            async def later(turns: int) -> None:
                for _ in range(turns):
                    await asyncio.sleep(0)
                await store.record(row(prompt=turns), busy=True)

            await asyncio.gather(*(later(turns) for turns in range(3)))  # three loop turns apart
            assert commits == [3]
            await asyncio.gather(*(store.record(row(), busy=True) for _ in range(10)))
            assert commits == [3, 4, 4, 2]  # the full batches at once, the rest after the wait
        finally:
            await store.aclose()

    asyncio.run(scenario())
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT COUNT(*) FROM usage").fetchone() == (13,)


def test_rows_accepted_before_close_are_committed_by_close(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Shutting down while rows wait for their group commit: close commits them (nothing accepted is lost)."""
    from appliance.accounting import _sqlite

    commits = _counting_commits(monkeypatch)
    monkeypatch.setattr(_sqlite, "GROUP_WAIT", 60.0)  # only close can commit them in this test
    path = tmp_path / "usage.db"

    async def scenario() -> None:
        store = SqliteAccounting(path)
        await store.start()
        waiting = [asyncio.create_task(store.record(row(prompt=i), busy=True)) for i in range(7)]
        await asyncio.sleep(0.05)
        assert not any(task.done() for task in waiting) and commits == []
        await asyncio.wait_for(store.aclose(), 10)
        await asyncio.wait_for(asyncio.gather(*waiting), 1)  # each waiter told: committed
        assert commits == [7]

    asyncio.run(scenario())
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT COUNT(*), SUM(prompt_tokens) FROM usage").fetchone() == (7, 21)


def test_a_locked_batch_at_close_is_still_committed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch that met a lock is retried on a thread; close waits for it."""
    from appliance.accounting import _sqlite

    monkeypatch.setattr(_sqlite, "GROUP_WAIT", 60.0)
    path = tmp_path / "usage.db"

    async def scenario() -> None:
        store = SqliteAccounting(path)
        await store.start()
        holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        holder.execute("BEGIN IMMEDIATE")  # the write lock, held for a moment
        waiting = [asyncio.create_task(store.record(row(prompt=i), busy=True)) for i in range(3)]
        await asyncio.sleep(0.05)
        asyncio.get_running_loop().call_later(0.3, lambda: (holder.execute("COMMIT"), holder.close()))
        await asyncio.wait_for(store.aclose(), 10)
        await asyncio.wait_for(asyncio.gather(*waiting), 1)

    asyncio.run(scenario())
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT COUNT(*) FROM usage").fetchone() == (3,)
