"""A gate's ping kicks a pass: by starting one (one account), or through the spool (two accounts)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from cluster.config import load_config
from cluster.scheduler import trigger

CONFIG = """\
[gate]
routing_table = "{table}"
{extra}
[scheduler]
pass_interval = 5
[services.m]
backend = "slurm"
routes = ["chat"]
template = "standin"
"""


@pytest.fixture(autouse=True)
def fresh_trigger(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(trigger, "_last_kick", float("-inf"))
    monkeypatch.setattr(trigger, "_children", set())


def test_reject_starting_a_pass_as_the_gate_with_two_accounts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The gate's account must never run sbatch: its jobs could read the gate's keys."""
    spool = tmp_path / "spool"
    spool.mkdir()
    (tmp_path / "cluster.toml").write_text(
        CONFIG.format(table="spool/routing.json", extra='spool_dir = "spool"\nstate_dir = "jobs"')
    )
    config = load_config(tmp_path / "cluster.toml")
    spawned: list[object] = []
    monkeypatch.setattr(os, "posix_spawn", lambda *a, **k: spawned.append(a) or 1)
    assert trigger.kick_pass(config)
    kick = spool / trigger.KICK_FILE
    assert kick.exists() and stat.S_IMODE(kick.stat().st_mode) == 0o640
    assert spawned == [] and not (tmp_path / "jobs").exists()
    assert trigger.kicked_since(config, kick.stat().st_mtime - 1)
    monkeypatch.setattr(trigger, "_last_kick", float("-inf"))
    assert not trigger.kick_pass(config)  # within pass_interval of the last kick


def test_one_account_starts_an_isolated_pass(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "cluster.toml").write_text(CONFIG.format(table="routing.json", extra=""))
    config = load_config(tmp_path / "cluster.toml")
    spawned: list[list[str]] = []
    monkeypatch.setattr(os, "posix_spawn", lambda path, argv, *a, **k: spawned.append(argv) or 1)
    monkeypatch.setattr(os, "waitpid", lambda pid, flags: (0, 0))
    assert trigger.kick_pass(config)
    (argv,) = spawned
    assert argv[1:4] == ["-I", "-m", "cluster.cli"] and argv[-1] == "--once"
