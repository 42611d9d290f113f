"""The appliance's :class:`~appliance.metering.Metering`: quotas, accounting and metrics around each request.

:meth:`Meter.admit` checks the quotas (which raise 429 or 503 to refuse) and
returns a ticket; the API settles the ticket exactly once when the request is
over, and settling

1. releases the concurrency leases and reconciles the token reservation with
   the gate's usage report (:meth:`Quotas.settle`),
2. counts the request in the metrics, and fills in its log line,
3. writes its usage row and waits until it is committed, so that the row is
   durable before the answer's last byte leaves.

Only who, which model and route, status, token counts and timings pass
through here, never content.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from types import TracebackType
from typing import Self

from policy.events import event_line

from ..accounting import Accounting, UsageRow, open_accounting
from ..auth.base import Principal
from ..auth.secret import Secret
from ..metering import Outcome, Ticket
from ..metrics import Metrics
from ..middleware.request_log import CURRENT, RequestInfo
from ._memory import Backend, MemoryBackend
from .config import MeteringSettings
from .errors import QuotaExceeded, QuotaUnavailable
from .policy import load_policy
from .quotas import Grant, Quotas

__all__ = ["Meter", "build_meter", "token_rate"]

log = logging.getLogger("sluice.metering")

_NO_HEADERS: dict[str, str] = {}


class _Ticket:
    __slots__ = ("_grant", "_info", "_meter", "_model", "_principal", "_route", "_sealed", "_settled", "_since")

    def __init__(
        self,
        meter: Meter,
        principal: Principal,
        route: str,
        model: str,
        sealed: bool,
        grant: Grant | None,
        info: RequestInfo | None,
    ) -> None:
        self._meter = meter
        self._principal = principal
        self._route = route
        self._model = model
        self._sealed = sealed
        self._grant = grant
        self._since = time.time()
        self._info = info
        self._settled = False

    @property
    def headers(self) -> dict[str, str]:
        grant = self._grant
        return grant.headers if grant is not None else _NO_HEADERS

    async def settle(self, outcome: Outcome) -> None:
        if self._settled:
            return
        self._settled = True
        meter = self._meter
        meter.in_flight -= 1
        sealed = outcome.sealed or self._sealed
        if meter.quotas is not None and self._grant is not None:
            await meter.quotas.settle(self._grant, outcome)
        metrics = meter.metrics
        if metrics is not None:
            series = metrics.series(self._route, self._model)
            series.requests(outcome.status).inc()
            series.latency.observe(outcome.latency)
            if outcome.first_token is not None and not sealed:
                # a sealed stream's first chunk may be a sealed keepalive: only clear streams are timed
                series.first_token.observe(outcome.first_token)
            rate = token_rate(outcome)
            if rate is not None:
                series.token_rate.observe(rate)
            if outcome.prompt_tokens:
                series.prompt_tokens.inc(outcome.prompt_tokens)
            if outcome.completion_tokens:
                series.completion_tokens.inc(outcome.completion_tokens)
            series.in_flight.dec()
        info = self._info
        if info is not None:
            info.prompt_tokens = outcome.prompt_tokens
            info.completion_tokens = outcome.completion_tokens
            info.sealed = sealed
        if meter.accounting is not None:
            row = UsageRow(
                self._since,
                info.id if info is not None else "",
                self._principal.user,
                self._principal.key_id,
                self._model,
                self._route,
                outcome.status,
                outcome.prompt_tokens,
                outcome.completion_tokens,
                round(outcome.latency * 1000, 3),
                None if outcome.first_token is None else round(outcome.first_token * 1000, 3),
                sealed,
                outcome.audio_ms,
                outcome.model_revision,
                outcome.backend_version,
            )
            if metrics is not None:
                metrics.accounting_backlog.inc()
            try:
                await meter.accounting.record(row, meter.in_flight > 0)
            except Exception as exc:  # noqa: BLE001 (any store's failure: the answer stands, the operator is told)
                log.error(event_line("accounting_failed", error=type(exc).__name__))
                if metrics is not None:
                    metrics.accounting_errors.inc()
            finally:
                if metrics is not None:
                    metrics.accounting_backlog.dec()


def token_rate(outcome: Outcome) -> float | None:
    """Completion tokens per second of generation: after the first token for a stream, else
    over the whole answer; None when there is nothing to measure."""
    if outcome.status != 200 or outcome.completion_tokens <= 0:
        return None
    span = outcome.latency - (outcome.first_token or 0.0)
    if span <= 0:
        return None
    return outcome.completion_tokens / span


class Meter:
    """Quotas (optional), accounting (optional) and metrics (optional) as one Metering."""

    def __init__(
        self, quotas: Quotas | None = None, accounting: Accounting | None = None, metrics: Metrics | None = None
    ) -> None:
        self.quotas = quotas
        self.accounting = accounting
        self.metrics = metrics
        self.in_flight = 0  # admitted, not yet settled

    async def start(self) -> None:
        if self.quotas is not None:
            await self.quotas.start()
        if self.accounting is not None:
            await self.accounting.start()

    async def aclose(self) -> None:
        if self.quotas is not None:
            await self.quotas.aclose()
        if self.accounting is not None:
            await self.accounting.aclose()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()

    async def admit(self, principal: Principal, route: str, model: str, max_tokens: int | None, sealed: bool) -> Ticket:
        info = CURRENT.get()
        if info is not None:
            info.user, info.key_id, info.model, info.route, info.sealed = (principal.user, principal.key_id, model, route, sealed)
        grant: Grant | None = None
        metrics = self.metrics
        if self.quotas is not None:
            try:
                grant = await self.quotas.admit(principal, max_tokens, sealed)
            except QuotaExceeded as exc:
                if metrics is not None:
                    metrics.quota_rejections.labels(exc.limit, exc.scope).inc()
                if info is not None:
                    info.refused_by = exc.limit
                raise
            except QuotaUnavailable:
                if metrics is not None:
                    metrics.quota_storage_errors.labels("denied").inc()
                if info is not None:
                    info.refused_by = "quota_unavailable"
                raise
            if grant.unmetered and metrics is not None:
                metrics.quota_storage_errors.labels("unmetered").inc()
        if metrics is not None:
            metrics.series(route, model).in_flight.inc()
        self.in_flight += 1
        return _Ticket(self, principal, route, model, sealed, grant, info)


def _read_secret(path: Path, what: str) -> Secret:
    from ..auth.secret import read_secret_file

    return read_secret_file(path, what)


def build_meter(settings: MeteringSettings, metrics: Metrics | None = None) -> Meter:
    """The Meter that ``settings`` describe (not started: ``async with meter`` or ``start()``)."""
    quotas: Quotas | None = None
    q = settings.quotas
    if q.enabled:
        policy = load_policy(q.policy)
        if q.storage == "memory://":
            backend: Backend = MemoryBackend()
        else:
            from ._redis import RedisBackend

            password = (
                _read_secret(q.storage_password_file, "quotas.storage_password_file")
                if q.storage_password_file is not None
                else None
            )
            backend = RedisBackend(q.storage, password, q.storage_timeout, q.lease_ttl)
        quotas = Quotas(policy, backend, q.fail_open, q.storage_timeout)
    accounting: Accounting | None = None
    a = settings.accounting
    if a.backend == "sqlite":
        accounting = open_accounting("sqlite", path=str(a.path), synchronous=a.synchronous)
    elif a.backend == "postgresql" and a.dsn_file is not None:
        accounting = open_accounting(
            "postgresql",
            dsn=_read_secret(a.dsn_file, "accounting.dsn_file"),
            journal=None if a.journal is None else str(a.journal),
        )
    else:
        log.warning(event_line("accounting_disabled", hint="add an [accounting] table to record usage"))
    return Meter(quotas, accounting, metrics)


def demo_meter(runtime: Path, metrics: Metrics | None = None) -> Meter:
    """The demo's Meter: in-memory quotas (:data:`~appliance.quotas.policy.DEMO_POLICY`) and
    SQLite accounting in the demo's runtime directory ``runtime``."""
    from .policy import DEMO_POLICY

    policy_path = runtime / "quotas.toml"
    policy_path.write_text(DEMO_POLICY)
    quotas = Quotas(load_policy(policy_path), MemoryBackend())
    return Meter(quotas, open_accounting("sqlite", path=str(runtime / "usage.db")), metrics)
