"""A real HAProxy in front of appliance replicas, with the configuration the operator guide shows.

``scripts/test`` installs ``haproxy``.  :func:`haproxy_config` writes the
configuration; ``docs/operator-scale.md`` shows its output for three
replicas, and a test holds the two to each other, so the documented
configuration is the one the integration tests run.

What it does: least-connections balancing over the replicas; an HTTP health
check on ``/readyz`` every half second (a replica is out after two failures,
back after two successes); a request whose connection to a replica fails
(the replica just died) is sent to another one (``retries`` with
``option redispatch``: HAProxy retries only when nothing was sent, so a
request is never run twice).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import httpx2

__all__ = ["HAProxy", "haproxy_config"]

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"


def haproxy_config(bind: str, servers: list[tuple[str, str]], request_timeout: int = 330) -> str:
    """The configuration for ``servers`` (name, ``host:port``), listening on ``bind``."""
    lines = [
        "global",
        "    maxconn 4096",
        "",
        "defaults",
        "    mode http",
        "    timeout connect 2s",
        "    timeout http-request 10s",
        f"    timeout client {request_timeout}s",
        f"    timeout server {request_timeout}s",
        "    retries 2",
        "    option redispatch",
        "",
        "frontend sluice",
        f"    bind {bind}",
        "    default_backend appliances",
        "",
        "backend appliances",
        "    balance leastconn",
        "    option httpchk GET /readyz",
        "    http-check expect status 200",
        "    default-server inter 500ms fall 2 rise 2",
        *(f"    server {name} {address} check" for name, address in servers),
        "",
    ]
    return "\n".join(lines)


class HAProxy:
    def __init__(self, port: int, servers: list[tuple[str, str]]) -> None:
        if not Path(HAPROXY).exists():
            raise RuntimeError(f"{HAPROXY} is missing: scripts/test installs haproxy")
        self.port = port
        self.dir = Path(tempfile.mkdtemp(prefix="sluice-haproxy-"))
        self.config = self.dir / "haproxy.cfg"
        self.config.write_text(haproxy_config(f"127.0.0.1:{port}", servers))
        self.pidfile = self.dir / "haproxy.pid"
        subprocess.run([HAPROXY, "-c", "-q", "-f", str(self.config)], check=True)
        subprocess.run([HAPROXY, "-f", str(self.config), "-D", "-p", str(self.pidfile)], check=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx2.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx2.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError("haproxy did not route to a ready replica")

    def close(self) -> None:
        try:
            pid = int(self.pidfile.read_text().split()[0])
            os.kill(pid, signal.SIGTERM)
        except (OSError, ValueError, IndexError):
            pass
        shutil.rmtree(self.dir, ignore_errors=True)
