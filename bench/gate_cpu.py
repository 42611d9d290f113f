"""Benchmark: the gate's CPU time per request, in this tree and in others, interleaved.

Starts ``sluice demo`` (mux mode over pipes, one gate process, no token delay,
request logs on) from each source tree, then runs rounds: each round sends
wrk load (plain and streamed chat bodies) to every demo in turn and reads the
gate's and the appliance's CPU time (utime + stime from /proc) before and
after.  Prints the median and range of microseconds per request per process.

    .venv/bin/python bench/gate_cpu.py [--tree base=/path/to/other/checkout] [--rounds 3]
        [--seconds 8] [--connections 32]

Each tree is run with its own ``.venv/bin/python`` (the gate is started with
``python -I``, so it imports what that interpreter's site-packages point at).
The tree this file is in is always measured, named ``this``.  All traffic goes
to 127.0.0.1, for a bounded time; wrk shares the cores with what it measures,
so compare trees within one run, never across runs.
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _load import BODY, free_port, wrk  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
STREAMED = BODY[:-1] + ',"stream":true}'
TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def cpu_seconds(pid: int) -> float:
    fields = _stat(pid)
    return (int(fields[11]) + int(fields[12])) / TICK


def find_gate(parent: int, timeout: float = 30.0) -> int:
    """The gate process under ``parent``: the one whose command line runs ``cluster.cli gate``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
                ppid = int(_stat(int(entry))[1])
            except (OSError, IndexError):
                continue
            if ppid == parent and b"cluster.cli" in argv and b"gate" in argv:
                return int(entry)
        time.sleep(0.2)
    raise SystemExit(f"no gate process under {parent}")


class Demo:
    def __init__(self, name: str, root: Path, key: str) -> None:
        self.name = name
        self.key = key
        port = free_port()
        python = root / ".venv" / "bin" / "python"
        self.process = subprocess.Popen(
            [str(python), "-m", "appliance.cli", "demo", "--port", str(port), "--api-key", key]
            + ["--mode", "mux", "--token-delay", "0", "--log-level", "info"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            cwd=root,
        )
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.startswith("Sluice demo ready"):
                break
        else:
            raise SystemExit(f"the demo of {name} did not start")
        self.url = f"http://127.0.0.1:{port}/v1/chat/completions"

    def gate(self) -> int:
        return find_gate(self.process.pid)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", action="append", default=[], help="NAME=PATH of another checkout to compare")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    trees = [("this", ROOT)] + [(spec.split("=", 1)[0], Path(spec.split("=", 1)[1])) for spec in args.tree]
    workdir = Path(tempfile.mkdtemp(prefix="sluice-gate-cpu-"))
    key = "sk-bench-" + secrets.token_urlsafe(24)
    demos = [Demo(name, root, key) for name, root in trees]
    bodies = {"plain": BODY, "streamed": STREAMED}
    samples: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
    try:
        gates = {demo.name: demo.gate() for demo in demos}
        for demo in demos:
            wrk(demo.url, key, args.connections, 3, workdir)  # warm-up: as many backend connections pooled as the runs use
        for _ in range(args.rounds):
            for demo in demos:
                for body_name, body in bodies.items():
                    gate, appliance = gates[demo.name], demo.process.pid
                    before = cpu_seconds(gate), cpu_seconds(appliance)
                    result = wrk(demo.url, key, args.connections, args.seconds, workdir, body=body)
                    after = cpu_seconds(gate), cpu_seconds(appliance)
                    requests = max(result["rps"] * args.seconds, 1.0)
                    per = [(a - b) * 1e6 / requests for a, b in zip(after, before, strict=True)]
                    samples.setdefault((demo.name, body_name), []).append((per[0], per[1], result["rps"]))
    finally:
        for demo in demos:
            demo.stop()
    print(f"\n{os.cpu_count()} cores; {args.rounds} interleaved rounds of {args.seconds} s, {args.connections} in flight")
    print(f"{'tree':<10} {'body':<9} {'gate us/req':>24} {'appliance us/req':>24} {'req/s':>20}")
    for (name, body_name), rows in samples.items():
        cols = []
        for i in range(3):
            values = [row[i] for row in rows]
            cols.append(f"{statistics.median(values):.0f} ({min(values):.0f}-{max(values):.0f})")
        print(f"{name:<10} {body_name:<9} {cols[0]:>24} {cols[1]:>24} {cols[2]:>20}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
