"""Least outstanding requests over every gate process on the host (cluster/inflight.py).

The process test runs eight gate processes at once in exec mode (one process
per request, as the appliance's exec mode does), each with a long stream,
against two instances of one model.  Counted per process, every one of them
would pick the first instance; a random choice splits 4/4 about one time in
four.  Counted together, they split exactly 4/4.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cluster.inflight import ALIVE_CHECK_INTERVAL, FILE_NAME, FIRST_READ, MAGIC, RECORD, SharedInFlight, read_holds
from cluster.routing import Instance, write_table
from policy.frames import GATE_KINDS, FrameDecoder, Kind
from tests.conftest import ROOT, start_standin, stop

CONFIG = """\
[gate]
routing_table = "routing.json"
request_timeout = 60
[services.standin-chat]
backend = "local"
routes = ["chat"]
command = ["true"]
min_instances = 0
hold_queue = 0
unsafe_plain_http = true  # the stand-ins here serve plain http
"""


def test_two_gates_in_one_file_balance_and_a_dead_gates_counts_go(tmp_path: Path) -> None:
    alive = {(1, 1): True, (2, 2): True}
    first = SharedInFlight(tmp_path, alive=alive.__getitem__, owner=(1, 1))
    second = SharedInFlight(tmp_path, alive=alive.__getitem__, owner=(2, 2))
    picks = [
        first.acquire(["a", "b"], {}),
        second.acquire(["a", "b"], {}),
        first.acquire(["a", "b"], {}),
        second.acquire(["a", "b"], {}),
    ]
    assert sorted(picks) == ["a", "a", "b", "b"]  # each gate sees the other's requests
    second.release(picks[1])
    assert first.acquire(["a", "b"], {}) == picks[1]
    # The second gate dies with a request in flight: its count is dropped once that is noticed.
    alive[(2, 2)] = False
    first._checked.clear()
    assert (2, 2) in read_holds(tmp_path)
    first.acquire(["a", "b"], {})
    assert (2, 2) not in read_holds(tmp_path)
    assert (tmp_path / FILE_NAME).stat().st_mode & 0o077 == 0


def test_reject_a_garbled_file_as_no_counts(tmp_path: Path) -> None:
    (tmp_path / FILE_NAME).write_text("{garbled")
    shared = SharedInFlight(tmp_path)
    assert shared.acquire(["a", "b"], {"a": 3}) == "b"
    shared.release("b")
    assert read_holds(tmp_path) == {}


def test_several_gate_processes_balance_by_outstanding_requests(tmp_path: Path) -> None:
    a = start_standin("standin-chat", "chat", token_delay=0.05)
    b = start_standin("standin-chat", "chat", token_delay=0.05)
    try:
        (tmp_path / "cluster.toml").write_text(CONFIG)
        write_table(
            tmp_path / "routing.json",
            {
                "standin-chat": [
                    Instance("local:a", "127.0.0.1", a.port, a.token),
                    Instance("local:b", "127.0.0.1", b.port, b.token),
                ]
            },
        )
        body = json.dumps(
            {"model": "standin-chat", "messages": [{"role": "user", "content": "x"}], "max_tokens": 80, "stream": True}
        ).encode()  # about 4 s each
        env = {"PATH": os.environ["PATH"], "SSH_ORIGINAL_COMMAND": f"sluice/1 call chat standin-chat {len(body)}"}
        argv = [sys.executable, "-m", "cluster.cli", "gate", "--config", str(tmp_path / "cluster.toml"), "--local-pipe"]
        gates = []
        for _ in range(8):
            gate = subprocess.Popen(
                argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=ROOT
            )
            assert gate.stdin is not None
            gate.stdin.write(body)
            gate.stdin.close()
            gates.append(gate)
            time.sleep(0.1)
        for gate in gates:
            assert gate.stdout is not None and gate.stderr is not None
            out, err = gate.stdout.read(), gate.stderr.read()
            gate.wait(60)
            gate.stdout.close()
            gate.stderr.close()
            frames = FrameDecoder(GATE_KINDS).feed(out)
            assert gate.returncode == 0 and frames[0].payload.startswith(b"200"), err
            assert frames[-1].kind is Kind.END
        assert (a.stats()["served"], b.stats()["served"]) == (4, 4)
        assert read_holds(tmp_path / "state") == {}  # every count released
    finally:
        stop(a.process)
        stop(b.process)


_HOLDER = """
import sys, time
from pathlib import Path
from cluster.inflight import SharedInFlight
shared = SharedInFlight(Path(sys.argv[1]))
for _ in range(int(sys.argv[2])):
    shared.acquire(["a", "b"], {})
