"""The pass lock: one scheduler pass at a time, whichever process runs it.

It is an ``fcntl.flock`` on a file in the state directory.  The kernel drops
the lock when its holder dies, however it dies (a crash, SIGKILL, the OOM
killer), so a dead holder never blocks the next pass: there is no stale lock
to detect, and no heartbeat whose timing could let two live passes overlap.
The file itself may stay behind; its content (host, pid, start time of the
holder) is only for people and ``sluice-cluster status``.

A holder that hangs instead of dying is bounded separately: every Slurm
command and probe has a timeout, and a pass run in its own process arms an
alarm that ends the process after the pass timeout (see ``cluster.cli``).

Where ``flock`` is not available (some parallel file systems mounted
without lock support answer ENOLCK or EOPNOTSUPP) the lock raises
:class:`LockUnavailable`: the scheduler refuses to run rather than run
unserialized.  See docs/operator-slurm.md on NFS home directories.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from policy.errors import InternalError

__all__ = ["PassLock", "LockUnavailable", "lock_holder"]


class LockUnavailable(InternalError, OSError):
    """The file system cannot lock the file: scheduling stops rather than race."""


_NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL, errno.ENOSYS}


class PassLock:
    """``with PassLock(path) as held:`` ``held`` is False when another process has it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self, blocking: bool = False, timeout: float = 0.0) -> bool:
        if self._fd is not None:
            raise RuntimeError("the pass lock is already held by this object")
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if not blocking or time.monotonic() >= deadline:
                        os.close(fd)
                        return False
                    time.sleep(0.05)
                except OSError as exc:
                    os.close(fd)
                    if exc.errno in _NO_LOCKS:
                        raise LockUnavailable(exc.errno, f"cannot lock {self.path}: {exc.strerror}") from None
                    raise
        except BaseException:
            with contextlib.suppress(OSError):
                os.close(fd)
            raise
        self._fd = fd
        info = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}).encode()
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, info, 0)
        return True

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def lock_holder(path: Path) -> dict[str, Any] | None:
    """Who holds the lock at ``path`` now (for status), or None when nobody does."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                info = json.loads(os.pread(fd, 4096, 0) or b"{}")
            except ValueError:
                info = {}
            return info if isinstance(info, dict) else {}
        except OSError:
            return None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def is_locked(path: Path) -> bool:
    """Whether some process holds the lock at ``path`` (a cheap check before spawning a pass)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)
