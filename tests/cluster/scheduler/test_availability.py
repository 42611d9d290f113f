"""Model status for clients (cluster/scheduler/availability.py): pure logic over saved job records."""

from __future__ import annotations

from cluster.config import Service
from cluster.scheduler.availability import MIN_WAIT, ModelStatus, status_of
from cluster.scheduler.state import JobRecord

SERVICE = Service(
    model="m", routes=("chat",), backend="slurm", command=(), min_instances=0, max_instances=2, warmup_timeout=300.0
)
NOW = 10_000.0


def _job(**fields: object) -> JobRecord:
    return JobRecord(**{"id": "1", "service": "m", "port": 1, "token": "t", "submitted": NOW - 10, **fields})  # type: ignore[arg-type]


def test_ready() -> None:
    assert status_of(SERVICE, [], [], 2, NOW) == ModelStatus("ready", 2, None)


def test_at_zero_the_estimate_is_the_measured_median_else_the_warmup_bound() -> None:
    assert status_of(SERVICE, [], [], 0, NOW) == ModelStatus("scaled_to_zero", 0, 300)
    assert status_of(SERVICE, [], [40.0, 60.0, 500.0], 0, NOW) == ModelStatus("scaled_to_zero", 0, 60)


def test_pending_job_uses_slurms_start_estimate() -> None:
    pending = _job(state="PENDING", expected_start=NOW + 100)
    assert status_of(SERVICE, [pending], [60.0], 0, NOW) == ModelStatus("starting", 0, 160)


def test_running_job_counts_down_its_warmup() -> None:
    running = _job(state="RUNNING", started=NOW - 45, host="n1")
    assert status_of(SERVICE, [running], [60.0], 0, NOW) == ModelStatus("starting", 0, 15)
    late = _job(state="RUNNING", started=NOW - 600, host="n1")
    assert status_of(SERVICE, [late], [60.0], 0, NOW).estimated_wait == MIN_WAIT


def test_ended_and_cancelled_jobs_do_not_count() -> None:
    ended = _job(state="COMPLETED", ended=NOW - 1)
    cancelled = _job(id="2", state="RUNNING", cancelled=NOW - 1)
    assert status_of(SERVICE, [ended, cancelled], [], 0, NOW).status == "scaled_to_zero"


def test_kept_model_starts_and_one_without_a_hold_queue_is_unavailable() -> None:
    kept = Service(
        model="m", routes=("chat",), backend="slurm", command=(), min_instances=1, max_instances=2, warmup_timeout=300.0
    )
    assert status_of(kept, [], [], 0, NOW) == ModelStatus("starting", 0, 300)  # the next pass submits one
    no_hold = Service(
        model="m",
        routes=("chat",),
        backend="slurm",
        command=(),
        min_instances=0,
        max_instances=2,
        warmup_timeout=300.0,
        hold_queue=0,
    )
    assert status_of(no_hold, [], [], 0, NOW) == ModelStatus("unavailable", 0, None)


def test_listing_fields_leave_the_counts_to_the_census() -> None:
    assert ModelStatus("starting", 0, 42).to_json() == {"status": "starting", "estimated_wait": 42}
    assert ModelStatus("ready", 2, None).to_json() == {"status": "ready"}
