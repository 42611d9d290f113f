"""Benchmark: the demo request path against calling the stand-in backend directly.

Prints requests/s and p50/p99 latency for a small non-streamed chat request,
with 1 and with 32 requests in flight, for the stand-in model server alone
and for the whole path (appliance -> gate -> stand-in) in mux mode, and in
exec mode (one gate process per request, as the published system did).

    .venv/bin/python bench/request_path.py [--seconds 10] [--skip-exec]

Needs `wrk` (Debian package wrk; scripts/test installs it).  All traffic goes
to 127.0.0.1, for a bounded time.  The load generator shares the machine's
cores with what it measures, so absolute numbers are pessimistic.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BODY = '{"model":"standin-chat","messages":[{"role":"user","content":"Say hello to the benchmark"}],"max_tokens":8}'
LUA = """wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer %s"
wrk.body = '%s'
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def wrk(url: str, key: str, connections: int, seconds: int, workdir: Path) -> dict[str, float]:
    script = workdir / f"post-{connections}.lua"
    script.write_text(LUA % (key, BODY))
    threads = 1 if connections == 1 else 2
    out = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script), url],
        capture_output=True, text=True, check=True,
    ).stdout
    if "Non-2xx" in out or "Socket errors" in out:
        raise SystemExit(f"errors during the run against {url} with {connections} in flight:\n{out}")
    latency = dict(re.findall(r"^\s+(50|99)%\s+(\S+)\s*$", out, re.M))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    if "50" not in latency or "99" not in latency:
        raise SystemExit(f"wrk printed no latency distribution for {url}:\n{out}")
    return {"rps": rps, "p50": _ms(latency["50"]), "p99": _ms(latency["99"])}


def start_demo(mode: str, key: str) -> tuple[subprocess.Popen[str], str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "appliance.cli", "demo", "--port", str(port), "--api-key", key, "--mode", mode,
         "--token-delay", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT,
    )
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith("Sluice demo ready"):
            return process, f"http://127.0.0.1:{port}/v1/chat/completions"
    raise SystemExit("the demo did not start")


def stop(process: subprocess.Popen[str]) -> None:
    process.send_signal(signal.SIGTERM)
    process.wait(30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--skip-exec", action="store_true")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    workdir = Path(tempfile.mkdtemp(prefix="sluice-bench-"))
    token = secrets.token_urlsafe(24)
    key = "sk-bench-" + secrets.token_urlsafe(24)
    port = free_port()
    backend = subprocess.Popen(
        [sys.executable, "-m", "cluster.standin", "--port", str(port), "--model", "standin-chat", "--kind", "chat"],
        stdout=subprocess.PIPE, env={**os.environ, "SLUICE_BACKEND_TOKEN": token}, text=True, cwd=ROOT,
    )
    assert backend.stdout is not None
    backend.stdout.readline()
    direct = f"http://127.0.0.1:{port}/v1/chat/completions"
    rows: list[tuple[str, int, dict[str, float]]] = []
    try:
        for connections in (1, 32):
            rows.append(("stand-in directly", connections, wrk(direct, token, connections, args.seconds, workdir)))
        modes = ["mux"] if args.skip_exec else ["mux", "exec"]
        for mode in modes:
            demo, url = start_demo(mode, key)
            try:
                # Exec mode starts a gate process per request: 32 at once on two
                # cores only measures the scheduler's queue, so it gets 8.
                for connections in (1, 32) if mode == "mux" else (1, 8):
                    if connections == 1:
                        wrk(url, key, 4, 2, workdir)  # warm-up: gate started, connections pooled
                    rows.append((f"demo path, {mode} mode", connections, wrk(url, key, connections, args.seconds, workdir)))
            finally:
                stop(demo)
    finally:
        backend.terminate()
        backend.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)

    print(f"\n{'path':<24} {'in flight':>9} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8}")
    for name, connections, result in rows:
        print(f"{name:<24} {connections:>9} {result['rps']:>9.0f} {result['p50']:>8.3f} {result['p99']:>8.3f}")
    base = {c: r for n, c, r in rows if n == "stand-in directly"}
    print()
    for name, connections, result in rows:
        if name != "stand-in directly" and connections == 1:
            print(f"{name}: adds {result['p50'] - base[1]['p50']:.3f} ms at p50 with one request in flight")
    for name, connections, result in rows:
        if name != "stand-in directly" and connections > 1:
            print(f"{name}: {result['rps']:.0f} requests/s with {connections} in flight")
    return 0


if __name__ == "__main__":
    sys.exit(main())
