"""Load as the gates measure it: requests in flight (and held) per model.

Each gate process publishes a small file ``load/<host>-<pid>.json`` in the
state directory: per model the requests in flight, the requests held while
no instance is ready, and the running integral of their sum over time
(request-seconds); per instance the requests in flight on it.  It rewrites
the file when a count changes, at most once a second (a change inside that
second is written when the second is up), and once more at exit.

A pass turns the files into an average over a window: the request-seconds
each gate added since the previous pass, divided by the time that passed.
This is exact whatever the pass frequency, and costs the gates nothing per
request beyond two integer updates.  A file whose process is gone (pid not
running, or running a different program: its start time differs) is counted
one last time and then removed.  Nothing here ever counts ``ps`` lines.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import errno
import json
import logging
import os
import socket
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from policy.events import event_line

from .state import atomic_write

__all__ = ["LoadMeter", "GateLoad", "read_gate_loads", "account_load", "process_alive", "process_start"]

log = logging.getLogger("sluice.scheduler")

# A gate rewrites its file at most this often (seconds).
PUBLISH_INTERVAL: Final = 1.0

# A file from another host cannot be checked by pid; it counts as live while
# it is at most this old (seconds).  Gates of one cluster normally all run on
# the one login node the appliance's SSH connections reach.
FOREIGN_FRESH: Final = 600.0

# Two accounts: load/ in the spool is the gates' and the scheduler's (group
# write: the scheduler removes the files of gates that ended; setgid: files
# keep the spool's group).
SHARED_DIR_MODE: Final = 0o2770

# A dead gate's file is removed once it is this old (seconds), so that every
# pass that might need its last numbers has seen it.
DEAD_REMOVE_AFTER: Final = 30.0

# Load files larger than this are not ours.
MAX_LOAD_FILE: Final = 256 * 1024


def process_start(pid: int) -> int | None:
    """The start time of ``pid`` in clock ticks since boot (Linux), or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[1].split()
        return int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def process_alive(pid: int, start: int | None) -> bool:
    """Whether ``pid`` runs and is the process that started at ``start`` (when known)."""
    if start is not None and Path("/proc/self/stat").exists():
        return process_start(pid) == start
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(slots=True)
class _ModelCount:
    in_flight: int = 0
    held: int = 0
    busy: float = 0.0  # request-seconds up to ``since``
    since: float = 0.0


class LoadMeter:
    """The gate side: counts, integrates, publishes.  One per gate process."""

    def __init__(self, directory: Path, clock: Callable[[], float] = time.time, shared: bool = False) -> None:
        """``shared``: two accounts; the directory is in the spool and the scheduler's
        account reads (and removes) the files through the group."""
        self._dir = directory
        self._shared = shared
        self._clock = clock
        self._host = socket.gethostname().split(".")[0]
        self._pid = os.getpid()
        self._start = process_start(self._pid)
        self._born: float | None = None  # the first change: all of ``busy`` is after it
        self._path = directory / f"{self._host}-{self._pid}.json"
        self._models: dict[str, _ModelCount] = {}
        self._instances: dict[str, int] = {}
        self._written = float("-inf")
        self._pending: asyncio.TimerHandle | None = None
        self._dirty = False
        self._ok = True
        atexit.register(self.flush)

    def _count(self, model: str) -> _ModelCount:
        count = self._models.get(model)
        if count is None:
            count = self._models[model] = _ModelCount(since=self._clock())
        return count

    def _integrate(self, count: _ModelCount, now: float) -> None:
        count.busy += (count.in_flight + count.held) * max(0.0, now - count.since)
        count.since = now

    def change(self, model: str, in_flight: int = 0, held: int = 0, instance: str | None = None) -> None:
        """Add ``in_flight`` and ``held`` (either may be negative) to ``model``'s counts."""
        now = self._clock()
        if self._born is None:
            self._born = now
        count = self._count(model)
        self._integrate(count, now)
        count.in_flight += in_flight
        count.held += held
        if instance is not None and in_flight:
            left = self._instances.get(instance, 0) + in_flight
            if left > 0:
                self._instances[instance] = left
            else:
                self._instances.pop(instance, None)
        self._dirty = True
        self._schedule(now)

    def _schedule(self, now: float) -> None:
        wait = PUBLISH_INTERVAL - (now - self._written)
        if wait <= 0:
            self.flush()
            return
        if self._pending is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop (a synchronous caller): written at the next change or at exit
        self._pending = loop.call_later(wait, self._timer)

    def _timer(self) -> None:
        self._pending = None
        self.flush()

    def document(self) -> dict[str, Any]:
        now = self._clock()
        models = {}
        for model, count in self._models.items():
            self._integrate(count, now)
            models[model] = {"in_flight": count.in_flight, "held": count.held, "busy": round(count.busy, 6)}
        return {
            "host": self._host,
            "pid": self._pid,
            "start": self._start,
            "born": self._born if self._born is not None else now,
            "time": now,
            "models": models,
            "instances": dict(self._instances),
        }

    def flush(self) -> None:
        """Write the file now if anything changed since the last write."""
        if not self._dirty:
            return
        self._dirty = False
        self._written = self._clock()
        try:
            if not self._dir.is_dir():
                # the state directory and its load/ (never deeper: a config
                # directory that is gone stays gone); the spool is the admin's
                if not self._shared:
                    with contextlib.suppress(FileExistsError):
                        self._dir.parent.mkdir(mode=0o700)
                with contextlib.suppress(FileExistsError):
                    self._dir.mkdir(mode=0o700)
                    if self._shared:
                        self._dir.chmod(SHARED_DIR_MODE)
            if self._shared and not stat.S_ISDIR(os.lstat(self._dir).st_mode):
                # the jobs account owns the spool: a symlink there must not lead the gate's writes elsewhere
                raise OSError(errno.ENOTDIR, "the spool's load directory is not a directory")
            data = json.dumps(self.document(), separators=(",", ":")).encode()
            atomic_write(self._path, data, durable=False, mode=0o640 if self._shared else 0o600)
        except OSError as exc:
            # the gate keeps serving; the scheduler then sees no load from it
            if self._ok:
                log.error(event_line("load_publish_failed", error=str(exc.strerror)))
            self._ok = False
        else:
            self._ok = True

    def close(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
        self.flush()
        atexit.unregister(self.flush)


@dataclass(slots=True)
class GateLoad:
    """One gate's file as a pass reads it."""

    key: str
    path: Path
    alive: bool
    time: float
    born: float
    models: dict[str, dict[str, float]] = field(default_factory=dict)
    instances: dict[str, int] = field(default_factory=dict)

    def busy_at(self, model: str, now: float) -> float:
        """Request-seconds of ``model`` up to ``now`` (extrapolated while alive)."""
        count = self.models.get(model)
        if count is None:
            return 0.0
        busy = count["busy"]
        if self.alive:
            busy += (count["in_flight"] + count["held"]) * max(0.0, now - self.time)
        return busy

    def current(self, model: str) -> float:
        count = self.models.get(model)
        if count is None or not self.alive:
            return 0.0
        return count["in_flight"] + count["held"]


def _parse(path: Path, now: float, host: str) -> GateLoad | None:
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_LOAD_FILE + 1)
        document = json.loads(data)
    except (OSError, ValueError):
        return None
    try:
        gate_host, pid, start = str(document["host"]), int(document["pid"]), document["start"]
        stamp, born = float(document["time"]), float(document["born"])
        models = {
            str(m): {"in_flight": float(c["in_flight"]), "held": float(c["held"]), "busy": float(c["busy"])}
            for m, c in document["models"].items()
        }
        instances = {str(i): int(n) for i, n in document["instances"].items()}
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
    if start is not None and not isinstance(start, int):
        return None
    alive = process_alive(pid, start) if gate_host == host else now - stamp < FOREIGN_FRESH
    return GateLoad(f"{gate_host}:{pid}:{start}", path, alive, stamp, born, models, instances)


