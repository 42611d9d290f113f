"""What the scheduler remembers between passes: its jobs, each service's policy
state, load samples.  One JSON file per backend in the state directory,
written atomically (a new file, fsync, rename), readable by its owner only:
it holds the per-job bearer tokens.

A pass that finds the file garbled (it cannot be half-written, so this means
someone edited it or the disk failed) moves it aside and starts afresh: the
jobs it no longer knows are cancelled as orphans and replaced.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Final

from policy.events import event_line

from .plan import ServiceState

__all__ = ["JobRecord", "SchedulerState", "load_state", "read_state", "save_state", "atomic_write", "ensure_private_dir"]

log = logging.getLogger("sluice.scheduler")

STATE_VERSION: Final = 1

# A state file larger than this is not one the scheduler wrote.
MAX_STATE_BYTES: Final = 8 * 1024 * 1024


@dataclass(slots=True)
class JobRecord:
    """One instance: a Slurm job or a local process."""

    id: str  # Slurm job id, or "p<pid>" for a local process
    service: str  # the model name
    port: int
    token: str = field(repr=False)
    submitted: float
    state: str = "PENDING"  # the backend's word for it (squeue's state, or RUNNING/EXITED)
    reason: str = ""
    node: str = ""
    host: str | None = None
    started: float | None = None
    ready: float | None = None
    drain: float | None = None
    cancelled: float | None = None
    cancel_reason: str = ""
    time_left: float | None = None  # as of ``observed``
    observed: float = 0.0
    probe_failures: int = 0
    ended: float | None = None
    expected_start: float | None = None  # a pending Slurm job: Slurm's estimate of its start
    pin: str = ""  # SHA-256 of the job's TLS certificate; "" for a plain-HTTP job
    tls_dir: str = ""  # the job's private directory with its TLS key ("" for none)

    @property
    def instance_id(self) -> str:
        return f"slurm:{self.id}" if self.id.isdigit() else f"local:{self.id}"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, item: Any) -> JobRecord:
        names = {f.name for f in fields(cls)}
        if not isinstance(item, dict) or not set(item) <= names:
            raise ValueError("job record")
        record = cls(**item)
        if not isinstance(record.id, str) or not isinstance(record.port, int) or not isinstance(record.token, str):
            raise ValueError("job record fields")
        return record


# Start-up times kept per model: enough for a stable median, few enough to follow a change.
MAX_STARTUPS = 16


@dataclass(slots=True)
class SchedulerState:
    jobs: dict[str, JobRecord] = field(default_factory=dict)
    services: dict[str, ServiceState] = field(default_factory=dict)
    # per model: [end time, seconds covered, request-seconds] of recent passes
    samples: dict[str, list[list[float]]] = field(default_factory=dict)
    # per gate process ("host:pid:start"): the request-seconds per model last counted
    gates: dict[str, dict[str, float]] = field(default_factory=dict)
    last_pass: float = 0.0
    # the last time the cluster answered (squeue), and failures since
    observed: float = 0.0
    observe_failures: int = 0
    observe_error: str = ""
    # what the last pass saw, for status: per model load and target
    summary: dict[str, dict[str, float]] = field(default_factory=dict)
    # per model: seconds from submission to ready of recent instances (the model status's estimates)
    startups: dict[str, list[float]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "jobs": [j.to_json() for j in self.jobs.values()],
            "services": {k: asdict(v) for k, v in self.services.items()},
            "samples": self.samples,
            "gates": self.gates,
            "last_pass": self.last_pass,
            "observed": self.observed,
            "observe_failures": self.observe_failures,
            "observe_error": self.observe_error,
            "summary": self.summary,
            "startups": self.startups,
        }

    @classmethod
    def from_json(cls, document: Any) -> SchedulerState:
        if not isinstance(document, dict) or document.get("version") != STATE_VERSION:
            raise ValueError("version")
        jobs = {}
        for item in document.get("jobs", []):
            record = JobRecord.from_json(item)
            jobs[record.id] = record
        services = {}
        for name, item in document.get("services", {}).items():
            if not isinstance(item, dict):
                raise ValueError("service state")
            services[name] = ServiceState(**item)
        return cls(
            jobs=jobs,
            services=services,
            samples={k: [list(map(float, s)) for s in v] for k, v in document.get("samples", {}).items()},
            gates={k: {m: float(x) for m, x in v.items()} for k, v in document.get("gates", {}).items()},
            last_pass=float(document.get("last_pass", 0.0)),
            observed=float(document.get("observed", 0.0)),
            observe_failures=int(document.get("observe_failures", 0)),
            observe_error=str(document.get("observe_error", "")),
            summary=document.get("summary", {}),
            startups={k: [float(x) for x in v][-MAX_STARTUPS:] for k, v in document.get("startups", {}).items()},
        )


def ensure_private_dir(path: Path) -> None:
    """Create ``path`` (mode 0700) if needed; refuse one that others can write."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    mode = path.stat().st_mode
    if mode & 0o022:
        raise PermissionError(f"{path} is writable by others; it must be private to the scheduler's account")


def atomic_write(path: Path, data: bytes, durable: bool = True, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data``: a reader sees the old file or the new one, never a part.

    ``durable`` also waits for the disk (fsync): for state that must survive a
    crash of the machine, not for the gates' load files, rewritten every second.
    ``mode``: 0o600, or 0o640 for what the other account reads through the group.
    """
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)  # mode 0600
    try:
        with os.fdopen(fd, "wb") as handle:
            if mode != 0o600:
                os.fchmod(handle.fileno(), mode)
            handle.write(data)
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def load_state(path: Path) -> SchedulerState:
    """The state at ``path``; a fresh one if there is none or it is garbled (moved aside)."""
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_STATE_BYTES + 1)
    except FileNotFoundError:
        return SchedulerState()
    try:
        if len(data) > MAX_STATE_BYTES:
            raise ValueError("too large")
        return SchedulerState.from_json(json.loads(data))
    except (ValueError, TypeError, KeyError) as exc:
        aside = path.with_name(f"{path.name}.garbled-{int(time.time())}")
        with contextlib.suppress(OSError):
            os.replace(path, aside)
        log.error(event_line("state_garbled", moved_to=aside.name, problem=type(exc).__name__))
        return SchedulerState()


def read_state(path: Path) -> SchedulerState | None:
    """The state at ``path``, read only, for the gates' listings: None if it is missing or garbled
    (a garbled file is the scheduler's to move aside, :func:`load_state`)."""
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_STATE_BYTES + 1)
        if len(data) > MAX_STATE_BYTES:
            return None
        return SchedulerState.from_json(json.loads(data))
    except (OSError, ValueError, TypeError, KeyError):
        return None


def save_state(path: Path, state: SchedulerState) -> None:
    atomic_write(path, json.dumps(state.to_json(), separators=(",", ":"), sort_keys=True).encode())
