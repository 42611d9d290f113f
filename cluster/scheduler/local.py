"""The local-process scheduler backend: services as child processes on this machine.

Each instance gets a free random port and a random bearer token, passed in
the environment (``SLUICE_BACKEND_TOKEN``), never on a command line.  An
instance enters the routing table only once its ``/health`` answers, and
leaves it as soon as its process ends; dead instances are replaced.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import secrets
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import Final

from policy.errors import SluiceError

from ..backend_client import BackendPool
from ..config import ClusterConfig, Service
from ..routing import Instance, write_table

__all__ = ["LocalScheduler"]

log = logging.getLogger("sluice.scheduler")

# Ports handed to instances: above the usual ephemeral range's start on most
# systems' registered services, below Linux's default ephemeral range.
PORT_RANGE: Final = (20000, 32000)

# How often the pass runs, and how long one health probe may take.
PASS_INTERVAL: Final = 0.5
PROBE_TIMEOUT: Final = 1.0

# Grace period between SIGTERM and SIGKILL when stopping an instance.
STOP_GRACE: Final = 5.0

# Variables an instance inherits; everything else in our environment stays here.
_INHERITED: Final = ("PATH", "HOME", "LANG", "LC_ALL", "PYTHONPATH", "VIRTUAL_ENV", "TMPDIR")


@dataclass(slots=True)
class _Process:
    service: Service
    instance: Instance
    process: asyncio.subprocess.Process
    started: float
    ready: bool = False
    probe: asyncio.Task[bool] | None = field(default=None)


def _free_port(taken: set[int]) -> int:
    """A random port nobody listens on and no instance was given."""
    for _ in range(100):
        port = random.randint(*PORT_RANGE)  # nosec B311
        if port in taken:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port")


class LocalScheduler:
    """Runs the ``backend = "local"`` services of ``config`` as child processes."""

    def __init__(self, config: ClusterConfig) -> None:
        self._config = config
        self._services = [s for s in config.services if s.backend == "local"]
        self._processes: list[_Process] = []
        self._pool = BackendPool(connect_timeout=PROBE_TIMEOUT)
        self._published: dict[str, tuple[Instance, ...]] | None = None

    async def run(self, stop: asyncio.Event) -> None:
        """Pass after pass until ``stop`` is set; then stop every instance."""
        try:
            while not stop.is_set():
                await self.run_pass()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), PASS_INTERVAL)
        finally:
            await self.shutdown()

    async def run_pass(self) -> None:
        now = time.monotonic()
        for proc in list(self._processes):
            if proc.process.returncode is not None:
                log.warning('{"event":"instance_exited","model":"%s","status":%d}', proc.service.model, proc.process.returncode)
                self._processes.remove(proc)
            elif not proc.ready:
                await self._probe(proc, now)
        for service in self._services:
            alive = sum(1 for p in self._processes if p.service is service)
            for _ in range(service.min_instances - alive):
                await self._start(service)
        self._publish()

    async def _probe(self, proc: _Process, now: float) -> None:
        if proc.probe is None:
            proc.probe = asyncio.create_task(self._healthy(proc.instance))
            return
        if not proc.probe.done():
            return
        healthy, proc.probe = proc.probe.result(), None
        if healthy:
            proc.ready = True
        elif now - proc.started > proc.service.warmup_timeout:
            log.warning('{"event":"warmup_timeout","model":"%s"}', proc.service.model)
            await self._stop(proc)
            self._processes.remove(proc)

    async def _healthy(self, instance: Instance) -> bool:
        try:
            response = await self._pool.request(instance.host, instance.port, None, "GET", "/health", b"", PROBE_TIMEOUT)
        except SluiceError:
            return False
        try:
            await response.read(4096)
            return response.status == 200
        except SluiceError:
            return False
        finally:
            response.close()

    async def _start(self, service: Service) -> None:
        taken = {p.instance.port for p in self._processes}
        port = _free_port(taken)
        token = secrets.token_urlsafe(32)
        argv = [
            arg.replace("{port}", str(port)).replace("{model}", service.model).replace("{python}", sys.executable)
            for arg in service.command
        ]
        env = {k: os.environ[k] for k in _INHERITED if k in os.environ}
        env["SLUICE_BACKEND_TOKEN"] = token
        process = await asyncio.create_subprocess_exec(
            *argv, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL
        )
        instance = Instance(f"local:{process.pid}", "127.0.0.1", port, token)
        self._processes.append(_Process(service, instance, process, time.monotonic()))

    def _publish(self) -> None:
        table: dict[str, tuple[Instance, ...]] = {s.model: () for s in self._services}
        for proc in self._processes:
            if proc.ready:
                table[proc.service.model] += (proc.instance,)
        if table != self._published:
            write_table(self._config.gate.routing_table, table)
            self._published = table

    async def _stop(self, proc: _Process) -> None:
        if proc.probe is not None:
            proc.probe.cancel()
        if proc.process.returncode is None:
            proc.process.terminate()
            try:
                await asyncio.wait_for(proc.process.wait(), STOP_GRACE)
            except TimeoutError:
                proc.process.kill()
                await proc.process.wait()

    async def shutdown(self) -> None:
        """Take every instance out of the table, then stop them all."""
        for proc in self._processes:
            proc.ready = False
        with contextlib.suppress(OSError):
            self._publish()
        await asyncio.gather(*(self._stop(p) for p in self._processes), return_exceptions=True)
        self._processes.clear()
        await self._pool.aclose()
