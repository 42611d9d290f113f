"""The scheduling policy, pure: what to submit, drain, cancel and forget.

Both backends (Slurm jobs, local processes) describe their instances as
:class:`JobView` values and apply the :class:`Decision` that :func:`decide`
returns; nothing here reads a clock, a file or a process.  ``now`` is a
number of seconds on any clock the caller keeps consistent (the Slurm passes
use wall-clock time, because they run in different processes), so the tests
drive it with a simulated one.

The rules, per service:

* **Failures.**  An instance that ended without ever becoming ready (failed,
  node failure, cancelled by someone else) counts as a failure, as does one
  cancelled for waiting too long in the queue or for not answering its health
  check within the warm-up bound.  Failures delay the next submission by an
  exponential backoff; any instance that becomes ready resets it.  A ready
  instance that ends (time limit, node failure, cancelled from outside) or
  fails its health check three times in a row is replaced at once.
* **Target.**  The number of instances wanted, between the bounds in force
  (the time-of-day schedule, else ``min_instances``/``max_instances``).  It
  rises as soon as the average load over the window exceeds
  ``scale_up_threshold`` of the capacity (``requests_per_instance`` each), to
  the count that brings it back under; it falls one instance at a time when
  the average is below ``scale_down_threshold`` of the capacity, the smaller
  count would not be over the scale-up threshold, and ``scale_down_delay``
  has passed since the last change.  A request waiting for a model at zero
  instances raises the target to one at once.
* **Renewal.**  An instance with less than ``renew_before`` seconds left
  before its time limit does not count towards the target, so its
  replacement is submitted early; it keeps serving until enough fresh ones
  are ready, then it is drained.
* **Surplus.**  Queued and warming instances are cancelled first (newest
  first), then ready ones are drained (least time left first).  A draining
  instance leaves the routing table at once and is cancelled when the gates
  report nothing in flight on it, or after ``drain_timeout``.
"""

from __future__ import annotations

import enum
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Final

from ..config import Service

__all__ = [
    "Phase",
    "JobView",
    "Load",
    "ServiceState",
    "Decision",
    "Limits",
    "limits_at",
    "effective_limits",
    "decide",
    "backoff",
    "UNHEALTHY_AFTER",
    "DRAIN_GRACE",
]

# Health checks a ready instance may fail in a row before it is replaced; one
# failure already takes it out of the routing table until it answers again.
UNHEALTHY_AFTER: Final = 3

# Seconds a draining instance stays after leaving the table before "nothing
# in flight" is believed: gates reload the table every half second and
# publish their counts within a second of a change.
DRAIN_GRACE: Final = 3.0


class Phase(enum.Enum):
    PENDING = "pending"  # in the queue, or held by the cluster
    STARTING = "starting"  # running, health check not answered yet
    READY = "ready"  # serving
    DRAINING = "draining"  # out of the table, finishing what it has
    ENDED = "ended"  # gone, for any reason


@dataclass(frozen=True, slots=True)
class JobView:
    """One instance as the policy sees it.  Times are on the caller's clock."""

    id: str
    phase: Phase
    submitted: float
    started: float | None = None
    ready_since: float | None = None
    drain_since: float | None = None
    time_left: float | None = None  # seconds before the time limit; None: no limit known
    probe_failures: int = 0
    end_state: str = ""
    in_flight: int | None = None  # requests on it over all gates; None: not known yet


@dataclass(frozen=True, slots=True)
class Load:
    """Concurrent requests for one model (in flight plus held)."""

    average: float  # mean over the load window
    current: float  # right now


@dataclass(frozen=True, slots=True)
class ServiceState:
    """What the policy remembers about a service between passes."""

    target: int | None = None
    changed: float = 0.0  # when the target last changed
    failures: int = 0  # consecutive failures since the last instance became ready
    retry_at: float = 0.0  # no submission before this time (backoff)
    last_ready: float = 0.0  # the latest ready_since seen


@dataclass(frozen=True, slots=True)
class Decision:
    target: int
    submit: int
    cancel: tuple[tuple[str, str], ...]  # (job id, reason)
    drain: tuple[str, ...]
    forget: tuple[str, ...]
    state: ServiceState
    events: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Limits:
    min_instances: int
    max_instances: int


def limits_at(service: Service, when: datetime) -> Limits:
    """The instance bounds in force at local time ``when``: the first schedule period
    that covers it, else the service's own bounds."""
    minute = when.hour * 60 + when.minute
    day = when.weekday()
    for period in service.schedule:
        if period.start < period.end:
            active = day in period.days and period.start <= minute < period.end
        else:  # wraps past midnight (or, with start == end, lasts 24 hours)
            active = (day in period.days and minute >= period.start) or ((day - 1) % 7 in period.days and minute < period.end)
        if active:
            return Limits(period.min_instances, period.max_instances)
    return Limits(service.min_instances, service.max_instances)


def effective_limits(service: Service, now: float) -> Limits:
    """:func:`limits_at` for a wall-clock time, in the machine's local time zone."""
    if not service.schedule:
        return Limits(service.min_instances, service.max_instances)
    return limits_at(service, datetime.fromtimestamp(now))


def backoff(service: Service, failures: int) -> float:
    """Seconds to wait before submitting again after ``failures`` failures in a row."""
    if failures <= 0:
        return 0.0
    factor: int = 2 ** min(failures - 1, 30)
    return min(service.backoff_max, service.backoff_base * factor)


