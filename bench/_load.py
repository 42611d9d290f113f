"""Shared pieces of the benchmarks: wrk runs and their parsing, ports, tables."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
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


def start_demo(key: str, *options: str) -> tuple[subprocess.Popen[str], str]:
    """``sluice demo`` on a free port with ``options``; the process and its base URL, once ready."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "appliance.cli", "demo", "--port", str(port), "--api-key", key, *options],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
    )
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith("Sluice demo ready"):
            return process, f"http://127.0.0.1:{port}"
    raise SystemExit("the demo did not start")


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def wrk(url: str, key: str, connections: int, seconds: int, workdir: Path, body: str = BODY) -> dict[str, float]:
    script = workdir / f"post-{connections}-{abs(hash((key, body)))}.lua"
    script.write_text(LUA % (key, body))
    return wrk_script(url, connections, seconds, script)


def wrk_script(url: str, connections: int, seconds: int, script: Path) -> dict[str, float]:
    """wrk against ``url`` with the Lua ``script``: requests/s and p50/p99 ms; any error ends the benchmark."""
    threads = 1 if connections == 1 else 2
    out = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--timeout", "30s", "--latency", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    if "Non-2xx" in out or "Socket errors" in out:
        raise SystemExit(f"errors during the run against {url} with {connections} in flight:\n{out}")
    latency = dict(re.findall(r"^\s+(50|99)%\s+(\S+)\s*$", out, re.M))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    if "50" not in latency or "99" not in latency:
        raise SystemExit(f"wrk printed no latency distribution for {url}:\n{out}")
    return {"rps": rps, "p50": _ms(latency["50"]), "p99": _ms(latency["99"])}


def print_table(rows: list[tuple[str, int, dict[str, float]]], baseline: str) -> None:
    """The results, then the added p50 at one in flight and the throughput under load."""
    print(f"\n{'path':<28} {'in flight':>9} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8}")
    for name, connections, result in rows:
        print(f"{name:<28} {connections:>9} {result['rps']:>9.0f} {result['p50']:>8.3f} {result['p99']:>8.3f}")
    base = {c: r for n, c, r in rows if n == baseline}
    print()
    for name, connections, result in rows:
        if name != baseline and connections == 1:
            print(f"{name}: adds {result['p50'] - base[1]['p50']:.3f} ms at p50 with one request in flight")
    for name, connections, result in rows:
        if name != baseline and connections > 1:
            print(f"{name}: {result['rps']:.0f} requests/s with {connections} in flight")
