"""The gate's shared replay store (SQLite, cluster/gate/sealed.py): replays across the
retention, and pruning that never scans the table."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from cluster.gate.sealed import PRUNE_SQL, REPLAY_CACHE_KIB, REPLAY_PRUNE_BATCH, REPLAY_PRUNE_INTERVAL, SharedReplayGuard
from sluice_sdk.errors import SealError
from sluice_sdk.replay import http_date


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def test_reject_replay_of_a_request_dated_ahead(tmp_path: Path) -> None:
    """Finding 15: dated a window ahead, replayed after now + window: still refused."""
    clock = Clock()
    guard = SharedReplayGuard(tmp_path / "replay.sqlite", window=300, clock=clock)
    ahead = http_date(clock.now + 300)
    guard.check_date(ahead)
    guard.check(b"e" * 32)
    clock.now += 301 + REPLAY_PRUNE_INTERVAL  # past the old expiry, and a prune is due
    guard.check_date(ahead)
    with pytest.raises(SealError):
        guard.check(b"e" * 32)
    # another gate process (a second guard on the same file) refuses it too
    with pytest.raises(SealError):
        SharedReplayGuard(tmp_path / "replay.sqlite", window=300, clock=clock).check(b"e" * 32)


def test_prune_uses_the_expiry_index(tmp_path: Path) -> None:
    guard = SharedReplayGuard(tmp_path / "replay.sqlite", clock=Clock())
    guard.check(b"a" * 32)
    db = sqlite3.connect(tmp_path / "replay.sqlite")
    try:
        plan = " ".join(row[-1] for row in db.execute("EXPLAIN QUERY PLAN " + PRUNE_SQL, (0.0, 10)))
    finally:
        db.close()
    assert "seen_expires" in plan and "SCAN seen" not in plan.replace("SCAN seen USING", ""), plan


def test_prune_is_bounded_and_occasional(tmp_path: Path) -> None:
    clock = Clock()
    path = tmp_path / "replay.sqlite"
    guard = SharedReplayGuard(path, window=1, clock=clock)
    for index in range(REPLAY_PRUNE_BATCH + 10):
        guard.check(index.to_bytes(32, "big"))
    clock.now += 10 + REPLAY_PRUNE_INTERVAL
    guard.check(b"new" * 11)

    def rows() -> int:
        db = sqlite3.connect(path)
        try:
            return int(db.execute("SELECT count(*) FROM seen").fetchone()[0])
        finally:
            db.close()

    assert rows() == 10 + 1  # one batch pruned by this request, the rest waits
    guard.check(b"next" * 8)
    assert rows() == 2  # the batch was full: the next request pruned the rest
    clock.now += 3  # "new" and "next" have expired
    guard.check(b"more" * 8)
    assert rows() == 3  # caught up: no prune again before the interval
    clock.now += REPLAY_PRUNE_INTERVAL
    guard.check(b"last" * 8)
    assert rows() == 1  # every expired row gone


def test_reject_replay_store_growing_without_bound(tmp_path: Path) -> None:
    """Above one batch per interval (100 sealed requests/s), pruning must keep up: the table
    holds at most the retention's worth of requests plus one interval's."""
    clock = Clock()
    path = tmp_path / "replay.sqlite"
    guard = SharedReplayGuard(path, window=1, clock=clock)  # kept for 2 s
    rate = 250
    for index in range(60 * rate):
        clock.now += 1 / rate
        guard.check(index.to_bytes(32, "big"))
    db = sqlite3.connect(path)
    try:
        rows = int(db.execute("SELECT count(*) FROM seen").fetchone()[0])
    finally:
        db.close()
    assert rows <= rate * (2 + REPLAY_PRUNE_INTERVAL) + 1, rows


def test_replay_store_cache_is_small(tmp_path: Path) -> None:
    """The store's page cache is bounded below SQLite's 2 MiB default (gate RSS under sealed load)."""
    guard = SharedReplayGuard(tmp_path / "replay.sqlite", clock=Clock())
    guard.check(b"c" * 32)
    assert guard._db().execute("PRAGMA cache_size").fetchone()[0] == -REPLAY_CACHE_KIB
