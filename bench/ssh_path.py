"""Benchmark: the request path through the appliance and a real OpenSSH server.

Starts a stand-in model server, sshd with the gate as the forced command of a
functional account (tests/services/sshd.py: needs root, like the tests), and
`sluice serve` with the SSH transport in exec mode (one SSH channel and one
gate process per request, as the published system did) and in mux mode (one
long-lived channel per connection, many requests in flight).  Prints
requests/s and p50/p99 for each against calling the stand-in directly.

    sudo .venv/bin/python bench/ssh_path.py [--seconds 10]

All traffic goes to 127.0.0.1, for a bounded time.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _load import free_port, print_table, wrk  # noqa: E402

from tests.services.sshd import Sshd  # noqa: E402


def start_serve(sshd: Sshd, mode: str, key: str, workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    config = workdir / f"appliance-{mode}.toml"
    config.write_text(
        f"""[server]
port = {port}
[[clusters]]
name = "hpc"
transport = "ssh"
mode = "{mode}"
host = "127.0.0.1"
port = {sshd.port}
user = "sluicegate"
client_key = "{sshd.client_key}"
known_hosts = "{sshd.known_hosts}"
connections = 2
[[api_keys]]
user = "bench"
key_id = "bench"
sha256 = "{hashlib.sha256(key.encode()).hexdigest()}"
"""
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "appliance.cli", "serve", "--config", str(config)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    import httpx2

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx2.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200:
                return process, f"http://127.0.0.1:{port}/v1/chat/completions"
        except httpx2.HTTPError:
            pass
        time.sleep(0.2)
    process.kill()
    raise SystemExit("sluice serve did not become ready")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=10)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    workdir = Path(tempfile.mkdtemp(prefix="sluice-bench-ssh-"))
    token = secrets.token_urlsafe(24)
    key = "sk-bench-" + secrets.token_urlsafe(24)
    port = free_port()
    backend = subprocess.Popen(
        [sys.executable, "-m", "cluster.standin", "--port", str(port), "--model", "standin-chat", "--kind", "chat"],
        stdout=subprocess.PIPE,
        env={**os.environ, "SLUICE_BACKEND_TOKEN": token},
        cwd=ROOT,
    )
    assert backend.stdout is not None
    backend.stdout.readline()
    sshd = Sshd(
        f'[gate]\nrouting_table = "routing.json"\n[[backends]]\nmodel = "standin-chat"\n'
        f'url = "http://127.0.0.1:{port}"\nroutes = ["chat", "completions"]\ntoken_file = "chat.token"\n',
        {"chat.token": token},
    )
    direct = f"http://127.0.0.1:{port}/v1/chat/completions"
    rows: list[tuple[str, int, dict[str, float]]] = []
    try:
        for connections in (1, 32):
            rows.append(("stand-in directly", connections, wrk(direct, token, connections, args.seconds, workdir)))
        for mode in ("exec", "mux"):
            serve, url = start_serve(sshd, mode, key, workdir)
            try:
                wrk(url, key, 4, 2, workdir)  # warm-up
                for connections in (1, 32) if mode == "mux" else (1, 8):
                    rows.append((f"appliance + ssh, {mode}", connections, wrk(url, key, connections, args.seconds, workdir)))
            finally:
                serve.send_signal(signal.SIGTERM)
                serve.wait(30)
    finally:
        sshd.stop()
        backend.terminate()
        backend.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)
    print_table(rows, "stand-in directly")
    exec_rps = max(r["rps"] for n, c, r in rows if n.endswith("exec"))
    mux_rps = max(r["rps"] for n, c, r in rows if n.endswith("mux"))
    print(f"mux / exec requests/s: {mux_rps / exec_rps:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