def read_gate_loads(directory: Path, now: float) -> list[GateLoad]:
    """Every gate's published load; unreadable files are skipped."""
    host = socket.gethostname().split(".")[0]
    loads: list[GateLoad] = []
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return []
    for name in names:
        if name.startswith(".") or not name.endswith(".json") or len(loads) >= 10000:
            continue
        gate = _parse(directory / name, now, host)
        if gate is not None:
            loads.append(gate)
    return loads


@dataclass(slots=True)
class LoadReport:
    average: dict[str, float]
    current: dict[str, float]
    instances: dict[str, int]  # requests in flight per instance id, over live gates


def account_load(
    gates: list[GateLoad],
    models: list[str],
    windows: dict[str, float],
    previous: dict[str, dict[str, float]],
    samples: dict[str, list[list[float]]],
    last_pass: float,
    now: float,
) -> tuple[LoadReport, dict[str, dict[str, float]]]:
    """Fold the gates' files into per-model samples (in place) and averages.

    ``previous`` maps gate keys to the request-seconds counted so far; the
    new map is returned.  A gate first seen now counts from its birth if it
    was born after the previous pass, else from now (its history is unknown).
    """
    delta = dict.fromkeys(models, 0.0)
    current = dict.fromkeys(models, 0.0)
    instances: dict[str, int] = {}
    seen: dict[str, dict[str, float]] = {}
    for gate in gates:
        before = previous.get(gate.key)
        counted: dict[str, float] = {}
        for model in models:
            busy = gate.busy_at(model, now)
            counted[model] = busy
            if before is not None:
                delta[model] += max(0.0, busy - before.get(model, 0.0))
            elif last_pass and gate.born >= last_pass:
                delta[model] += busy
            current[model] += gate.current(model)
        if gate.alive:
            seen[gate.key] = counted
            for instance, count in gate.instances.items():
                instances[instance] = instances.get(instance, 0) + count
        elif now - gate.time > DEAD_REMOVE_AFTER:
            with contextlib.suppress(OSError):
                gate.path.unlink()
        else:
            seen[gate.key] = counted  # counted once; remembered until removed
    span = now - last_pass if last_pass else 0.0
    average = {}
    for model in models:
        window = windows.get(model, 60.0)
        kept = [s for s in samples.get(model, []) if s[0] > now - window]
        if span > 0:
            kept.append([now, span, delta[model]])
        samples[model] = kept
        covered = sum(s[1] for s in kept)
        average[model] = sum(s[2] for s in kept) / covered if covered > 0 else current[model]
    for model in list(samples):
        if model not in models:
            del samples[model]
    return LoadReport(average, current, instances), seen
