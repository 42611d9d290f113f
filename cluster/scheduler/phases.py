"""A job's phase from its record: one reading for the scheduler, its status and the gate.

Backend states are Slurm's words (and ``GONE``/``EXITED``, ours for a job
that vanished or a local process that exited).  Pure: no clock, file or
process, so the gate's model listing can use it without importing the pass.
"""

from __future__ import annotations

from typing import Final

from .plan import Phase
from .state import JobRecord

__all__ = ["TERMINAL_STATES", "RUNNING_STATES", "ENDED_STATES", "phase_of", "routable"]

# Job states after which the job holds no resources any more.
TERMINAL_STATES: Final = frozenset(
    {
        "BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY",
        "PREEMPTED", "REVOKED", "SPECIAL_EXIT", "TIMEOUT", "COMPLETING", "STAGE_OUT",
    }
)  # fmt: skip
# States in which the job's program runs (or is being set up on its node).
RUNNING_STATES: Final = frozenset({"RUNNING", "CONFIGURING"})

# Backend states after which an instance is gone (Slurm's, plus ours).
ENDED_STATES: Final = TERMINAL_STATES | {"GONE", "EXITED"}


def phase_of(record: JobRecord) -> Phase:
    if record.ended is not None or record.state in ENDED_STATES:
        return Phase.ENDED
    if record.drain is not None:
        return Phase.DRAINING
    if record.state in RUNNING_STATES:
        return Phase.READY if record.ready is not None else Phase.STARTING
    return Phase.PENDING


def routable(record: JobRecord) -> bool:
    return phase_of(record) is Phase.READY and record.cancelled is None and record.probe_failures == 0 and record.host is not None