print("held", flush=True)
time.sleep(60)
"""


def test_a_killed_gates_holds_are_freed(tmp_path: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(tmp_path), "3"], stdout=subprocess.PIPE, cwd=ROOT)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
        assert sum(read_holds(tmp_path).values()) == 3
        holder.kill()
        holder.wait(10)
        shared = SharedInFlight(tmp_path)
        assert shared.acquire(["a", "b"], {}) == "a"  # the killed gate's a and b are no longer counted
        assert read_holds(tmp_path) == {shared._owner: 1}
    finally:
        holder.kill()
        holder.wait(10)
        assert holder.stdout is not None
        holder.stdout.close()


_COUNTER = """
import sys
from pathlib import Path
from cluster.inflight import SharedInFlight
shared = SharedInFlight(Path(sys.argv[1]))
picks = [shared.acquire(["a", "b", "c"], {}) for _ in range(int(sys.argv[2]))]
print(",".join(picks), flush=True)
sys.stdin.read()
"""


def test_choice_and_count_are_one_step_across_processes(tmp_path: Path) -> None:
    # Four processes acquire at once and release nothing: no count is lost, and since every
    # choice sees every earlier one, the three instances end up within one of each other.
    argv = [sys.executable, "-c", _COUNTER, str(tmp_path), "60"]
    workers = [subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT) for _ in range(4)]
    try:
        picks: list[str] = []
        for worker in workers:
            assert worker.stdout is not None
            picks += worker.stdout.readline().decode().strip().split(",")
        assert len(picks) == 240
        assert sum(read_holds(tmp_path).values()) == 240
        assert sorted(picks.count(i) for i in "abc") == [80, 80, 80]
    finally:
        for worker in workers:
            assert worker.stdin is not None and worker.stdout is not None
            worker.stdin.close()
            worker.wait(10)
            worker.stdout.close()
    holds = read_holds(tmp_path)
    assert len(holds) == 4  # the exited workers' records stay until a gate looks ...
    SharedInFlight(tmp_path).acquire(["a"], {})
    assert len(read_holds(tmp_path)) == 1  # ... and are freed then


def test_releases_free_records_and_a_replaced_file_is_used(tmp_path: Path) -> None:
    now = [0.0]
    shared = SharedInFlight(tmp_path, clock=lambda: now[0])
    for instance in ("a", "b", "c"):
        assert shared.acquire([instance], {}) == instance
    assert (tmp_path / FILE_NAME).stat().st_size == len(MAGIC) + 3 * RECORD.size
    for instance in ("a", "b", "c"):
        shared.release(instance)
    assert read_holds(tmp_path) == {}
    shared.acquire(["d"], {})
    assert (tmp_path / FILE_NAME).stat().st_size == len(MAGIC) + 3 * RECORD.size  # a free record was used again
    # Another gate replaced the file (or an operator removed it): this one follows within a second.
    (tmp_path / FILE_NAME).unlink()
    now[0] += ALIVE_CHECK_INTERVAL
    shared.acquire(["e"], {})
    assert read_holds(tmp_path) == {shared._owner: 1}


def test_an_unusable_file_balances_on_local_counts(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "state").write_text("not a directory")
    shared = SharedInFlight(tmp_path / "state")
    with caplog.at_level(logging.ERROR, logger="sluice.gate"):
        assert shared.acquire(["a", "b"], {"a": 2, "b": 1}) == "b"
        shared.release("b")
        assert shared.acquire(["a", "b"], {"a": 0, "b": 1}) == "a"
    assert [r.getMessage() for r in caplog.records] == ['{"event":"inflight_file_unusable","error":"Not a directory"}']


def test_a_file_larger_than_the_first_read_is_read_whole(tmp_path: Path) -> None:
    gates = [
        SharedInFlight(tmp_path, alive=lambda owner: True, owner=(1000 + i, 1)) for i in range(FIRST_READ // RECORD.size + 10)
    ]
    for gate in gates:
        assert gate.acquire(["a"], {}) == "a"
    assert (tmp_path / FILE_NAME).stat().st_size > FIRST_READ
    last = SharedInFlight(tmp_path, alive=lambda owner: True, owner=(1, 1))
    assert last.acquire(["a", "b"], {}) == "b"  # every record counted, the ones past the first read too
    gates[-1].release("a")
    assert len(read_holds(tmp_path)) == len(gates)  # the last record, past the first read, was found and freed
    for gate in gates:
        gate.close()
