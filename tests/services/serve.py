"""`sluice serve` as a subprocess, with its output in files the test owns.

Used by the quota, accounting and canary tests: each appliance gets its own
TOML configuration (clusters, API keys, and whatever extra tables the test
adds), its own working and temporary directory, and its stdout and stderr in
files, so that a test can read its logs and search everything it wrote.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx2

ROOT = Path(__file__).resolve().parents[2]


def toml_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def api_keys_toml(keys: dict[str, tuple[str, str]]) -> str:
    """``[[api_keys]]`` tables for ``{key: (user, key_id)}``."""
    lines = []
    for key, (user, key_id) in keys.items():
        lines += [
            "[[api_keys]]",
            f"user = {toml_string(user)}",
            f"key_id = {toml_string(key_id)}",
            f'sha256 = "{hashlib.sha256(key.encode()).hexdigest()}"',
            "",
        ]
    return "\n".join(lines)


def local_cluster_toml(gate_argv: list[str], mode: str = "mux") -> str:
    command = ", ".join(toml_string(a) for a in gate_argv)
    return f'[[clusters]]\nname = "local"\ntransport = "local"\nmode = "{mode}"\ngate_command = [{command}]\n'


@dataclass
class Served:
    """One running `sluice serve`."""

    name: str
    port: int
    directory: Path
    process: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_lines(self) -> list[str]:
        return self.stderr.read_text(errors="replace").splitlines()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                return self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.process.wait()

    def kill(self) -> None:
        """SIGKILL: a crash, with no chance to clean up."""
        self.stop(signal.SIGKILL)


def start_serve(
    directory: Path, name: str, port: int, body: str, ready_path: str = "/healthz", timeout: float = 60, server: str = ""
) -> Served:
    """Write ``body`` (plus a [server] table, with ``server``'s extra lines) as the config and start
    `sluice serve` in ``directory``.  A body without an ``[access]`` table gets ``unsafe_allow_all``
    (these tests are not about access; the default is to deny every model)."""
    if "[access]" not in body:
        body += "\n[access]\nunsafe_allow_all = true\n"
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / "tmp"
    tmp.mkdir(exist_ok=True)
    config = directory / f"{name}.toml"
    config.write_text(f"[server]\nport = {port}\nkeepalive_interval = 1\nrequest_timeout = 30\n{server}\n\n{body}")
    stdout, stderr = directory / f"{name}.stdout", directory / f"{name}.stderr"
    env = {**os.environ, "TMPDIR": str(tmp), "PYTHONDONTWRITEBYTECODE": "1"}
    with stdout.open("wb") as out, stderr.open("wb") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "appliance.cli", "serve", "--config", str(config)],
            cwd=directory,
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
            env=env,
        )
    served = Served(name, port, directory, process, stdout, stderr, env)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"sluice serve {name} exited: {stderr.read_text()[-2000:]}")
        try:
            if httpx2.get(served.url + ready_path, timeout=2).status_code == 200:
                return served
        except httpx2.HTTPError:
            pass
        time.sleep(0.1)
    served.kill()
    raise RuntimeError(f"sluice serve {name} did not become ready: {stderr.read_text()[-2000:]}")
