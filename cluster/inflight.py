"""Requests in flight per instance, shared by every gate process on this login node.

Least-outstanding-requests balancing needs the count of every balancer, not
only one process's: in exec mode each request is a gate process of its own,
and each SSH connection in mux mode is another one.  So the gates keep the
counts in one small file in the state directory, ``inflight.bin``, read and
updated under an exclusive ``fcntl`` lock (no daemon).  The file is a magic
number, then fixed-size records, one per gate process and instance with
requests in flight: the process (pid and start time), a digest of the
instance id, and the count.  So that

* the choice and the increment are one step under the lock: two gates
  starting at once never both pick the same idle instance;
* a gate that dies (``kill -9``, a dropped SSH connection) leaves counts
  behind only until another gate sees that its process is gone (looked up at
  most once a second per process), and its records are freed: its requests
  died with it.

Each gate keeps the file open, and an acquire or a release is four system
calls (lock, read, write one record, unlock) and no parsing beyond the
records: about 12 microseconds for an acquire and its release on the
2-core test machine, where rewriting a JSON document through open and close
cost about 40 to 55.  The file
is opened again when it was replaced or removed (checked at most once a
second), so that every gate counts in the same file.

When the file cannot be used (a read-only or full state directory), the gate
balances on its own counts and logs that once; requests are never refused
for it.  A file that is not ours (wrong magic, wrong size) counts as empty
and is rewritten.  What the file holds is process ids, digests of instance
ids and numbers, nothing of any request.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import logging
import os
import struct
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final

from policy.events import event_line

from .scheduler.load import process_alive, process_start

__all__ = ["SharedInFlight", "read_holds"]

log = logging.getLogger("sluice.gate")

FILE_NAME: Final = "inflight.bin"
MAGIC: Final = b"SLUIFL\x00\x01"

# One record: pid, process start time (clock ticks since boot; 0: unknown),
# the first 16 bytes of the BLAKE2b digest of the instance id, requests in flight.
# A record whose count is 0 is free.
RECORD: Final = struct.Struct("=IQ16sI")
_FREE: Final = bytes(RECORD.size)

# Records the file may hold: far above gate processes times instances on one
# login node; a file that would grow past it is treated as unusable.
MAX_RECORDS: Final = 4096
MAX_FILE: Final = len(MAGIC) + MAX_RECORDS * RECORD.size

# Bytes read at first: the whole file while it holds under 128 records.
FIRST_READ: Final = 4096

# Free records at the end of the file are cut off once there are more than
# this many (a cut is a system call; a few spare records cost nothing).
TAIL_SLACK: Final = 64

# Whether another gate's process still runs, and whether the file was replaced,
# are looked up at most this often (seconds).
ALIVE_CHECK_INTERVAL: Final = 1.0

# Instance digests remembered by one gate (ids come and go with jobs).
MAX_DIGESTS: Final = 4096

Owner = tuple[int, int]


def _alive(owner: Owner) -> bool:
    pid, start = owner
    return process_alive(pid, start or None)


def _digest(instance: str) -> bytes:
    return hashlib.blake2b(instance.encode(), digest_size=16).digest()


def _records(data: bytes) -> memoryview | None:
    """The records of a file's contents; None if they are not ours."""
    if len(data) > MAX_FILE or not data.startswith(MAGIC) or (len(data) - len(MAGIC)) % RECORD.size:
        return None
    return memoryview(data)[len(MAGIC) :]


def read_holds(directory: Path) -> dict[Owner, int]:
    """Requests in flight per gate process ``(pid, start)`` as the file in ``directory`` has them."""
    try:
        data = (directory / FILE_NAME).read_bytes()
    except FileNotFoundError:
        return {}
    records = _records(data)
    holds: dict[Owner, int] = {}
    for pid, start, _, count in RECORD.iter_unpack(records if records is not None else b""):
        if count:
            holds[(pid, start)] = holds.get((pid, start), 0) + count
    return holds


