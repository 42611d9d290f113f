"""Per model, what an operator's dashboard needs: instances by phase, requests held and in flight.

The gate adds these numbers to its ``models`` listing, so that the appliance
can publish them as metrics without a new verb and without seeing anything
of the requests: they are counts read from the files the scheduler and the
gates already keep (the scheduler's state files, the gates' load files).
Nothing here runs a Slurm command; a file that cannot be read counts as
nothing (the listing must answer even while the scheduler has never run).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Final

from ..config import ClusterConfig
from .load import read_gate_loads
from .paths import load_dir, state_path
from .phases import phase_of, routable
from .plan import Phase
from .state import read_state

__all__ = ["ModelCensus", "model_census", "CENSUS_TTL"]

# A gate answers ``models`` from a census this old at most (seconds): the
# appliance asks every couple of seconds per connection, and each census reads
# a few small files.
CENSUS_TTL: Final = 1.0

# Jobs in these phases are on their way to serving: submitted, or running and not yet probed ready.
_STARTING: Final = frozenset({Phase.PENDING, Phase.STARTING})


@dataclass(frozen=True, slots=True)
class ModelCensus:
    ready: int = 0  # instances the scheduler has probed ready (static backends: 1)
    starting: int = 0  # jobs pending or running but not yet ready
    held: int = 0  # requests waiting for an instance, over every live gate process
    in_flight: int = 0  # requests being answered, over every live gate process

    def to_json(self) -> dict[str, object]:
        return {
            "instances": {"ready": self.ready, "starting": self.starting},
            "held": self.held,
            "in_flight": self.in_flight,
        }


def model_census(config: ClusterConfig, models: list[str], now: float | None = None) -> dict[str, ModelCensus]:
    """Counts for each of ``models`` (every model gets an entry, zeros where nothing is known)."""
    now = time.time() if now is None else now
    ready = dict.fromkeys(models, 0)
    starting = dict.fromkeys(models, 0)
    for backend in config.static:
        if backend.model in ready:
            ready[backend.model] += 1
    for kind in ("slurm", "local"):
        if not config.services_of(kind):
            continue
        state = read_state(state_path(config, kind))
        if state is None:
            continue
        for record in state.jobs.values():
            if record.service not in ready or record.cancelled is not None:
                continue
            if routable(record):
                ready[record.service] += 1
            elif phase_of(record) in _STARTING:
                starting[record.service] += 1
    held = dict.fromkeys(models, 0.0)
    in_flight = dict.fromkeys(models, 0.0)
    for gate in read_gate_loads(load_dir(config), now):
        if not gate.alive:
            continue
        for model, count in gate.models.items():
            if model in held:
                held[model] += count["held"]
                in_flight[model] += count["in_flight"]
    return {m: ModelCensus(ready[m], starting[m], max(0, int(held[m])), max(0, int(in_flight[m]))) for m in models}
