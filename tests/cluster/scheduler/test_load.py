"""Load measured by the gates: per-process files, request-seconds, averages over a window."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from cluster.scheduler.load import (
    PUBLISH_INTERVAL,
    LoadMeter,
    account_load,
    read_gate_loads,
)
from tests.conftest import ROOT


class Clock:
    def __init__(self, now: float = 5000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_meter_integrates_in_flight_and_held(tmp_path: Path) -> None:
    clock = Clock()
    meter = LoadMeter(tmp_path / "load", clock)
    meter.change("m", in_flight=2, instance="slurm:1")
    clock.now += 10
    meter.change("m", held=1)
    clock.now += 10
    document = meter.document()
    assert document["models"]["m"] == {"in_flight": 2, "held": 1, "busy": 50.0}  # 2*10 + 3*10
    assert document["instances"] == {"slurm:1": 2}
    meter.change("m", in_flight=-2, instance="slurm:1")
    assert meter.document()["instances"] == {}
    meter.close()


def test_meter_writes_at_most_once_a_second_and_at_close(tmp_path: Path) -> None:
    clock = Clock()
    meter = LoadMeter(tmp_path / "load", clock)
    assert not (tmp_path / "load").exists()  # nothing before the first change
    meter.change("m", in_flight=1)
    (written,) = list((tmp_path / "load").iterdir())
    assert json.loads(written.read_text())["models"]["m"]["in_flight"] == 1
    clock.now += PUBLISH_INTERVAL / 2
    meter.change("m", in_flight=1)  # too soon (no event loop here to write it later)
    assert json.loads(written.read_text())["models"]["m"]["in_flight"] == 1
    meter.close()
    assert json.loads(written.read_text())["models"]["m"]["in_flight"] == 2
    assert oct(written.stat().st_mode & 0o777) == "0o600" and oct((tmp_path / "load").stat().st_mode & 0o777) == "0o700"


def test_average_over_the_window(tmp_path: Path) -> None:
    clock = Clock(1000.0)
    meter = LoadMeter(tmp_path, clock)
    meter.change("m", in_flight=4)
    previous: dict[str, dict[str, float]] = {}
    samples: dict[str, list[list[float]]] = {}
    last = 1000.0
    averages = []
    for step in range(1, 13):  # a pass every 5 s; the load drops to 1 after 30 s
        clock.now = 1000.0 + 5 * step
        if step == 6:
            meter.change("m", in_flight=-3)
        meter.flush()
        report, previous = account_load(read_gate_loads(tmp_path, clock.now), ["m"], {"m": 30.0}, previous, samples,
                                        last, clock.now)  # fmt: skip
        last = clock.now
        averages.append(round(report.average["m"], 2))
        assert report.current["m"] == (4 if step < 6 else 1)
    assert averages[4] == 4.0 and averages[-1] == 1.0  # the window forgets the busy half minute
    assert 1.0 < averages[7] < 4.0
    meter.close()


def test_dead_gates_count_once_then_go(tmp_path: Path) -> None:
    # a gate process that served for 3 s and exited
    script = (
        "import sys\nfrom pathlib import Path\nfrom cluster.scheduler.load import LoadMeter\n"
        "t = [100.0]\nm = LoadMeter(Path(sys.argv[1]), lambda: t[0])\n"
        "m.change('m', in_flight=1)\nt[0] = 103.0\nm.change('m', in_flight=-1)\n"
    )
    subprocess.run([sys.executable, "-c", script, str(tmp_path)], check=True, cwd=ROOT)
    (path,) = list(tmp_path.iterdir())
    gates = read_gate_loads(tmp_path, 104.0)
    assert [g.alive for g in gates] == [False]
    samples: dict[str, list[list[float]]] = {}
    report, seen = account_load(gates, ["m"], {"m": 60.0}, {}, samples, 99.0, 104.0)
    assert report.average["m"] == 3.0 / 5.0 and report.current["m"] == 0
    report, seen = account_load(read_gate_loads(tmp_path, 109.0), ["m"], {"m": 60.0}, seen, samples, 104.0, 109.0)
    assert samples["m"][-1][2] == 0.0  # not counted twice
    account_load(read_gate_loads(tmp_path, 200.0), ["m"], {"m": 60.0}, seen, samples, 109.0, 200.0)
    assert not path.exists()  # removed once old


def test_a_reused_pid_is_not_taken_for_the_gate(tmp_path: Path) -> None:
    (tmp_path / f"x-{os.getpid()}.json").write_text(json.dumps({
        "host": "x", "pid": os.getpid(), "start": 1, "born": 0.0, "time": 0.0,
        "models": {"m": {"in_flight": 9, "held": 0, "busy": 0.0}}, "instances": {}}))  # fmt: skip
    host = socket.gethostname().split(".")[0]
    (tmp_path / f"{host}-{os.getpid()}.json").write_text(json.dumps({
        "host": host, "pid": os.getpid(), "start": 1, "born": 0.0, "time": 0.0,
        "models": {"m": {"in_flight": 9, "held": 0, "busy": 0.0}}, "instances": {}}))  # fmt: skip
    (tmp_path / "garbage.json").write_text("{")
    gates = {g.key.split(":")[0]: g for g in read_gate_loads(tmp_path, 10.0)}
    assert not gates[host].alive  # our pid, but another start time: someone else's process
    assert gates["x"].alive  # another host: trusted while fresh
    assert not any(g.alive for g in read_gate_loads(tmp_path, 10_000.0))


def test_reject_a_symlinked_spool_load_directory(tmp_path: Path) -> None:
    """Two accounts: the jobs account owns the spool; a symlink there must not steer the gate's writes."""
    spool, elsewhere = tmp_path / "spool", tmp_path / "gate-home"
    spool.mkdir()
    elsewhere.mkdir()
    (spool / "load").symlink_to(elsewhere)
    meter = LoadMeter(spool / "load", shared=True)
    meter.change("m", in_flight=1)
    meter.flush()
    meter.close()
    assert list(elsewhere.iterdir()) == []


def test_shared_load_files_are_group_readable(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    meter = LoadMeter(spool / "load", shared=True)
    meter.change("m", in_flight=1)
    meter.flush()
    meter.close()
    (written,) = (spool / "load").iterdir()
    assert written.stat().st_mode & 0o777 == 0o640 and (spool / "load").stat().st_mode & 0o7777 == 0o2770