class SharedInFlight:
    def __init__(
        self,
        directory: Path,
        alive: Callable[[Owner], bool] = _alive,
        clock: Callable[[], float] = time.monotonic,
        owner: Owner | None = None,
    ) -> None:
        self._path = directory / FILE_NAME
        pid = os.getpid()
        self._owner: Owner = owner if owner is not None else (pid, process_start(pid) or 0)
        self._alive = alive
        self._clock = clock
        self._checked: dict[Owner, float] = {}
        self._digests: dict[str, bytes] = {}
        self._fd: int | None = None
        self._identity: tuple[int, int] | None = None
        self._opened_at = float("-inf")
        self._ok = True

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:
        self.close()

    # ---------------------------------------------------------------- the file

    def _file(self) -> int:
        """The open file, opened again if it was replaced or removed (looked at once a second)."""
        now = self._clock()
        if self._fd is not None and now - self._opened_at < ALIVE_CHECK_INTERVAL:
            return self._fd
        try:
            stat = os.stat(self._path)
            identity: tuple[int, int] | None = (stat.st_dev, stat.st_ino)
        except FileNotFoundError:
            identity = None
        if self._fd is None or identity != self._identity:
            self.close()
            try:
                fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except FileNotFoundError:  # the first gate on a new state directory
                self._path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            stat = os.fstat(fd)
            self._fd, self._identity = fd, (stat.st_dev, stat.st_ino)
        self._opened_at = now
        return self._fd

    def _read(self, fd: int) -> memoryview:
        """The records, under the lock; a file that is not ours is emptied first."""
        data = os.pread(fd, FIRST_READ, 0)
        if len(data) == FIRST_READ:  # a larger file than usual: the rest (a read of MAX_FILE would allocate that much each time)
            data += os.pread(fd, MAX_FILE + 1 - FIRST_READ, FIRST_READ)
        records = _records(data)
        if records is None:  # new, torn by a crash, or not ours: the counts restart from what the gates do next
            os.pwrite(fd, MAGIC, 0)
            os.ftruncate(fd, len(MAGIC))
            return memoryview(b"")
        return records

    def _put(self, fd: int, index: int, record: bytes) -> None:
        if index >= MAX_RECORDS:
            raise OSError(errno.ENOSPC, "no free record")
        os.pwrite(fd, record, len(MAGIC) + index * RECORD.size)

    def _digest(self, instance: str) -> bytes:
        digest = self._digests.get(instance)
        if digest is None:
            if len(self._digests) >= MAX_DIGESTS:
                self._digests.clear()
            digest = self._digests[instance] = _digest(instance)
        return digest

    def _live(self, owner: Owner, now: float) -> bool:
        if owner == self._owner or now - self._checked.get(owner, float("-inf")) < ALIVE_CHECK_INTERVAL:
            return True
        if self._alive(owner):
            self._checked[owner] = now
            return True
        self._checked.pop(owner, None)
        return False

    def _failed(self, exc: OSError) -> None:
        if self._ok:
            log.error(event_line("inflight_file_unusable", error=str(exc.strerror)))
        self._ok = False
        self.close()

    # ---------------------------------------------------------------- counting

    def acquire(self, candidates: Sequence[str], local: dict[str, int]) -> str:
        """The candidate with the fewest requests in flight over all gates, counted as one more."""
        try:
            fd = self._file()
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                best = self._acquire_locked(fd, candidates, local)
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
            self._ok = True
            return best
        except OSError as exc:
            self._failed(exc)
            return min(candidates, key=lambda i: local.get(i, 0))

    def _acquire_locked(self, fd: int, candidates: Sequence[str], local: dict[str, int]) -> str:
        records = self._read(fd)
        now = self._clock()
        me = self._owner
        totals: dict[bytes, int] = {}
        mine: dict[bytes, tuple[int, int]] = {}
        free: list[int] = []
        last = -1  # the last record in use
        for index, (pid, start, digest, count) in enumerate(RECORD.iter_unpack(records)):
            if not count:
                free.append(index)
                continue
            owner = (pid, start)
            if not self._live(owner, now):
                os.pwrite(fd, _FREE, len(MAGIC) + index * RECORD.size)  # a dead gate's requests died with it
                free.append(index)
                continue
            last = index
            totals[digest] = totals.get(digest, 0) + count
            if owner == me:
                mine[digest] = (index, count)
        digests = {instance: self._digest(instance) for instance in candidates}
        best = min(candidates, key=lambda i: (totals.get(digests[i], 0), local.get(i, 0)))
        digest = digests[best]
        index, count = mine.get(digest, (-1, 0))
        if index < 0:
            index = free[0] if free else len(records) // RECORD.size
        self._put(fd, index, RECORD.pack(me[0], me[1], digest, count + 1))
        size = len(records) // RECORD.size
        if size - max(last, index) - 1 > TAIL_SLACK:
            os.ftruncate(fd, len(MAGIC) + (max(last, index) + 1) * RECORD.size)
        return best

    def release(self, instance: str) -> None:
        try:
            fd = self._file()
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                records = self._read(fd)
                me, digest = self._owner, self._digest(instance)
                for index, (pid, start, held, count) in enumerate(RECORD.iter_unpack(records)):
                    if count and held == digest and (pid, start) == me:
                        record = RECORD.pack(pid, start, digest, count - 1) if count > 1 else _FREE
                        self._put(fd, index, record)
                        break
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        except OSError as exc:
            self._failed(exc)
