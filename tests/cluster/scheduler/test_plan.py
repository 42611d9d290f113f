"""The scheduling policy on a simulated clock: no sleeps, no processes, no Slurm.

A small simulator plays the cluster: a job waits ``queue`` seconds, warms up
for ``warmup`` seconds, then serves until its time limit; the policy's
decisions are applied to it pass after pass.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace
from datetime import datetime

import pytest

from cluster.config import SchedulePeriod, Service
from cluster.scheduler.plan import (
    DRAIN_GRACE,
    UNHEALTHY_AFTER,
    Decision,
    JobView,
    Limits,
    Load,
    Phase,
    ServiceState,
    backoff,
    decide,
    limits_at,
)

BASE = Service(
    model="m",
    routes=("chat",),
    backend="slurm",
    command=(),
    min_instances=1,
    max_instances=4,
    warmup_timeout=60.0,
    requests_per_instance=4.0,
    scale_up_threshold=0.75,
    scale_down_threshold=0.25,
    load_window=60.0,
    scale_down_delay=120.0,
    pending_timeout=300.0,
    renew_before=0.0,
    drain_timeout=60.0,
    backoff_base=10.0,
    backoff_max=80.0,
)


def service(**changes: object) -> Service:
    return replace(BASE, **changes)  # type: ignore[arg-type]


def limits(svc: Service) -> Limits:
    return Limits(svc.min_instances, svc.max_instances)


IDLE = Load(0.0, 0.0)


@dataclass
class SimJob:
    id: str
    submitted: float
    queue: float
    warmup: float
    limit: float | None
    fails_at: float | None = None  # ends FAILED at this time (None: never)
    fail_state: str = "FAILED"
    drain_since: float | None = None
    cancelled: bool = False
    probe_failures: int = 0
    in_flight: int = 0
    stuck: bool = False  # never leaves the queue

    def view(self, now: float) -> JobView:
        started = self.submitted + self.queue
        ready = started + self.warmup
        end = started + self.limit if self.limit is not None else None
        ready_since = ready if now >= ready and not self.stuck else None
        if self.fails_at is not None and now >= self.fails_at:
            ready_since = ready if self.fails_at >= ready and not self.stuck else None
            return JobView(
                self.id, Phase.ENDED, self.submitted, started, ready_since, self.drain_since, end_state=self.fail_state
            )
        if end is not None and now >= end:
            return JobView(self.id, Phase.ENDED, self.submitted, started, ready_since, self.drain_since, end_state="TIMEOUT")
        time_left = None if end is None else end - now
        if self.stuck or now < started:
            return JobView(self.id, Phase.PENDING, self.submitted, time_left=self.limit)
        if self.drain_since is not None:
            return JobView(
                self.id,
                Phase.DRAINING,
                self.submitted,
                started,
                ready_since,
                self.drain_since,
                time_left,
                in_flight=self.in_flight,
            )
        if now < ready:
            return JobView(self.id, Phase.STARTING, self.submitted, started, time_left=time_left)
        return JobView(self.id, Phase.READY, self.submitted, started, ready, None, time_left, self.probe_failures)


@dataclass
class Sim:
    svc: Service
    queue: float = 5.0
    warmup: float = 30.0
    limit: float | None = None
    stuck: bool = False
    fail_after: float | None = None
    now: float = 1000.0
    state: ServiceState = field(default_factory=ServiceState)
    jobs: dict[str, SimJob] = field(default_factory=dict)
    submitted: int = 0
    cancelled: list[tuple[str, str]] = field(default_factory=list)
    ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def views(self) -> list[JobView]:
        return [j.view(self.now) for j in self.jobs.values() if not j.cancelled]

    def step(self, load: Load = IDLE, lim: Limits | None = None) -> Decision:
        decision = decide(self.svc, lim or limits(self.svc), self.views(), load, self.state, self.now)
        self.state = decision.state
        for job_id in decision.forget:
            del self.jobs[job_id]
        for job_id in decision.drain:
            self.jobs[job_id].drain_since = self.now
        for job_id, reason in decision.cancel:
            self.jobs.pop(job_id)
            self.cancelled.append((job_id, reason))
        for _ in range(decision.submit):
            job_id = str(next(self.ids))
            fails = None if self.fail_after is None else self.now + self.fail_after
            self.jobs[job_id] = SimJob(job_id, self.now, self.queue, self.warmup, self.limit, fails, stuck=self.stuck)
            self.submitted += 1
        return decision

    def run(self, seconds: float, tick: float = 5.0, load: Load = IDLE) -> None:
        end = self.now + seconds
        while self.now < end:
            self.step(load)
            self.now += tick

    def ready(self) -> int:
        return sum(1 for v in self.views() if v.phase is Phase.READY)

    def live(self) -> int:
        return sum(1 for v in self.views() if v.phase in (Phase.PENDING, Phase.STARTING, Phase.READY))


# -- bounds and the first pass ----------------------------------------------------


def test_first_pass_submits_the_minimum() -> None:
    sim = Sim(service(min_instances=2))
    decision = sim.step()
    assert decision.submit == 2 and decision.target == 2
    assert sim.step().submit == 0  # queued jobs count


def test_max_submit_per_pass_bounds_a_pass() -> None:
    svc = service(min_instances=10, max_instances=10)
    decision = decide(svc, limits(svc), [], IDLE, ServiceState(), 0.0, max_submit=3)
    assert decision.submit == 3


# -- scaling on load --------------------------------------------------------------


def test_scale_up_when_average_passes_the_threshold() -> None:
    sim = Sim(service())
    sim.run(60)
    assert sim.ready() == 1
    # capacity 4 per instance, scale up above 75 %: 3.0 is not over, 3.1 is
    assert sim.step(Load(3.0, 3.0)).submit == 0
    decision = sim.step(Load(3.1, 3.0))
    assert decision.target == 2 and decision.submit == 1


def test_scale_up_jumps_to_what_the_load_needs_within_max() -> None:
    sim = Sim(service())
    sim.run(60)
    assert sim.step(Load(7.0, 7.0)).target == 3  # ceil(7 / 3)
    assert sim.step(Load(100.0, 100.0)).target == 4  # max_instances


def test_no_repeated_scale_up_while_new_instances_warm_up() -> None:
    sim = Sim(service(), queue=20, warmup=60)
    sim.run(100)
    sim.step(Load(3.5, 3.5))
    assert sim.submitted == 2
    for _ in range(10):
        sim.now += 5
        sim.step(Load(3.5, 3.5))
    assert sim.submitted == 2 and sim.live() == 2


def test_scale_down_one_at_a_time_after_the_delay_never_below_min() -> None:
    sim = Sim(service(min_instances=1))
    sim.run(60, load=Load(11.0, 11.0))
    assert sim.state.target == 4
    sim.run(100, load=Load(11.0, 11.0))
    assert sim.ready() == 4
    changed = sim.state.changed
    # idle, but not for scale_down_delay yet
    while sim.now < changed + 120:
        assert sim.step(Load(0.0, 0.0)).target == 4
        sim.now += 5
    assert sim.step().target == 3
    sim.now += 5
    assert sim.step().target == 3  # the delay starts again
    sim.run(1000)
    assert sim.state.target == 1 and sim.live() == 1


def test_scale_down_cancels_waiting_jobs_before_draining_ready_ones() -> None:
    svc = service(min_instances=1)
    state = ServiceState(target=3, changed=0.0)
    jobs = [
        JobView("1", Phase.READY, 10.0, 11.0, 12.0, time_left=500.0),
        JobView("2", Phase.READY, 20.0, 21.0, 22.0, time_left=100.0),
        JobView("3", Phase.PENDING, 990.0),
    ]
    decision = decide(svc, limits(svc), jobs, IDLE, state, 1000.0)
    assert decision.target == 2 and decision.cancel == (("3", "surplus"),) and decision.drain == ()
    state = replace(decision.state, changed=0.0)
    decision = decide(svc, limits(svc), jobs[:2], IDLE, state, 1000.0)
    assert decision.target == 1 and decision.drain == ("2",)  # least time left goes first


def test_scale_down_needs_the_smaller_count_to_stay_under_scale_up() -> None:
    svc = service(scale_down_threshold=0.5)
    state = ServiceState(target=2, changed=0.0)
    # 3.5 < 2 * 4 * 0.5 but one instance would be over 75 %: stay at 2
    decision = decide(svc, limits(svc), [], Load(3.5, 3.5), state, 1000.0)
    assert decision.target == 2


# -- scale to zero and back -------------------------------------------------------


def test_scale_to_zero_when_idle_and_back_on_a_held_request() -> None:
    sim = Sim(service(min_instances=0, scale_down_delay=60))
    sim.step(Load(1.0, 1.0))
    assert sim.state.target == 1
    sim.run(200, load=Load(0.5, 0.5))
    assert sim.ready() == 1
    sim.run(100)
    assert sim.state.target == 0 and sim.live() == 0
    decision = sim.step(Load(0.0, 1.0))  # one request held now, nothing in the window yet
    assert decision.target == 1 and decision.submit == 1


def test_scale_to_zero_waits_for_current_requests() -> None:
    svc = service(min_instances=0)
    state = ServiceState(target=1, changed=0.0)
    assert decide(svc, limits(svc), [], Load(0.0, 1.0), state, 1000.0).target == 1
    assert decide(svc, limits(svc), [], Load(0.0, 0.0), state, 1000.0).target == 0


# -- time-of-day schedule ---------------------------------------------------------

NIGHT = SchedulePeriod(frozenset(range(7)), 22 * 60, 6 * 60, 0, 0)
WORKDAY_PEAK = SchedulePeriod(frozenset(range(5)), 9 * 60, 17 * 60, 3, 8)


@pytest.mark.parametrize(
    ("when", "expected"),
    [
        (datetime(2024, 6, 3, 12, 0), Limits(3, 8)),  # Monday noon
        (datetime(2024, 6, 8, 12, 0), Limits(1, 4)),  # Saturday noon: the service's own
        (datetime(2024, 6, 3, 23, 30), Limits(0, 0)),  # night, before midnight
        (datetime(2024, 6, 4, 5, 59), Limits(0, 0)),  # night, after midnight
        (datetime(2024, 6, 4, 6, 0), Limits(1, 4)),
        (datetime(2024, 6, 3, 17, 0), Limits(1, 4)),  # the end minute is outside
    ],
)
def test_schedule_periods(when: datetime, expected: Limits) -> None:
    assert limits_at(service(schedule=(NIGHT, WORKDAY_PEAK)), when) == expected


def test_schedule_wrapping_past_midnight_follows_the_start_day() -> None:
    friday_night = SchedulePeriod(frozenset({4}), 20 * 60, 8 * 60, 0, 0)
    svc = service(schedule=(friday_night,))
    assert limits_at(svc, datetime(2024, 6, 8, 7, 0)) == Limits(0, 0)  # Saturday 07:00
    assert limits_at(svc, datetime(2024, 6, 9, 7, 0)) == Limits(1, 4)  # Sunday 07:00


def test_night_schedule_drains_everything_and_morning_brings_it_back() -> None:
    sim = Sim(service(min_instances=2))
    sim.run(60)
    assert sim.ready() == 2
    night = Limits(0, 0)
    decision = sim.step(Load(5.0, 5.0), night)
    assert decision.target == 0 and len(decision.drain) == 2 and decision.submit == 0
    decision = sim.step(Load(0.0, 3.0), night)  # requests now: still nothing at night
    assert decision.submit == 0
    assert sim.step(IDLE, Limits(2, 4)).submit == 2


# -- time limits ------------------------------------------------------------------


def test_renewal_before_the_time_limit_leaves_no_gap() -> None:
    sim = Sim(service(renew_before=120, time_limit=1800), queue=10, warmup=60, limit=1800)
    sim.run(100)
    first_ready = sim.ready()
    assert first_ready == 1
    gaps = 0
    for _ in range(2000):  # about five and a half hours
        sim.step()
        gaps += sim.ready() == 0
        sim.now += 10
    assert gaps == 0
    assert sim.submitted >= 10  # one replacement per half hour
    assert all(reason == "drained" for _, reason in sim.cancelled)


def test_time_limit_without_renewal_is_replaced_at_once_without_backoff() -> None:
    sim = Sim(service(), queue=5, warmup=10, limit=600)
    sim.run(600)
    assert sim.submitted == 1
    while True:
        sim.now += 5
        decision = sim.step()
        if decision.forget:
            break
    assert any("TIMEOUT" in e for e in decision.events)  # the first job reached its limit
    assert decision.submit == 1 and sim.state.failures == 0


def test_expiring_instance_keeps_serving_until_its_replacement_is_ready() -> None:
    svc = service(renew_before=300, time_limit=3600)
    expiring = JobView("1", Phase.READY, 0.0, 1.0, 2.0, time_left=200.0)
    decision = decide(svc, limits(svc), [expiring], IDLE, ServiceState(target=1), 1000.0)
    assert decision.submit == 1 and decision.drain == ()
    warming = JobView("2", Phase.STARTING, 990.0, 995.0, time_left=3590.0)
    decision = decide(svc, limits(svc), [expiring, warming], IDLE, decision.state, 1005.0)
    assert decision.submit == 0 and decision.drain == ()
    ready = JobView("2", Phase.READY, 990.0, 995.0, 1004.0, time_left=3580.0)
    decision = decide(svc, limits(svc), [expiring, ready], IDLE, decision.state, 1010.0)
    assert decision.drain == ("1",)


# -- failures, stuck jobs, backoff --------------------------------------------------


def test_stuck_pending_jobs_are_cancelled_and_retried_with_backoff() -> None:
    sim = Sim(service(pending_timeout=300, backoff_base=10, backoff_max=80), stuck=True)
    retries: list[float] = []
    for _ in range(600):
        before = sim.submitted
        sim.step()
        if sim.submitted > before:
            retries.append(sim.now)
        sim.now += 1
    waits = [b - a for a, b in itertools.pairwise(retries)]
    # each retry waits the pending timeout plus a backoff that doubles up to its bound
    assert [round(w - 301) for w in waits][:1] == [10]
    assert all(reason == "pending_timeout" for _, reason in sim.cancelled)
    assert sim.state.failures == len(sim.cancelled)
    assert backoff(sim.svc, 1) == 10 and backoff(sim.svc, 3) == 40 and backoff(sim.svc, 10) == 80


def test_warmup_timeout_cancels_and_backs_off() -> None:
    sim = Sim(service(warmup_timeout=60), queue=1, warmup=10_000)
    sim.run(70, tick=1)
    assert sim.cancelled == [("1", "warmup_timeout")]
    assert sim.state.failures == 1 and sim.state.retry_at > sim.now - 1
    assert sim.step().submit == 0  # backing off
    sim.now = sim.state.retry_at
    assert sim.step().submit == 1


@pytest.mark.parametrize("state", ["FAILED", "NODE_FAIL", "CANCELLED", "OUT_OF_MEMORY", "GONE"])
def test_job_failing_before_ready_counts_as_failure(state: str) -> None:
    job = JobView("1", Phase.ENDED, 0.0, 1.0, end_state=state)
    decision = decide(BASE, limits(BASE), [job], IDLE, ServiceState(target=1), 100.0)
    assert decision.forget == ("1",) and decision.state.failures == 1 and decision.submit == 0
    assert decision.state.retry_at == 110.0


@pytest.mark.parametrize("state", ["NODE_FAIL", "FAILED", "CANCELLED", "TIMEOUT"])
def test_ready_job_lost_is_replaced_at_once(state: str) -> None:
    job = JobView("1", Phase.ENDED, 0.0, 1.0, 2.0, end_state=state)
    decision = decide(BASE, limits(BASE), [job], IDLE, ServiceState(target=1, last_ready=2.0), 100.0)
    assert decision.forget == ("1",) and decision.submit == 1 and decision.state.failures == 0


def test_a_ready_instance_resets_the_backoff() -> None:
    state = ServiceState(target=1, failures=4, retry_at=500.0, last_ready=0.0)
    job = JobView("9", Phase.READY, 90.0, 91.0, 95.0)
    decision = decide(BASE, limits(BASE), [job], IDLE, state, 100.0)
    assert decision.state.failures == 0 and decision.state.retry_at == 0.0


def test_unhealthy_instance_is_replaced() -> None:
    job = JobView("1", Phase.READY, 0.0, 1.0, 2.0, probe_failures=UNHEALTHY_AFTER - 1)
    decision = decide(BASE, limits(BASE), [job], IDLE, ServiceState(target=1), 100.0)
    assert decision.cancel == () and decision.submit == 0
    job = replace(job, probe_failures=UNHEALTHY_AFTER)
    decision = decide(BASE, limits(BASE), [job], IDLE, ServiceState(target=1), 100.0)
    assert decision.cancel == (("1", "unhealthy"),) and decision.submit == 1


# -- draining ---------------------------------------------------------------------


def test_draining_waits_for_requests_in_flight_then_cancels() -> None:
    svc = service(drain_timeout=60)
    state = ServiceState(target=0)
    lim = Limits(0, 4)

    def cancel_of(job: JobView, now: float) -> tuple[tuple[str, str], ...]:
        return decide(svc, lim, [job], IDLE, state, now).cancel

    job = JobView("1", Phase.DRAINING, 0.0, 1.0, 2.0, drain_since=100.0, in_flight=None)
    assert cancel_of(job, 100.0 + DRAIN_GRACE - 0.1) == ()
    assert cancel_of(replace(job, in_flight=2), 120.0) == ()
    assert cancel_of(replace(job, in_flight=0), 100.0 + DRAIN_GRACE) == (("1", "drained"),)
    assert cancel_of(replace(job, in_flight=5), 160.0) == (("1", "drained"),)  # drain_timeout
    # a draining job is not counted: the target is met by others
    assert decide(svc, Limits(1, 4), [replace(job, in_flight=1)], IDLE, ServiceState(target=1), 120.0).submit == 1
