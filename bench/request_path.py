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
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _load import free_port, print_table, wrk  # noqa: E402
from _load import start_demo as start_demo_on_port  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def start_demo(mode: str, key: str) -> tuple[subprocess.Popen[str], str]:
    """The demo in ``mode`` and its base URL."""
    return start_demo_on_port(key, "--mode", mode, "--token-delay", "0")


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
        stdout=subprocess.PIPE,
        env={**os.environ, "SLUICE_BACKEND_TOKEN": token},
        text=True,
        cwd=ROOT,
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
            demo, base = start_demo(mode, key)
            url = f"{base}/v1/chat/completions"
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

    print_table(rows, "stand-in directly")
    return 0


if __name__ == "__main__":
    sys.exit(main())