def _target(service: Service, limits: Limits, load: Load, state: ServiceState, now: float) -> tuple[int, float, list[str]]:
    events: list[str] = []
    target = state.target if state.target is not None else limits.min_instances
    changed = state.changed if state.target is not None else now
    clamped = min(max(target, limits.min_instances), limits.max_instances)
    if clamped != target:
        events.append(f"bounds {target}->{clamped}")
        target, changed = clamped, now
    if limits.max_instances == 0:
        return target, changed, events
    per_instance = service.requests_per_instance
    # the fewest instances that keep the average under the scale-up threshold
    needed = math.ceil(load.average / (per_instance * service.scale_up_threshold) - 1e-9) if load.average > 0 else 0
    if target == 0 and load.current > 0:
        events.append("scale_from_zero 0->1")
        target, changed = 1, now
    if target > 0 and load.average > target * per_instance * service.scale_up_threshold:
        grown = min(limits.max_instances, max(target + 1, needed))
        if grown > target:
            events.append(f"scale_up {target}->{grown}")
            target, changed = grown, now
    elif (
        target > limits.min_instances
        and load.average < target * per_instance * service.scale_down_threshold
        and now - changed >= service.scale_down_delay
    ):
        shrunk = max(limits.min_instances, needed, target - 1)
        if shrunk == 0 and load.current > 0:
            shrunk = 1
        if shrunk < target:
            events.append(f"scale_down {target}->{shrunk}")
            target, changed = shrunk, now
    return target, changed, events


def decide(
    service: Service,
    limits: Limits,
    jobs: Sequence[JobView],
    load: Load,
    state: ServiceState,
    now: float,
    max_submit: int = 8,
) -> Decision:
    """What to do for ``service`` now, given its instances, its load and its state."""
    events: list[str] = []
    cancel: list[tuple[str, str]] = []
    drain: list[str] = []
    forget: list[str] = []
    failures = 0
    live: list[JobView] = []
    last_ready = state.last_ready

    for job in jobs:
        if job.ready_since is not None and job.ready_since > last_ready:
            last_ready = job.ready_since
        if job.phase is Phase.ENDED:
            forget.append(job.id)
            if job.ready_since is None and job.drain_since is None:
                failures += 1
                events.append(f"failed_before_ready {job.id} {job.end_state or 'gone'}")
            elif job.drain_since is None:
                events.append(f"ended {job.id} {job.end_state or 'gone'}")
        elif job.phase is Phase.PENDING and now - job.submitted > service.pending_timeout:
            cancel.append((job.id, "pending_timeout"))
            failures += 1
        elif job.phase is Phase.STARTING and now - (job.started or job.submitted) > service.warmup_timeout:
            cancel.append((job.id, "warmup_timeout"))
            failures += 1
        elif job.phase is Phase.READY and job.probe_failures >= UNHEALTHY_AFTER:
            cancel.append((job.id, "unhealthy"))
        elif job.phase is Phase.DRAINING:
            since = now - (job.drain_since if job.drain_since is not None else now)
            if (job.in_flight == 0 and since >= DRAIN_GRACE) or since >= service.drain_timeout:
                cancel.append((job.id, "drained"))
        else:
            live.append(job)

    fails, retry_at = state.failures, state.retry_at
    if last_ready > state.last_ready:
        fails, retry_at = 0, 0.0
    if failures:
        fails += failures
        retry_at = now + backoff(service, fails)
        events.append(f"backoff {fails} failures, retry in {retry_at - now:.0f}s")

    target, changed, scale_events = _target(service, limits, load, state, now)
    events += scale_events

    renew = service.renew_before
    expiring = [j for j in live if renew > 0 and j.time_left is not None and j.time_left <= renew]
    fresh = [j for j in live if j not in expiring]
    submit = 0
    if len(fresh) < target:
        wanted = target - len(fresh)
        if now < retry_at:
            events.append(f"waiting_backoff {wanted}")
        else:
            submit = min(wanted, max_submit)
    elif len(fresh) > target:
        surplus = len(fresh) - target
        waiting = sorted((j for j in fresh if j.phase is not Phase.READY), key=lambda j: -j.submitted)
        ready = sorted(
            (j for j in fresh if j.phase is Phase.READY),
            key=lambda j: (j.time_left if j.time_left is not None else math.inf, -j.submitted),
        )
        for job in waiting[:surplus]:
            cancel.append((job.id, "surplus"))
        for job in ready[: max(0, surplus - len(waiting))]:
            drain.append(job.id)
        fresh = [j for j in fresh if j.id not in drain and all(j.id != c[0] for c in cancel)]
    ready_fresh = sum(1 for j in fresh if j.phase is Phase.READY)
    for job in expiring:
        if job.phase is Phase.READY:
            if ready_fresh >= target:
                drain.append(job.id)
                events.append(f"renewed {job.id}")
        else:
            cancel.append((job.id, "expiring"))

    new_state = replace(state, target=target, changed=changed, failures=fails, retry_at=retry_at, last_ready=last_ready)
    return Decision(target, submit, tuple(cancel), tuple(drain), tuple(forget), new_state, tuple(events))


def wall_clock() -> float:
    """The clock of the Slurm passes (several processes share their state)."""
    return time.time()
