"""Kicking a Slurm pass from the gate, without waiting for it.

The appliance pings every few seconds; each ping (and each request held for
a model with no ready instance) calls :func:`kick_pass`.  It returns at
once: when no pass ran in the last ``pass_interval`` seconds and none runs
now, it starts ``sluice-cluster scheduler --once`` as a detached process
(its own session, standard input and output on /dev/null, standard error
appended to ``scheduler.log`` in the state directory) and goes on.  The pass
process takes the lock itself; two kicks at once cost one process that finds
the lock taken and exits.

Nothing of the request or the SSH session reaches the pass: its argv is the
configuration path the gate was started with, and its environment is the
gate's own without ``SSH_*`` variables.  ``-I`` keeps Python from importing
anything from the working directory or ``PYTHON*`` variables.

**Two accounts** (``gate.spool_dir`` set): the gate may not start a pass (it
would submit jobs as the gate's account, and a job would then run where it
can read the gate's keys).  It only touches the kick file in the shared spool
directory; the scheduler's loop, run by the jobs account (its crontab), sees
the new mtime within :data:`KICK_POLL` seconds and runs a pass at once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from pathlib import Path
from typing import Final

from policy.events import event_line

from ..config import ClusterConfig
from .lock import is_locked
from .paths import lock_path

__all__ = ["kick_pass", "kick_path", "kicked_since", "KICK_FILE", "KICK_POLL", "SHARED_FILE_MODE"]

log = logging.getLogger("sluice.scheduler")

# Its mtime is the start of the last pass or kick (shared by all gates).
KICK_FILE: Final = "slurm.kick"

# The scheduler log is started afresh (the old one kept as .1) past this size.
MAX_LOG_BYTES: Final = 16 * 1024 * 1024

# Two accounts: how often the scheduler's loop looks at the kick file's mtime
# (one stat; a held request waits at most this long for its pass to start).
KICK_POLL: Final = 0.25

# Files the gate leaves in the shared spool directory (kicks, load files): its
# group (the directory's, setgid) reads them; nobody else.
SHARED_FILE_MODE: Final = 0o640

# Kicks inside one process closer together than this are dropped without
# looking at any file (a burst of held requests).
_LOCAL_SPACING: Final = 0.5

_children: set[int] = set()
_last_kick = float("-inf")


def _reap() -> None:
    for pid in list(_children):
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            done = pid
        if done:
            _children.discard(pid)


def touch(path: Path, mode: int = 0o600) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, mode)
        os.close(fd)
        os.utime(path)


def kicked_since(config: ClusterConfig, since: float) -> bool:
    """Whether a gate touched the kick file after ``since`` (wall clock)."""
    try:
        return kick_path(config).stat().st_mtime > since
    except OSError:
        return False


def _log_path(state: Path) -> Path:
    path = state / "scheduler.log"
    with contextlib.suppress(OSError):
        if path.stat().st_size > MAX_LOG_BYTES:
            os.replace(path, path.with_suffix(".log.1"))
    return path


def pass_argv(config_path: Path) -> list[str]:
    return [sys.executable, "-I", "-m", "cluster.cli", "scheduler", "--config", str(config_path), "--once"]


def kick_path(config: ClusterConfig) -> Path:
    return config.gate.shared / KICK_FILE


def _kick_spool(config: ClusterConfig) -> bool:
    """Two accounts: ask the scheduler's loop for a pass through the kick file's mtime."""
    kick = kick_path(config)
    try:
        if time.time() - kick.stat().st_mtime < config.scheduler.pass_interval:
            return False
    except FileNotFoundError:
        pass
    except OSError:
        return False
    touch(kick, SHARED_FILE_MODE)
    return True


def kick_pass(config: ClusterConfig) -> bool:
    """Start a Slurm pass in the background if one is due; never raises, never waits."""
    global _last_kick
    if config.path is None or not config.services_of("slurm"):
        return False
    now = time.monotonic()
    if now - _last_kick < _LOCAL_SPACING:
        return False
    _last_kick = now
    if config.split_accounts:
        return _kick_spool(config)
    try:
        _reap()
        if _children:
            return False  # ours is still running
        state = config.gate.state
        kick = state / KICK_FILE
        try:
            if time.time() - kick.stat().st_mtime < config.scheduler.pass_interval:
                return False
        except FileNotFoundError:
            state.mkdir(mode=0o700, parents=True, exist_ok=True)
        if is_locked(lock_path(config, "slurm")):
            return False
        touch(kick)
        env = {k: v for k, v in os.environ.items() if not k.startswith("SSH_")}
        actions = [
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
            (os.POSIX_SPAWN_OPEN, 2, str(_log_path(state)), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600),
        ]
        pid = os.posix_spawn(sys.executable, pass_argv(config.path), env, file_actions=actions, setsid=True)
        _children.add(pid)
        return True
    except OSError as exc:
        log.error(event_line("kick_failed", error=exc.strerror or type(exc).__name__))
        return False
