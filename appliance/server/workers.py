"""Several appliance worker processes on one listening socket, kept running by the parent.

``[server] workers = N`` (N > 1): the parent process binds the listening
socket(s) once and starts N workers, each its own process with its own event
loop, its own gate connections (SSH or local sessions) and its own appliance;
the kernel hands each new connection to whichever worker accepts it first.

Why one socket bound by the parent, and not ``SO_REUSEPORT`` (a socket per
worker on the same port):

* connections waiting in the kernel's queue belong to the one socket, so a
  worker that crashes or restarts loses none of them; with ``SO_REUSEPORT``
  each worker has its own queue, and the connections queued on a dying
  worker's socket are reset;
* the port is bound once, at start: "address in use" is one clear error
  before any worker starts, and no other process of the same account can
  join the port (``SO_REUSEPORT`` lets any of them bind it too and take a
  share of the traffic);
* a busy worker accepts less (it returns to ``accept`` less often), so the
  load follows the free cores; ``SO_REUSEPORT`` spreads connections by a
  hash, busy or not.

The parent does no request work.  It supervises: a worker that dies is
started again (a new process, fresh state); SIGTERM or SIGINT is passed to
every worker, which stops accepting and drains its open requests (Hypercorn's
graceful shutdown), and a worker still running after :data:`STOP_GRACE`
seconds is killed; if workers keep dying (:data:`MAX_DEATHS` within
:data:`DEATH_WINDOW` seconds: a broken configuration or store, not bad luck)
the parent stops the rest and exits non-zero.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import multiprocessing
import signal
import socket
import time
from collections.abc import Callable
from multiprocessing.process import BaseProcess
from typing import Final

from policy.events import event_line

from .config import GRACEFUL_TIMEOUT, LISTEN_BACKLOG

__all__ = [
    "DEATH_WINDOW",
    "MAX_DEATHS",
    "STOP_GRACE",
    "Deaths",
    "Supervisor",
    "bind_socket",
    "spawn_context",
]

log = logging.getLogger("sluice.server")

# Worker deaths within DEATH_WINDOW seconds after which the parent gives up (exit 1).
MAX_DEATHS: Final = 5
DEATH_WINDOW: Final = 60.0

# Seconds to wait before starting a dead worker again, doubled for each recent death, at most RESTART_DELAY_MAX:
# a worker that dies at start (its store is down) is not restarted in a tight loop.
RESTART_DELAY: Final = 0.25
RESTART_DELAY_MAX: Final = 5.0

# Seconds a worker has after SIGTERM: Hypercorn's graceful drain, then closing its
# accounting, audit trail and gate sessions.  Past it, SIGKILL.
STOP_GRACE: Final = GRACEFUL_TIMEOUT + 15.0


def spawn_context() -> multiprocessing.context.SpawnContext:
    """Workers are fresh interpreters (spawn), never forks of a parent that holds threads and a loop."""
    return multiprocessing.get_context("spawn")


def bind_socket(host: str, port: int, backlog: int = LISTEN_BACKLOG) -> socket.socket:
    """A listening TCP socket on ``host:port`` that workers inherit (Hypercorn's ``fd://`` bind)."""
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # accepted sockets inherit it (Linux)
        sock.bind((host, port))
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


class Deaths:
    """Recent worker deaths: how long to wait before a restart, and when to give up."""

    __slots__ = ("_times", "limit", "window")

    def __init__(self, limit: int = MAX_DEATHS, window: float = DEATH_WINDOW) -> None:
        self.limit, self.window = limit, window
        self._times: collections.deque[float] = collections.deque()

    def record(self, now: float) -> bool:
        """Count a death at ``now``; True when there have been too many to go on."""
        self._times.append(now)
        while self._times and self._times[0] <= now - self.window:
            self._times.popleft()
        return len(self._times) >= self.limit

    def delay(self) -> float:
        """Seconds before the next restart: longer the more workers died recently."""
        recent = max(len(self._times) - 1, 0)
        return float(min(RESTART_DELAY * 2**recent, RESTART_DELAY_MAX))


class Supervisor:
    """Starts ``count`` workers from ``start(index)``, restarts the dead, stops them all on :meth:`stop`."""

    def __init__(
        self,
        start: Callable[[int], BaseProcess],
        count: int,
        *,
        deaths: Deaths | None = None,
        on_death: Callable[[BaseProcess], None] | None = None,
        grace: float = STOP_GRACE,
    ) -> None:
        self._start = start
        self._count = count
        self._deaths = deaths or Deaths()
        self._on_death = on_death
        self._grace = grace
        self._workers: dict[int, BaseProcess] = {}
        self._ended_pids: set[int | None] = set()
        self._stopping = asyncio.Event()
        self._failed = False
        self._wake = asyncio.Event()
        self.restarts = 0

    @property
    def pids(self) -> list[int]:
        return [w.pid for w in self._workers.values() if w.pid is not None and w.is_alive()]

    def stop(self) -> None:
        """Begin a graceful stop (a signal handler may call this)."""
        self._stopping.set()
        self._wake.set()

    async def run(self) -> int:
        """Run until :meth:`stop` (0 once every worker has drained) or until workers keep dying (1)."""
        loop = asyncio.get_running_loop()
        dead: asyncio.Queue[int] = asyncio.Queue()
        for index in range(self._count):
            self._launch(index, loop, dead)
        waiter = asyncio.ensure_future(self._stopping.wait())
        try:
            while not self._stopping.is_set():
                getter = asyncio.ensure_future(dead.get())
                await asyncio.wait({getter, waiter}, return_when=asyncio.FIRST_COMPLETED)
                if not getter.done():
                    getter.cancel()
                    break
                index = getter.result()
                process = self._workers[index]
                process.join(1)  # its sentinel closed as it exited: reaped at once, or very soon
                self._ended(process)
                if self._stopping.is_set():
                    break
                log.error(event_line("worker_died", worker=index, pid=process.pid, exitcode=process.exitcode))
                if self._deaths.record(time.monotonic()):
                    log.error(event_line("workers_keep_dying", deaths=self._deaths.limit, window=self._deaths.window))
                    self._failed = True
                    break
                try:
                    await asyncio.wait_for(asyncio.shield(waiter), self._deaths.delay())
                except TimeoutError:
                    pass
                if self._stopping.is_set():
                    break
                self._launch(index, loop, dead)
                self.restarts += 1
        finally:
            waiter.cancel()
            await self._stop_all(loop)
        return 1 if self._failed else 0

    def _launch(self, index: int, loop: asyncio.AbstractEventLoop, dead: asyncio.Queue[int]) -> None:
        process = self._start(index)
        self._workers[index] = process
        sentinel = process.sentinel

        def ended() -> None:
            loop.remove_reader(sentinel)
            dead.put_nowait(index)

        loop.add_reader(sentinel, ended)
        log.info(event_line("worker_started", worker=index, pid=process.pid))

    async def _stop_all(self, loop: asyncio.AbstractEventLoop) -> None:
        """SIGTERM to every live worker, wait for each to drain, SIGKILL the late ones."""
        alive = [w for w in self._workers.values() if w.pid not in self._ended_pids and w.exitcode is None]
        for worker in alive:
            loop.remove_reader(worker.sentinel)
            if worker.pid is not None:
                worker.terminate()  # SIGTERM: the worker's graceful drain
        deadline = time.monotonic() + self._grace
        for worker in alive:
            while worker.is_alive() and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            if worker.is_alive():
                log.error(event_line("worker_killed", pid=worker.pid, grace=self._grace))
                worker.kill()
            worker.join(1)
            self._ended(worker)

    def _ended(self, process: BaseProcess) -> None:
        """Once per process: the caller's clean-up (a dead worker's live gauges)."""
        if process.pid in self._ended_pids:
            return
        self._ended_pids.add(process.pid)
        if self._on_death is not None:
            self._on_death(process)


def install_stop(supervisor: Supervisor) -> None:
    """SIGTERM and SIGINT stop the supervisor gracefully."""
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, supervisor.stop)
