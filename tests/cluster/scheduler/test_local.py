"""The local-process backend: the same policy with processes instead of jobs.

A real ``sluice-cluster scheduler`` loop runs stand-in model servers as child
processes; a real gate in mux mode serves (and holds) requests.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import ROOT
from tests.integration.test_demo import _alive, _descendants
from tests.integration.test_slurm import (
    CHAT,
    Gate,
    async_wait_until,
    run_clients,
    table,
)

CONFIG = """\
[gate]
routing_table = "routing.json"
request_timeout = 30
[services.slurm-chat]
backend = "local"
routes = ["chat"]
command = ["{python}", "-m", "cluster.standin", "--host", "127.0.0.1", "--port", "{port}", "--model", "{model}",
           "--kind", "chat", "--token-delay", "0.005", "--ssl-keyfile", "{tls_keyfile}", "--ssl-certfile", "{tls_certfile}",
           "--ssl-ca-certs", "{tls_ca}", "--ssl-cert-reqs", "2"]
min_instances = 0
max_instances = 2
requests_per_instance = 2
scale_up_threshold = 0.5
load_window = 2
scale_down_delay = 2
hold_timeout = 20
warmup_timeout = 20
"""


def test_local_scale_from_zero_up_and_back_and_sigterm_stops_all(tmp_path: Path) -> None:
    config = tmp_path / "cluster.toml"
    config.write_text(CONFIG)
    loop = subprocess.Popen([sys.executable, "-I", "-m", "cluster.cli", "scheduler", "--config", str(config)],
                            cwd=ROOT)  # fmt: skip

    async def scenario() -> None:
        async with Gate(config) as gate:
            await asyncio.sleep(1.0)
            assert table(config) == []
            started = time.monotonic()
            held = await gate.call({**CHAT, "stream": True})  # scaled to zero: held, then served
            assert held.ok and held.head == b"200 sse" and held.body.endswith(b"data: [DONE]\n\n")
            assert held.head_at - started < 1.0
            # load: eight clients at once keep the average over one instance's threshold
            stop = asyncio.Event()
            load = asyncio.create_task(run_clients(gate, 8, stop, {**CHAT, "max_tokens": 100}))
            await async_wait_until(lambda: len(table(config)) == 2, 30, what="two instances")
            stop.set()
            assert all(reply.ok for _, _, reply in await load)
            await async_wait_until(lambda: table(config) == [], 30, what="back to zero")

    try:
        asyncio.run(scenario())
        state = json.loads((tmp_path / "state" / "local-state.json").read_text())
        assert state["services"]["slurm-chat"]["target"] == 0
        family = _descendants(loop.pid)
        loop.send_signal(signal.SIGTERM)
        assert loop.wait(30) == 0
    finally:
        if loop.poll() is None:
            loop.kill()
            loop.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(p) for p in family):
        time.sleep(0.1)
    assert not [p for p in family if _alive(p)]
    assert os.path.exists(tmp_path / "routing.json")
