"""Least outstanding requests over every gate process on the host (cluster/inflight.py).

The process test runs eight gate processes at once in exec mode (one process
per request, as the appliance's exec mode does), each with a long stream,
against two instances of one model.  Counted per process, every one of them
would pick the first instance; a random choice splits 4/4 about one time in
four.  Counted together, they split exactly 4/4.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from cluster.inflight import SharedInFlight
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
    alive = {"1:1": True, "2:2": True}
    first, second = SharedInFlight(tmp_path, alive=alive.__getitem__), SharedInFlight(tmp_path, alive=alive.__getitem__)
    first._key, second._key = "1:1", "2:2"
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
    alive["2:2"] = False
    first._checked.clear()
    document = json.loads((tmp_path / "inflight.json").read_text())
    assert "2:2" in document
    first.acquire(["a", "b"], {})
    assert "2:2" not in json.loads((tmp_path / "inflight.json").read_text())
    assert (tmp_path / "inflight.json").stat().st_mode & 0o077 == 0


def test_reject_a_garbled_file_as_no_counts(tmp_path: Path) -> None:
    (tmp_path / "inflight.json").write_text("{garbled")
    shared = SharedInFlight(tmp_path)
    assert shared.acquire(["a", "b"], {"a": 3}) == "b"
    shared.release("b")
    assert json.loads((tmp_path / "inflight.json").read_text()) == {}


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
        assert json.loads((tmp_path / "state" / "inflight.json").read_text()) == {}  # every count released
    finally:
        stop(a.process)
        stop(b.process)
