"""Run a stand-in server as a child process and wait for its ``READY`` line.

Used by the tests and by the local-process pieces of the demo: start
``python -m cluster.standin``, read ``READY <port>`` from its stdout within a
deadline, and always stop it (SIGTERM, then SIGKILL) when leaving the
``with`` block.  The bearer token travels in the child's environment only.
"""

from __future__ import annotations

import os
import selectors
import subprocess  # nosec B404 - a fixed argv that runs our own module, never through a shell
import sys
import time
from pathlib import Path
from types import TracebackType

__all__ = ["StandinProcess", "READY_TIMEOUT", "STOP_TIMEOUT"]

READY_TIMEOUT = 15.0
"""Seconds to wait for ``READY``: an interpreter start plus imports, with room
for a loaded CI machine."""

STOP_TIMEOUT = 5.0
"""Seconds between SIGTERM and SIGKILL."""

MAX_READY_LINE = 64
"""Longest first line accepted from the child (``READY 65535`` is 11 bytes)."""

_BEARER_ENV = "SLUICE_BACKEND_TOKEN"
_SOURCE_ROOT = str(Path(__file__).resolve().parents[2])


class StandinProcess:
    """One ``python -m cluster.standin`` child; ``with`` starts and stops it."""

    def __init__(
        self,
        *,
        model: str,
        kind: str,
        host: str = "127.0.0.1",
        port: int = 0,
        token_delay: float = 0.0,
        dimensions: int = 32,
        token: str | None = None,
        ready_timeout: float = READY_TIMEOUT,
        tls: tuple[Path, Path, Path] | None = None,
    ) -> None:
        """``tls``: (key, certificate, accepted client certificates): serve TLS and
        require a client certificate on every path, as the job templates do."""
        self.host = host
        self.port = port
        self._argv = [
            sys.executable,
            "-m",
            "cluster.standin",
            "--host",
            host,
            "--port",
            str(port),
            "--model",
            model,
            "--kind",
            kind,
            "--token-delay",
            repr(float(token_delay)),
            "--dimensions",
            str(dimensions),
        ]
        if tls is not None:
            key, cert, clients = tls
            self._argv += [
                "--ssl-keyfile",
                str(key),
                "--ssl-certfile",
                str(cert),
                "--ssl-ca-certs",
                str(clients),
                "--ssl-cert-reqs",
                "2",
            ]
        self._token = token
        self._ready_timeout = ready_timeout
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def start(self) -> int:
        """Start the child and return its port once it printed ``READY``."""
        env = dict(os.environ)
        env.pop(_BEARER_ENV, None)
        if self._token is not None:
            env[_BEARER_ENV] = self._token
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [_SOURCE_ROOT, env.get("PYTHONPATH")]))
        # fixed argv (sys.executable -m cluster.standin ...), no shell
        self._proc = subprocess.Popen(  # nosec B603
            self._argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env
        )
        try:
            self.port = self._read_ready()
        except BaseException:
            self.stop()
            raise
        return self.port

    def _read_ready(self) -> int:
        proc = self._proc
        if proc is None or proc.stdout is None:
            raise RuntimeError("stand-in not started")
        fd = proc.stdout.fileno()
        deadline = time.monotonic() + self._ready_timeout
        line = b""
        with selectors.DefaultSelector() as selector:
            selector.register(fd, selectors.EVENT_READ)
            while not line.endswith(b"\n"):
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not selector.select(remaining):
                    raise RuntimeError("stand-in did not become ready in time")
                chunk = os.read(fd, 1)
                if not chunk:
                    raise RuntimeError(f"stand-in exited before READY (status {proc.wait()})")
                line += chunk
                if len(line) > MAX_READY_LINE:
                    raise RuntimeError("stand-in printed an unexpected line")
        word, _, port = line.decode("ascii", "replace").strip().partition(" ")
        if word != "READY" or not port.isdigit():
            raise RuntimeError("stand-in printed an unexpected line")
        return int(port)

    def stop(self) -> int | None:
        """SIGTERM, wait, SIGKILL if needed; returns the exit status."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        return proc.returncode

    def __enter__(self) -> StandinProcess:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
