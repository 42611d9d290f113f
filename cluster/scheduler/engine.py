"""One scheduler pass, the same for both backends.

A pass reads the backend's view of the instances (``squeue``, or the child
processes), probes the ones that run but are not ready yet (and the ready
ones, for health) concurrently, folds the gates' load files into the load
averages, asks :func:`~cluster.scheduler.plan.decide` what to do for each
service (highest priority first), cancels, submits, saves its state and
publishes the ready instances to the routing table.

If the backend cannot say what runs (``squeue`` failed, timed out or printed
something garbled), the pass changes nothing: the state, the routing table
and the jobs stay as they were, and the failure is logged and counted.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Protocol

from policy.errors import InternalError, SluiceError
from policy.events import event_line

from ..backend_client import BackendPool
from ..config import ClusterConfig, Service
from ..routing import Instance, TableError, read_table, update_table
from ..tls import (
    CLIENT_CERT,
    JobIdentity,
    TlsError,
    client_context,
    init_gate_identity,
    job_identity,
    make_job_identity,
    remove_job_identity,
)
from .load import LoadReport, account_load, read_gate_loads
from .paths import load_dir, state_path
from .phases import ENDED_STATES, RUNNING_STATES, phase_of, routable
from .plan import (
    DRAIN_GRACE,
    JobView,
    Load,
    Phase,
    ServiceState,
    backoff,
    decide,
    effective_limits,
)
from .slurm import SlurmError
from .state import MAX_STARTUPS, JobRecord, SchedulerState, ensure_private_dir, load_state, save_state

__all__ = ["Backend", "Engine", "PassReport", "ObserveError"]

log = logging.getLogger("sluice.scheduler")

# A cancelled instance still listed as active this long after the request is
# cancelled again (the first scancel may have failed).
CANCEL_RETRY: Final = 30.0

_HOST: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]{0,252}")


class ObserveError(InternalError):
    """The backend could not say which instances exist; nothing may change."""


class Backend(Protocol):
    name: str

    async def observe(self, jobs: dict[str, JobRecord], now: float) -> list[str]:
        """Update ``jobs`` in place; return ids of our instances that no record knows."""
        ...

    async def submit(self, service: Service, port: int, token: str, now: float, tls: JobIdentity | None) -> JobRecord:
        """Start one instance; ``tls``: its key and certificates (None: plain HTTP, unsafe)."""
        ...

    async def cancel(self, job_ids: list[str]) -> None: ...

    def port_free(self, port: int) -> bool: ...


def table_mode(config: ClusterConfig) -> int:
    """The routing table's mode: the gate's account reads it through the group with two accounts."""
    return 0o640 if config.split_accounts else 0o600


def forget(record: JobRecord) -> None:
    """Delete what a job left on disk for itself (its TLS directory): it has ended."""
    if record.tls_dir:
        remove_job_identity(Path(record.tls_dir))


def node_host(template: str, node: str) -> str | None:
    """The address of a job's node as the login node reaches it, or None (a node list)."""
    host = template.replace("{node}", node)
    return host if node and _HOST.fullmatch(host) else None


@dataclass(slots=True)
class PassReport:
    observed: bool = True
    submitted: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    error: str = ""


