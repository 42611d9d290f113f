"""Model status for clients: ready, starting, scaled to zero or unavailable, and how long to wait.

The one place that says a model's status (the gate's ``models`` listing and
its progress comments while a request is held): ``ready`` when an instance
serves; ``starting`` when a job is on its way, or the scheduler keeps one
(``min_instances``) and will submit it; ``scaled_to_zero`` when none is kept
and a request is held while one starts; ``unavailable`` when nothing will
start (outside its schedule, or no request may wait: ``hold_queue = 0``).

A pure function of what the scheduler's last pass saved (the state files) and
the routing table: no Slurm command runs here, and nothing changes.  The wait
of a model that is not ready is an estimate, in whole seconds:

* a pending Slurm job with Slurm's own start-time estimate (``squeue %S``):
  the time until that start plus the model's typical warm-up;
* a job that runs but is not ready yet: its typical warm-up minus what it has
  already spent (at least :data:`MIN_WAIT`);
* a pending job without an estimate, or a model at zero: the typical time
  from submission to ready.

"Typical" is the median of the model's measured start-ups
(:attr:`~cluster.scheduler.state.SchedulerState.startups`: seconds from a job's
start, or its submission, to its first healthy probe), and the configured
``warmup_timeout`` until one was measured.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Final

from ..config import ClusterConfig, Service
from .paths import state_path
from .phases import phase_of
from .plan import Phase, effective_limits
from .state import JobRecord, read_state

__all__ = ["STATUSES", "MIN_WAIT", "ModelStatus", "model_statuses", "status_of"]

STATUSES: Final = ("ready", "starting", "scaled_to_zero", "unavailable")

# The smallest wait ever announced: a job past its typical warm-up is still starting.
MIN_WAIT: Final = 5


@dataclass(frozen=True, slots=True)
class ModelStatus:
    status: str
    ready_instances: int
    estimated_wait: int | None  # seconds; None when ready (or unknown)

    def to_json(self) -> dict[str, object]:
        """The listing's fields (its ready instances are the census's ``instances.ready``)."""
        document: dict[str, object] = {"status": self.status}
        if self.estimated_wait is not None:
            document["estimated_wait"] = self.estimated_wait
        return document


def _typical(service: Service, startups: list[float]) -> float:
    return statistics.median(startups) if startups else service.warmup_timeout


def status_of(service: Service, records: list[JobRecord], startups: list[float], ready_instances: int, now: float) -> ModelStatus:
    """The status of one scheduled model."""
    if ready_instances > 0:
        return ModelStatus("ready", ready_instances, None)
    typical = _typical(service, startups)
    waits = []
    for record in records:
        if record.cancelled is not None or phase_of(record) in (Phase.ENDED, Phase.DRAINING):
            continue
        if record.expected_start is not None and record.started is None:
            waits.append(max(0.0, record.expected_start - now) + typical)
        else:
            since = record.started if record.started is not None else record.submitted
            waits.append(typical - (now - since))
    if waits:
        return ModelStatus("starting", 0, max(MIN_WAIT, round(min(waits))))
    limits = effective_limits(service, now)
    if limits.max_instances == 0:
        return ModelStatus("unavailable", 0, None)  # outside its schedule: nothing will start
    if limits.min_instances > 0:
        return ModelStatus("starting", 0, max(MIN_WAIT, round(typical)))  # kept: the next pass submits one
    if service.hold_queue == 0 or service.hold_timeout <= 0:
        return ModelStatus("unavailable", 0, None)  # no request waits for an instance to start
    return ModelStatus("scaled_to_zero", 0, max(MIN_WAIT, round(typical)))


def model_statuses(config: ClusterConfig, ready: dict[str, int], now: float | None = None) -> dict[str, ModelStatus]:
    """Every configured model's status; ``ready`` counts the routing table's instances per model."""
    now = time.time() if now is None else now
    statuses = {
        backend.model: ModelStatus("ready" if ready.get(backend.model) else "unavailable", ready.get(backend.model, 0), None)
        for backend in config.static
    }
    for backend in ("slurm", "local"):
        services = config.services_of(backend)
        if not services:
            continue
        state = read_state(state_path(config, backend))
        for service in services:
            records = [r for r in state.jobs.values() if r.service == service.model] if state else []
            startups = state.startups.get(service.model, []) if state else []
            statuses[service.model] = status_of(service, records, startups, ready.get(service.model, 0), now)
    return statuses
