"""Running passes: one Slurm pass in its own process, or a loop.

``sluice-cluster scheduler --config FILE --once`` (what a gate's ping kicks)
runs one Slurm pass under the pass lock and exits.  An alarm ends the
process if the pass outlives its bound by more than a grace period, so even
a pass stuck in the kernel (a hung file system) cannot hold the lock for
ever: the kernel releases it with the process.

``sluice-cluster scheduler --config FILE`` runs the local-process scheduler
(if the configuration has local services) and a Slurm pass every
``pass_interval`` seconds (if it has Slurm services) until SIGTERM or
SIGINT.  Operators need not run it: the appliance's pings drive the Slurm
passes.  It suits a person watching a first deployment, and the tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from typing import Final

from policy.events import event_line

from ..config import ClusterConfig
from .engine import Engine, PassReport
from .local import LocalScheduler
from .lock import PassLock
from .paths import lock_path
from .slurm_backend import SlurmBackend
from .state import ensure_private_dir
from .trigger import KICK_POLL, kick_path, kicked_since, touch

__all__ = ["slurm_pass", "run_once", "run_loop"]

log = logging.getLogger("sluice.scheduler")

# How long a pass waits for the lock before leaving the pass to its holder.
LOCK_WAIT: Final = 1.0

# Seconds past the pass timeout after which a pass process ends itself.
ALARM_GRACE: Final = 30


async def slurm_pass(config: ClusterConfig) -> PassReport | None:
    """One Slurm pass under the lock; None when another process holds it."""
    ensure_private_dir(config.gate.state)
    lock = PassLock(lock_path(config, "slurm"))
    if not lock.acquire(blocking=True, timeout=LOCK_WAIT):
        return None
    try:
        if not config.split_accounts:  # with two accounts the kick file is the gates', not ours
            touch(kick_path(config))
        async with asyncio.timeout(config.scheduler.pass_timeout):
            return await Engine(config, SlurmBackend(config), time.time).run_pass()
    except TimeoutError:
        log.error(event_line("pass_timeout", backend="slurm"))
        return None
    finally:
        lock.release()


def run_once(config: ClusterConfig) -> int:
    signal.alarm(int(config.scheduler.pass_timeout) + ALARM_GRACE)  # SIGALRM's default: end the process
    try:
        report = asyncio.run(slurm_pass(config))
    finally:
        signal.alarm(0)
    if report is not None and not report.observed:
        return 1
    return 0


def warn_single_account(config: ClusterConfig) -> None:
    """One account runs the gate and the jobs: a job can read the gate's keys.  Said on every start."""
    if not config.split_accounts and (config.services or config.static):
        log.warning(
            event_line(
                "single_account_mode",
                detail="jobs run as the gate's account and can read its keys; see docs/operator-slurm.md, Two accounts",
            )
        )


async def run_loop(config: ClusterConfig, stop: asyncio.Event) -> None:
    warn_single_account(config)
    tasks = []
    if config.services_of("local"):
        tasks.append(asyncio.create_task(LocalScheduler(config).run(stop)))
    if config.services_of("slurm"):
        tasks.append(asyncio.create_task(_slurm_loop(config, stop)))
    if not tasks:
        log.warning(event_line("no_services"))
        await stop.wait()
        return
    try:
        await asyncio.gather(*tasks)
    finally:
        stop.set()
        for task in tasks:
            if not task.done():
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task


async def _slurm_loop(config: ClusterConfig, stop: asyncio.Event) -> None:
    while not stop.is_set():
        started, began = time.monotonic(), time.time()
        try:
            await slurm_pass(config)
        except Exception:
            log.exception("slurm pass failed")
        deadline = started + config.scheduler.pass_interval
        # two accounts: a gate's kick (a held request, a ping) starts the next pass early
        while not stop.is_set() and time.monotonic() < deadline:
            if config.split_accounts and kicked_since(config, began):
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), min(KICK_POLL, max(0.0, deadline - time.monotonic())))
