"""The counts a gate adds to its ``models`` listing: instances by phase, requests held and in flight."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from cluster.scheduler.census import ModelCensus, model_census
from cluster.scheduler.load import LoadMeter
from cluster.scheduler.paths import load_dir, state_path

from .test_engine import Harness


def test_starting_then_ready(tmp_path: Path) -> None:
    harness = Harness(tmp_path)
    assert model_census(harness.config, ["chat-model"]) == {"chat-model": ModelCensus()}
    harness.run_pass()  # submitted, pending
    assert model_census(harness.config, ["chat-model"])["chat-model"] == ModelCensus(ready=0, starting=1)
    harness.ready_job()
    assert model_census(harness.config, ["chat-model"])["chat-model"] == ModelCensus(ready=1, starting=0)


def test_held_and_in_flight_from_the_gates_load_files(tmp_path: Path) -> None:
    harness = Harness(tmp_path)
    meter = LoadMeter(harness.config.gate.state / "load")
    meter.change("chat-model", held=2)
    meter.change("chat-model", in_flight=1, instance="slurm:1")
    meter.flush()
    try:
        census = model_census(harness.config, ["chat-model", "other"])
    finally:
        meter.close()
    assert census["chat-model"].held == 2 and census["chat-model"].in_flight == 1
    assert census["other"] == ModelCensus()
    assert census["chat-model"].to_json() == {"instances": {"ready": 0, "starting": 0}, "held": 2, "in_flight": 1}


def test_held_and_in_flight_counted_with_two_accounts(tmp_path: Path) -> None:
    """With a spool directory the gates write their load files there, and the census reads them there."""
    harness = Harness(tmp_path)
    (tmp_path / "spool").mkdir()
    config = dataclasses.replace(harness.config, gate=dataclasses.replace(harness.config.gate, spool_dir=tmp_path / "spool"))
    meter = LoadMeter(load_dir(config), shared=True)
    meter.change("chat-model", held=3)
    meter.flush()
    try:
        census = model_census(config, ["chat-model"])
    finally:
        meter.close()
    assert load_dir(config) == tmp_path / "spool" / "load"
    assert census["chat-model"].held == 3


def test_a_garbled_state_file_counts_as_nothing_and_stays_where_it_is(tmp_path: Path) -> None:
    harness = Harness(tmp_path)
    harness.run_pass()
    path = state_path(harness.config, "slurm")
    path.write_bytes(b"{not json")
    assert model_census(harness.config, ["chat-model"])["chat-model"] == ModelCensus()
    assert path.read_bytes() == b"{not json"  # the scheduler's to move aside, not the gate's
