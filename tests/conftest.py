"""Shared fixtures: real processes (stand-in model servers, gate, demo), always cleaned up."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Standin:
    model: str
    kind: str
    port: int
    token: str
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stats(self) -> dict[str, int]:
        import httpx2

        return httpx2.get(f"{self.url}/stats", headers={"Authorization": f"Bearer {self.token}"}, timeout=5).json()


def start_standin(model: str, kind: str, token_delay: float = 0.0) -> Standin:
    token = secrets.token_urlsafe(16)
    env = {**os.environ, "SLUICE_BACKEND_TOKEN": token}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cluster.standin",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--model",
            model,
            "--kind",
            kind,
            "--token-delay",
            str(token_delay),
        ],
        stdout=subprocess.PIPE,
        env=env,
        cwd=ROOT,
    )
    assert process.stdout is not None
    line = process.stdout.readline().decode()
    if not line.startswith("READY "):
        process.kill()
        raise RuntimeError(f"stand-in did not start: {line!r}")
    return Standin(model, kind, int(line.split()[1]), token, process)


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    for pipe in (process.stdin, process.stdout, process.stderr):
        if pipe is not None:
            pipe.close()


@dataclass
class Cluster:
    """A cluster config with static backends pointing at running stand-ins."""

    config: Path
    chat: Standin
    embed: Standin

    def gate_argv(self) -> list[str]:
        return [sys.executable, "-I", "-m", "cluster.cli", "gate", "--config", str(self.config), "--local-pipe"]


def write_static_config(directory: Path, backends: list[tuple[str, str, int, str | None, list[str]]]) -> Path:
    """backends: (model, host, port, token, routes)."""
    lines = ["[gate]", 'routing_table = "routing.json"', "request_timeout = 30", ""]
    for index, (model, host, port, token, routes) in enumerate(backends):
        lines += ["[[backends]]", f'model = "{model}"', f'url = "http://{host}:{port}"', f"routes = {routes!r}".replace("'", '"')]
        if token is not None:
            (directory / f"token-{index}").write_text(token)
            lines.append(f'token_file = "token-{index}"')
        lines.append("")
    path = directory / "cluster.toml"
    path.write_text("\n".join(lines))
    return path


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    chat = start_standin("standin-chat", "chat", token_delay=0.005)
    embed = start_standin("standin-embed", "embeddings")
    directory = tmp_path_factory.mktemp("cluster")
    config = write_static_config(
        directory,
        [
            ("standin-chat", "127.0.0.1", chat.port, chat.token, ["chat", "completions"]),
            ("standin-embed", "127.0.0.1", embed.port, embed.token, ["embeddings"]),
        ],
    )
    try:
        yield Cluster(config, chat, embed)
    finally:
        stop(chat.process)
        stop(embed.process)


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.05) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
