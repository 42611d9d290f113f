"""The audit trail in SQLite: append-only, chained, and `sluice audit verify` finding each kind of tampering."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import logging
import sqlite3
from pathlib import Path

import pytest

from appliance.audit import AuditTrail, audit_event, install, open_store
from appliance.audit.cli import add_arguments, run
from appliance.cli import main
from policy.audit import AuditEvent

KEY = b"k" * 32


def _fill(path: Path, count: int = 5, key: bytes | None = None) -> None:
    async def go() -> None:
        store = open_store("sqlite", path=path, key=key)
        for n in range(count):
            await store.append(AuditEvent("key_created", f"admin{n % 2}", f"key{n}", {"owner": "alice"}, 1_800_000_000.0 + n))
        await store.aclose()

    asyncio.run(go())


def _tamper(path: Path, *statements: str) -> None:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("DROP TRIGGER audit_no_update")
    db.execute("DROP TRIGGER audit_no_delete")
    for statement in statements:
        db.execute(statement)
    db.close()


def _verify(path: Path, *extra: str) -> tuple[int, str]:
    out = io.StringIO()
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    code = run(parser.parse_args(["verify", "--database", str(path), *extra]), out)
    return code, out.getvalue()


@pytest.fixture
def trail(tmp_path: Path) -> Path:
    path = tmp_path / "usage.db"
    _fill(path)
    return path


def test_intact_trail_verifies(trail: Path) -> None:
    code, text = _verify(trail)
    assert code == 0 and "intact: 5 records" in text


def test_records_are_append_only(trail: Path) -> None:
    db = sqlite3.connect(trail)
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        db.execute("UPDATE audit SET actor = 'mallory' WHERE seq = 2")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        db.execute("DELETE FROM audit WHERE seq = 2")
    db.close()


def test_reject_an_edited_record(trail: Path) -> None:
    _tamper(trail, "UPDATE audit SET actor = 'mallory' WHERE seq = 3")
    code, text = _verify(trail)
    assert code == 1 and "record 3: altered" in text


def test_reject_an_edited_record_rehashed(trail: Path) -> None:
    """An editor who recomputes the edited record's hash breaks the next record's link."""
    from policy.audit import _record_hash

    db = sqlite3.connect(trail)
    seq, when, kind, actor, subject, details, prev = db.execute(
        "SELECT seq, time, kind, actor, subject, details, prev FROM audit WHERE seq = 3"
    ).fetchone()
    db.close()
    digest = _record_hash(seq, when, kind, "mallory", subject, json.loads(details), prev)
    _tamper(trail, f"UPDATE audit SET actor = 'mallory', hash = '{digest}' WHERE seq = 3")
    code, text = _verify(trail)
    assert code == 1 and "record 4: broken_link" in text and "altered" not in text


def test_reject_a_deleted_record(trail: Path) -> None:
    _tamper(trail, "DELETE FROM audit WHERE seq = 2")
    code, text = _verify(trail)
    assert code == 1 and "record 3: missing_before" in text and "record 3: broken_link" in text


def test_reject_reordered_records(trail: Path) -> None:
    """Two records' contents swapped (the rows keep their places)."""
    _tamper(
        trail,
        "UPDATE audit SET seq = -2 WHERE seq = 2",
        "UPDATE audit SET seq = 2 WHERE seq = 3",
        "UPDATE audit SET seq = 3 WHERE seq = -2",
    )
    code, text = _verify(trail)
    assert code == 1 and "record 2" in text and "record 3" in text and ("out_of_order" in text or "altered" in text)


def test_reject_a_truncated_tail(trail: Path) -> None:
    _tamper(trail, "DELETE FROM audit WHERE seq >= 4")
    code, text = _verify(trail)
    assert code == 1 and "truncated: the head says 5 records, 3 remain" in text


def test_reject_a_truncated_tail_with_the_head_rewritten_needs_the_key(tmp_path: Path) -> None:
    """Without a key, a consistent head rewrite hides a truncation; with one, it does not."""
    path = tmp_path / "usage.db"
    _fill(path, key=KEY)
    db = sqlite3.connect(path)
    seq, digest = db.execute("SELECT seq, hash FROM audit WHERE seq = 3").fetchone()
    db.close()
    _tamper(path, "DELETE FROM audit WHERE seq >= 4", f"UPDATE audit_head SET seq = {seq}, hash = '{digest}'")
    assert _verify(path)[0] == 0  # the documented limit of an unsigned check
    key_file = tmp_path / "audit.key"
    key_file.write_bytes(KEY)
    key_file.chmod(0o600)
    code, text = _verify(path, "--key-file", str(key_file))
    assert code == 1 and "bad_head_signature" in text


def test_reject_a_head_that_is_not_the_recorded_one(trail: Path) -> None:
    db = sqlite3.connect(trail)
    seq, digest = db.execute("SELECT seq, hash FROM audit WHERE seq = 4").fetchone()
    db.close()
    assert _verify(trail, "--expect-head", f"{seq}:{digest}")[0] == 0  # the trail grew past it: fine
    _tamper(
        trail, "DELETE FROM audit WHERE seq >= 4", "UPDATE audit_head SET seq = 3, hash = (SELECT hash FROM audit WHERE seq = 3)"
    )
    code, text = _verify(trail, "--expect-head", f"{seq}:{digest}")
    assert code == 1 and "expected head" in text


def test_list_and_filter(trail: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", "--database", str(trail), "--actor", "admin1", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["seq"] for r in rows] == [2, 4] and {r["kind"] for r in rows} == {"key_created"}
    assert main(["audit", "--database", str(trail), "--since", "2027-01-15T08:00:02", "--kind", "key_created"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["SEQ", "TIME", "KIND"] and len(table) == 1 + 3
    assert main(["audit", "--database", str(trail), "--kind", "sign_in"]) == 0
    assert "(no audit records match)" in capsys.readouterr().out


def test_reject_unknown_kind_on_the_command_line(trail: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["audit", "--database", str(trail), "--kind", "nonsense"])
    assert "unknown kind" in capsys.readouterr().err


def test_the_trail_writes_from_any_thread_and_logs_each_head(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "usage.db"
    trail = AuditTrail(open_store("sqlite", path=path))
    previous = install(trail)
    try:
        with caplog.at_level(logging.WARNING, logger="sluice.security"):
            audit_event("sign_in", "alice", "alice", source="oidc")
            audit_event("nonsense", "alice")  # a bug in a caller: logged, never raised
            audit_event("sign_out", "alice", "alice")
            assert trail.flush()
    finally:
        install(previous)
        trail.close()
    heads = [json.loads(r.getMessage()) for r in caplog.records if '"event":"audit"' in r.getMessage()]
    assert [(h["kind"], h["seq"]) for h in heads] == [("sign_in", 1), ("sign_out", 2)]
    assert _verify(path)[0] == 0


def test_reject_content_sized_details() -> None:
    with pytest.raises(ValueError):
        AuditEvent("sign_in", "alice", "", {"prompt": "x" * 1000})
    with pytest.raises(ValueError):
        AuditEvent("sign_in", "alice", "", {"nested": ["a"]})  # type: ignore[dict-item]
