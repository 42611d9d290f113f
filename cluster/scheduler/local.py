"""The local-process backend: services as child processes on this machine.

The same policy as the Slurm backend (:mod:`cluster.scheduler.plan`, run by
:class:`~cluster.scheduler.engine.Engine`), with processes instead of jobs:
a process that runs but does not answer ``/health`` yet is warming up, one
that exited has ended.  Each instance gets a free random port and a random
bearer token, passed in the environment (``SLUICE_BACKEND_TOKEN``), never on
a command line.  An instance enters the routing table only once its
``/health`` answers, and leaves it as soon as its process ends.

The processes are children of one long-running scheduler process (the
``sluice-cluster scheduler`` loop, which the demo starts), which holds the
local lock for its whole life and stops every instance when it stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import sys
import time
from typing import Final

from policy.errors import InternalError
from policy.events import event_line

from ..backend_client import BackendPool
from ..config import PLACEHOLDER, ClusterConfig, Service
from ..tls import JobIdentity
from .engine import Engine
from .lock import PassLock
from .paths import lock_path, state_path
from .state import JobRecord, ensure_private_dir, load_state, save_state
from .template import tls_values

__all__ = ["LocalBackend", "LocalScheduler", "LocalSchedulerBusy"]

log = logging.getLogger("sluice.scheduler")

# How often the loop runs a pass (seconds): local processes start in well
# under a second, so a held request waits little more than this.
PASS_INTERVAL: Final = 0.5

# Grace period between SIGTERM and SIGKILL when stopping an instance.
STOP_GRACE: Final = 5.0

# Variables an instance inherits; everything else in our environment stays here.
_INHERITED: Final = ("PATH", "HOME", "LANG", "LC_ALL", "PYTHONPATH", "VIRTUAL_ENV", "TMPDIR")


class LocalSchedulerBusy(InternalError, RuntimeError):
    """Another local scheduler runs for this configuration."""


class LocalBackend:
    name = "local"

    def __init__(self) -> None:
        self._processes: dict[str, asyncio.subprocess.Process] = {}
        self._stopping: set[asyncio.Task[None]] = set()

    async def observe(self, jobs: dict[str, JobRecord], now: float) -> list[str]:
        for record in jobs.values():
            process = self._processes.get(record.id)
            if process is None:
                record.state = "GONE"  # from an earlier scheduler: its processes went with it
            elif process.returncode is None:
                record.state = "RUNNING"
                record.started = record.started or now
                record.host = "127.0.0.1"
                continue
            else:
                record.state, record.reason = "EXITED", f"status {process.returncode}"
                self._processes.pop(record.id, None)
            if record.ended is None:
                record.ended = now
        return [job_id for job_id in self._processes if job_id not in jobs]

    async def submit(self, service: Service, port: int, token: str, now: float, tls: JobIdentity | None) -> JobRecord:
        values = {"port": str(port), "model": service.model, "python": sys.executable, **tls_values(tls)}
        argv = [PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), arg) for arg in service.command]
        env = {k: os.environ[k] for k in _INHERITED if k in os.environ}
        env["SLUICE_BACKEND_TOKEN"] = token
        process = await asyncio.create_subprocess_exec(
            *argv, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL
        )
        job_id = f"p{process.pid}"
        self._processes[job_id] = process
        return JobRecord(job_id, service.model, port, token, submitted=now, state="RUNNING", observed=now)

    async def cancel(self, job_ids: list[str]) -> None:
        for job_id in job_ids:
            process = self._processes.get(job_id)
            if process is not None and process.returncode is None:
                task = asyncio.create_task(_stop(process))
                self._stopping.add(task)
                task.add_done_callback(self._stopping.discard)

    def port_free(self, port: int) -> bool:
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                return False
        return True

    async def shutdown(self) -> None:
        processes = list(self._processes.values())
        self._processes.clear()
        await asyncio.gather(*(_stop(p) for p in processes), *self._stopping, return_exceptions=True)


async def _stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        try:
            await asyncio.wait_for(process.wait(), STOP_GRACE)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()


class LocalScheduler:
    """Runs the ``backend = "local"`` services of ``config`` as child processes."""

    def __init__(self, config: ClusterConfig) -> None:
        self._config = config
        self._backend = LocalBackend()
        self._pool = BackendPool(connect_timeout=config.scheduler.probe_timeout)
        self._engine = Engine(config, self._backend, time.time, self._pool)
        self._lock = PassLock(lock_path(config, "local"))

    async def run(self, stop: asyncio.Event) -> None:
        """Pass after pass until ``stop`` is set; then stop every instance."""
        ensure_private_dir(self._config.gate.state)
        if not self._lock.acquire():
            raise LocalSchedulerBusy(f"another local scheduler holds {self._lock.path}")
        try:
            path = state_path(self._config, "local")
            path.unlink(missing_ok=True)  # processes of an earlier run are not ours to manage
            while not stop.is_set():
                await self.run_pass()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), PASS_INTERVAL)
        finally:
            await self.shutdown()
            self._lock.release()

    async def run_pass(self) -> None:
        try:
            async with asyncio.timeout(self._config.scheduler.pass_timeout):
                await self._engine.run_pass()
        except TimeoutError:
            log.error(event_line("pass_timeout", backend="local"))

    async def shutdown(self) -> None:
        """Take every instance out of the table, then stop them all."""
        path = state_path(self._config, "local")
        with contextlib.suppress(OSError, ValueError):
            state = load_state(path)
            state.jobs.clear()
            save_state(path, state)
            self._engine.publish(state)
        await self._backend.shutdown()
        await self._pool.aclose()
