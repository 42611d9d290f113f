"""The cluster side's audit file: sealed-key events chained like the appliance's, verified by `sluice audit`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from appliance.cli import main as sluice
from cluster.audit import AUDIT_FILE
from cluster.cli import main as sluice_cluster

CONFIG = """\
[gate]
routing_table = "routing.json"
state_dir = "state"

[[backends]]
model = "m"
url = "http://127.0.0.1:9"
routes = ["chat"]
"""


@pytest.fixture
def trail(tmp_path: Path) -> Path:
    config = tmp_path / "cluster.toml"
    config.write_text(CONFIG)
    assert sluice_cluster(["keys", "create", "--config", str(config)]) == 0
    assert sluice_cluster(["keys", "rotate", "--config", str(config), "--overlap", "60"]) == 0
    assert sluice_cluster(["keys", "rotate", "--config", str(config), "--overlap", "60"]) == 0
    return tmp_path / "sealed-keys" / AUDIT_FILE


def test_key_events_are_recorded_and_verify(trail: Path, capsys: pytest.CaptureFixture[str]) -> None:
    records = [json.loads(line) for line in trail.read_text().splitlines()]
    assert [r["kind"] for r in records] == ["sealed_keys_created", "sealed_keys_rotated", "sealed_keys_rotated"]
    assert [r["subject"] for r in records] == ["key:0", "key:1", "key:2"]
    assert oct(trail.stat().st_mode & 0o777) == "0o600"
    capsys.readouterr()
    assert sluice(["audit", "verify", "--file", str(trail)]) == 0
    assert "intact: 3 records" in capsys.readouterr().out
    assert sluice(["audit", "--file", str(trail), "--kind", "sealed_keys_rotated", "--json"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2


def test_reject_an_edited_line(trail: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = trail.read_text().splitlines()
    lines[1] = lines[1].replace('"overlap_s":60', '"overlap_s":6000')
    trail.write_text("\n".join(lines) + "\n")
    assert sluice(["audit", "verify", "--file", str(trail)]) == 1
    assert "record 2: altered" in capsys.readouterr().out


def test_reject_a_dropped_last_line(trail: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = trail.read_text().splitlines()
    trail.write_text("\n".join(lines[:-1]) + "\n")
    assert sluice(["audit", "verify", "--file", str(trail)]) == 1
    assert "truncated" in capsys.readouterr().out
