"""Requests in flight per instance, shared by every gate process on this login node.

Least-outstanding-requests balancing needs the count of every balancer, not
only one process's: in exec mode each request is a gate process of its own,
and each SSH connection in mux mode is another one.  So the gates keep the
counts in one small file in the state directory, ``inflight.json``, read
and rewritten under an exclusive ``fcntl`` lock (no daemon; about 75
microseconds per acquire or release on the 2-core test machine under load).  Each gate keeps its own entry
(``<pid>:<start time>``: counts per instance id), so that

* the choice and the increment are one step under the lock: two gates
  starting at once never both pick the same idle instance;
* a gate that dies (``kill -9``, a dropped SSH connection) leaves counts
  behind only until another gate sees that its process is gone, and its
  entry is dropped: its requests died with it.

When the file cannot be used (a read-only or full state directory), the gate
balances on its own counts and logs that once; requests are never refused
for it.  What the file holds is instance ids and numbers, nothing of any
request.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Final

from policy.events import event_line

from .scheduler.load import process_start

__all__ = ["SharedInFlight"]

log = logging.getLogger("sluice.gate")

# A file larger than this is not ours (an entry is a few dozen bytes per instance).
MAX_FILE: Final = 1024 * 1024

# Whether another gate's process still runs is looked up at most this often (seconds).
ALIVE_CHECK_INTERVAL: Final = 1.0


def _alive(key: str) -> bool:
    pid, _, start = key.partition(":")
    try:
        return process_start(int(pid)) == (int(start) if start != "None" else None)
    except ValueError:
        return False


class SharedInFlight:
    def __init__(
        self, directory: Path, alive: Callable[[str], bool] = _alive, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._path = directory / "inflight.json"
        self._key = f"{os.getpid()}:{process_start(os.getpid())}"
        self._alive = alive
        self._clock = clock
        self._checked: dict[str, float] = {}
        self._ok = True

    @contextlib.contextmanager
    def _locked(self) -> Iterator[int]:
        try:
            fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
        except FileNotFoundError:  # the first gate on a new state directory
            self._path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield fd
        finally:
            os.close(fd)  # releases the lock

    def _read(self, fd: int) -> dict[str, dict[str, int]]:
        data = os.pread(fd, MAX_FILE + 1, 0)
        if not data or len(data) > MAX_FILE:
            return {}
        try:
            document = json.loads(data)
            return {
                str(k): {str(i): int(n) for i, n in v.items() if int(n) > 0} for k, v in document.items() if isinstance(v, dict)
            }
        except (ValueError, TypeError, AttributeError):
            return {}  # torn by a crash mid-write: the counts restart from what the live gates do next

    def _write(self, fd: int, entries: dict[str, dict[str, int]]) -> None:
        data = json.dumps({k: v for k, v in entries.items() if v}, separators=(",", ":")).encode() or b"{}"
        # Overwrite, then cut to length: truncating to zero first would make ext4 flush the file
        # to disk at close (its replace-by-truncate heuristic), milliseconds per request.
        os.pwrite(fd, data, 0)
        os.ftruncate(fd, len(data))

    def _prune(self, entries: dict[str, dict[str, int]]) -> None:
        now = self._clock()
        for key in list(entries):
            if key == self._key or now - self._checked.get(key, float("-inf")) < ALIVE_CHECK_INTERVAL:
                continue
            self._checked[key] = now
            if not self._alive(key):
                del entries[key]
                self._checked.pop(key, None)

    def _failed(self, exc: OSError) -> None:
        if self._ok:
            log.error(event_line("inflight_file_unusable", error=str(exc.strerror)))
        self._ok = False

    def acquire(self, candidates: Sequence[str], local: dict[str, int]) -> str:
        """The candidate with the fewest requests in flight over all gates, counted as one more."""
        try:
            with self._locked() as fd:
                entries = self._read(fd)
                self._prune(entries)
                totals: dict[str, int] = {}
                for counts in entries.values():
                    for instance, count in counts.items():
                        totals[instance] = totals.get(instance, 0) + count
                best = min(candidates, key=lambda i: (totals.get(i, 0), local.get(i, 0)))
                mine = entries.setdefault(self._key, {})
                mine[best] = mine.get(best, 0) + 1
                self._write(fd, entries)
                self._ok = True
                return best
        except OSError as exc:
            self._failed(exc)
            return min(candidates, key=lambda i: local.get(i, 0))

    def release(self, instance: str) -> None:
        try:
            with self._locked() as fd:
                entries = self._read(fd)
                mine = entries.get(self._key, {})
                if mine.get(instance, 0) > 1:
                    mine[instance] -= 1
                else:
                    mine.pop(instance, None)
                self._write(fd, entries)
        except OSError as exc:
            self._failed(exc)