class Engine:
    """Runs passes of ``backend`` for the services of ``config`` that use it."""

    def __init__(
        self,
        config: ClusterConfig,
        backend: Backend,
        clock: Callable[[], float],
        pool: BackendPool | None = None,
    ) -> None:
        self._config = config
        self._backend = backend
        self._clock = clock
        self._services = sorted(config.services_of(backend.name), key=lambda s: (-s.priority, s.model))
        self._state_path = state_path(config, backend.name)
        self._pool = pool

    @property
    def services(self) -> list[Service]:
        return self._services

    async def run_pass(self) -> PassReport:
        """One pass; the caller holds the pass lock and bounds the time."""
        config = self._config
        ensure_private_dir(config.gate.state)
        state = load_state(self._state_path)
        report = PassReport()
        now = self._clock()
        try:
            orphans = await self._backend.observe(state.jobs, now)
        except (ObserveError, SlurmError) as exc:
            state.observe_failures += 1
            state.observe_error = str(exc)
            report.observed, report.error = False, str(exc)
            failures = state.observe_failures
            log.error(event_line("observe_failed", backend=self._backend.name, failures=failures, error=str(exc)[:300]))
            save_state(self._state_path, state)  # jobs and table stay as they were
            return report
        state.observed, state.observe_failures, state.observe_error = now, 0, ""
        await self._probe(state, now)
        load = self._account(state, now)
        to_cancel = list(orphans)
        for job_id in orphans:
            log.warning(event_line("orphan_cancelled", job=job_id))
        submissions: list[tuple[Service, int]] = []
        configured = {s.model for s in self._services}
        for service in self._services:
            wanted = self._decide(service, state, load, now, to_cancel, report)
            if wanted:
                submissions.append((service, wanted))
        for record in list(state.jobs.values()):
            ended = phase_of(record) is Phase.ENDED
            if ended and (record.cancelled is not None or record.service not in configured):
                forget(state.jobs.pop(record.id))
            elif record.cancelled is None and record.service not in configured:
                record.cancelled, record.cancel_reason = now, "unconfigured"
                to_cancel.append(record.id)
            elif record.cancelled is not None and now - record.cancelled > CANCEL_RETRY:
                record.cancelled = now  # still there: the last scancel may have failed
                to_cancel.append(record.id)
        if to_cancel:
            try:
                await self._backend.cancel(sorted(set(to_cancel)))
                report.cancelled += sorted(set(to_cancel))
            except SlurmError as exc:
                log.error(event_line("cancel_failed", error=str(exc)[:300]))
        await self._submit(state, submissions, now, report)
        state.last_pass = now
        save_state(self._state_path, state)
        self.publish(state)
        return report

    # ------------------------------------------------------------------ steps

    async def _probe(self, state: SchedulerState, now: float) -> None:
        candidates = [
            r for r in state.jobs.values()
            if r.state in RUNNING_STATES and r.host is not None and r.cancelled is None and phase_of(r) is not Phase.ENDED
        ]  # fmt: skip
        if not candidates:
            return
        results = await asyncio.gather(*(self.healthy(r) for r in candidates))
        for record, healthy in zip(candidates, results, strict=True):
            if healthy:
                if record.ready is None:
                    record.ready = now
                    startups = state.startups.setdefault(record.service, [])
                    startups.append(round(now - (record.started or record.submitted), 3))
                    del startups[:-MAX_STARTUPS]
                    log.info(event_line("instance_ready", model=record.service, job=record.id))
                record.probe_failures = 0
            elif record.ready is not None:
                record.probe_failures += 1
                log.warning(event_line("health_failed", model=record.service, job=record.id, count=record.probe_failures))

    async def healthy(self, record: JobRecord) -> bool:
        """``GET /health`` answers 200 within the probe timeout (no token is sent).

        A TLS job is probed with its own key (its client-certificate file lists
        it beside the gate's), so the scheduler never needs the gate's key.
        """
        if record.host is None:
            return False
        timeout = self._config.scheduler.probe_timeout
        try:
            tls = client_context(job_identity(Path(record.tls_dir), record.pin)) if record.pin else None
        except TlsError as exc:
            log.warning(event_line("probe_failed", job=record.id, error=str(exc)[:300]))
            return False
        pool, own = self._pool, False
        if pool is None or tls is not None:  # a TLS probe shows the job's own key: a pool of its own
            pool, own = BackendPool(max_idle_per_backend=0, connect_timeout=timeout, tls=tls), True
        try:
            async with asyncio.timeout(timeout):
                response = await pool.request(
                    record.host, record.port, None, "GET", "/health", b"", timeout, pin=record.pin or None
                )
                try:
                    await response.read(4096)
                    return response.status == 200
                finally:
                    response.close()
        except (SluiceError, TimeoutError):
            return False
        finally:
            if own:
                await pool.aclose()

    def _account(self, state: SchedulerState, now: float) -> LoadReport:
        models = [s.model for s in self._services]
        windows = {s.model: s.load_window for s in self._services}
        gates = read_gate_loads(load_dir(self._config), now)
        report, state.gates = account_load(gates, models, windows, state.gates, state.samples, state.last_pass, now)
        return report

    def _decide(
        self,
        service: Service,
        state: SchedulerState,
        load: LoadReport,
        now: float,
        to_cancel: list[str],
        report: PassReport,
    ) -> int:
        average = load.average.get(service.model, 0.0)
        current = load.current.get(service.model, 0.0)
        in_flight = load.instances
        records = [r for r in state.jobs.values() if r.service == service.model and r.cancelled is None]
        views = [self._view(r, now, in_flight) for r in records]
        limits = effective_limits(service, now)
        decision = decide(
            service,
            limits,
            views,
            Load(average, current),
            state.services.get(service.model, ServiceState()),
            now,
            self._config.scheduler.max_submit_per_pass,
        )
        for job_id in decision.forget:
            record = state.jobs.pop(job_id, None)
            if record is not None:
                forget(record)
        for job_id in decision.drain:
            state.jobs[job_id].drain = now
            log.info(event_line("drain", model=service.model, job=job_id))
        for job_id, reason in decision.cancel:
            record = state.jobs[job_id]
            record.cancelled, record.cancel_reason = now, reason
            to_cancel.append(job_id)
            log.info(event_line("cancel", model=service.model, job=job_id, reason=reason))
        for event in decision.events:
            log.info(event_line("decision", model=service.model, what=event))
        report.events += [f"{service.model}: {e}" for e in decision.events]
        state.services[service.model] = decision.state
        state.summary[service.model] = {
            "average": round(average, 3),
            "current": current,
            "target": decision.target,
            "min": limits.min_instances,
            "max": limits.max_instances,
        }
        return decision.submit

    def _view(self, record: JobRecord, now: float, in_flight: dict[str, int]) -> JobView:
        time_left = None
        if record.time_left is not None:
            time_left = record.time_left - max(0.0, now - record.observed)
        drained = None
        if record.drain is not None and now - record.drain >= DRAIN_GRACE:
            drained = in_flight.get(record.instance_id, 0)
        return JobView(
            id=record.id,
            phase=phase_of(record),
            submitted=record.submitted,
            started=record.started,
            ready_since=record.ready,
            drain_since=record.drain,
            time_left=time_left,
            probe_failures=record.probe_failures,
            end_state=record.state if record.state in ENDED_STATES else "",
            in_flight=drained,
        )

    async def _submit(
        self, state: SchedulerState, submissions: list[tuple[Service, int]], now: float, report: PassReport
    ) -> None:
        budget = self._config.scheduler.max_submit_per_pass
        for service, count in submissions:
            for _ in range(min(count, budget)):
                tls = None
                try:
                    port = self._free_port(state)
                    token = secrets.token_urlsafe(32)
                    tls = self._job_identity(service)
                    record = await self._backend.submit(service, port, token, now, tls)
                    if tls is not None:
                        record.pin, record.tls_dir = tls.pin, str(tls.directory)
                except (SlurmError, OSError, TlsError) as exc:
                    if tls is not None:
                        remove_job_identity(tls.directory)
                    previous = state.services.get(service.model, ServiceState())
                    failures = previous.failures + 1
                    state.services[service.model] = ServiceState(
                        previous.target, previous.changed, failures, now + backoff(service, failures), previous.last_ready
                    )
                    log.error(event_line("submit_failed", model=service.model, error=str(exc)[:300]))
                    break
                budget -= 1
                state.jobs[record.id] = record
                report.submitted.append(record.id)
                log.info(event_line("submitted", model=service.model, job=record.id))
            if budget <= 0:
                break

    def _job_identity(self, service: Service) -> JobIdentity | None:
        """A new job's TLS key and certificates in its own directory (None: plain HTTP, logged)."""
        if service.unsafe_plain_http:
            log.warning(event_line("unsafe_plain_http", model=service.model))
            return None
        config = self._config
        gate_cert = config.gate.tls / CLIENT_CERT
        if not config.split_accounts and not gate_cert.exists():
            init_gate_identity(config.gate.tls)  # one account: the gate's identity is ours to make
        ensure_private_dir(config.job_dir)
        directory = config.job_dir / f"{service.job_key}-{secrets.token_hex(8)}"
        return make_job_identity(directory, gate_cert, f"sluice-job {service.job_key}")

    def _free_port(self, state: SchedulerState) -> int:
        """A random port that no job of ours and no routing-table entry uses."""
        taken = {r.port for r in state.jobs.values()}
        try:
            for instances in read_table(self._config.gate.routing_table).values():
                taken.update(i.port for i in instances)
        except (TableError, OSError):
            pass
        low, high = self._config.scheduler.port_min, self._config.scheduler.port_max
        for _ in range(200):
            port = random.randint(low, high)  # nosec B311
            if port not in taken and self._backend.port_free(port):
                return port
        raise OSError("no free port in the configured range")

    def publish(self, state: SchedulerState) -> None:
        """Write this backend's ready instances into the routing table."""
        table: dict[str, list[Instance]] = {s.model: [] for s in self._services}
        for record in sorted(state.jobs.values(), key=lambda r: r.submitted):
            if record.service in table and routable(record) and record.host is not None:
                instance = Instance(record.instance_id, record.host, record.port, record.token, record.pin or None)
                table[record.service].append(instance)
        known = set(self._config.model_routes())
        config = self._config
        update_table(config.gate.routing_table, table, known, config.gate.state / "table.lock", table_mode(config))
