"""Admission against the quota policy, and reconciliation when a request is over.

:meth:`Quotas.admit` takes, for one request, a concurrency lease per
concurrency limit, then the reserved tokens from every token limit, then one
request from every request limit; whatever it took is given back if a later
limit refuses, so a refused request costs nothing (and reaches no cluster).
:meth:`Quotas.settle` releases the leases and replaces the reservation with
the usage the gate reported (:func:`tokens_used`).

When the storage fails, the configured choice applies: fail closed (the
default: :class:`QuotaUnavailable`, 503) or **fail open**
(``on_storage_error = "unsafe-allow"``: the request is admitted unmetered,
and every such admission is logged and counted).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any, Final

from policy.events import event_line

from ..auth.base import Principal
from ..metering import Outcome
from ._memory import Backend, MemoryBackend
from .errors import QuotaExceeded, QuotaStorageError, QuotaUnavailable
from .policy import Limit, Plan, QuotaPolicy

__all__ = ["Grant", "Quotas", "go_duration", "ratelimit_headers", "tokens_used"]

log = logging.getLogger("sluice.quotas")

# Statuses after which the backend may have generated tokens the gate could not report
# (the client went away, the answer timed out): the reservation is kept in full.
_KEEP_RESERVATION: Final = frozenset({200, 499, 504})


@dataclass(slots=True)
class Grant:
    """What one admitted request holds until it is settled."""

    plan: Plan
    reserved: int
    since: float
    leases: list[tuple[Limit, str]] = field(default_factory=list)
    taken: list[tuple[Limit, int]] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)
    unmetered: bool = False


def tokens_used(outcome: Outcome, reserved: int) -> int:
    """The tokens a finished request is charged.

    The gate's report when there is one; otherwise the whole reservation when
    the backend may have worked (a stream that started, a success without a
    report, a client gone mid-answer, a timeout), and nothing for a request
    that failed before any work (a 4xx/5xx from the gate).
    """
    reported = outcome.prompt_tokens + outcome.completion_tokens
    if reported > 0:
        return reported
    if outcome.first_token is not None or outcome.status in _KEEP_RESERVATION:
        return reserved
    return 0


def go_duration(seconds: float) -> str:
    """A duration as OpenAI writes it in ``x-ratelimit-reset-*``: ``20ms``, ``1s``, ``6m0s``, ``1h2m3s``.

    Whole seconds (rounded up) from one second on: the header is a hint, and
    whole seconds can be cached.
    """
    if seconds < 1:
        return f"{max(0, int(seconds * 1000))}ms"
    whole = int(seconds) + (seconds % 1 > 0)
    found = _DURATIONS.get(whole)
    if found is None:
        hours, rest = divmod(whole, 3600)
        minutes, secs = divmod(rest, 60)
        found = f"{hours}h{minutes}m{secs}s" if hours else f"{minutes}m{secs}s" if minutes else f"{secs}s"
        if len(_DURATIONS) < 100_000:
            _DURATIONS[whole] = found
    return found


_DURATIONS: dict[int, str] = {}


# The three header names of each kind, made once.
_HEADER_NAMES: Final = {
    kind: (f"x-ratelimit-limit-{kind}", f"x-ratelimit-remaining-{kind}", f"x-ratelimit-reset-{kind}")
    for kind in ("requests", "tokens")
}


def ratelimit_headers(kind: str, state: tuple[int, int, float] | None, now: float) -> dict[str, str]:
    """``x-ratelimit-{limit,remaining,reset}-<kind>`` for the binding limit (amount, remaining, reset)."""
    if state is None:
        return {}
    amount, remaining, reset = state
    limit_name, remaining_name, reset_name = _HEADER_NAMES[kind]
    return {
        limit_name: str(amount),
        remaining_name: str(max(0, remaining)),
        reset_name: go_duration(max(0.0, reset - now)),
    }


def _reason(exc: BaseException) -> str:
    """What failed, for the log: the storage client's exception type (never a message)."""
    if isinstance(exc, QuotaStorageError) and exc.args and str(exc.args[0]).isidentifier():
        return str(exc.args[0])
    return type(exc).__name__


# A storage operation (name, arguments...), and the generators of them that run the steps.
Op = tuple[Any, ...]
Steps = Generator[Op, Any, None]


class Quotas:
    """The quota policy enforced on a backend (memory or Redis)."""

    def __init__(self, policy: QuotaPolicy, backend: Backend, fail_open: bool = False, timeout: float = 1.0) -> None:
        self.policy = policy
        self.backend = backend
        self.fail_open = fail_open
        self._timeout = timeout
        # The in-memory store answers at once: its operations run without awaiting (and without
        # a timeout); a store across the network is awaited, within the timeout.
        self._now = backend.now_operations() if isinstance(backend, MemoryBackend) else None

    async def start(self) -> None:
        await self.backend.start()

    async def aclose(self) -> None:
        await self.backend.aclose()

    async def admit(self, principal: Principal, max_tokens: int | None, sealed: bool) -> Grant:
        """Admit one request or raise :class:`QuotaExceeded` (429) / :class:`QuotaUnavailable` (503)."""
        plan = self.policy.plan(principal)
        reserve = self.policy.reserve_tokens if max_tokens is None or sealed else max(0, max_tokens)
        return await self.admit_plan(plan, reserve)

    async def admit_plan(self, plan: Plan, reserve: int = 0) -> Grant:
        """As :meth:`admit`, for limits the caller built (an external upstream's, say)."""
        grant = Grant(plan, reserve, time.time())
        if plan.empty:
            return grant
        try:
            await self._run(self._admission(grant))
        except (QuotaStorageError, TimeoutError) as exc:
            await self._undo(grant)
            if not self.fail_open:
                log.error(event_line("quota_storage_failed", error=_reason(exc), admitted=False))
                raise QuotaUnavailable() from None
            # UNSAFE by configuration: the request goes through without limits; logged every time.
            log.warning(event_line("unsafe_unmetered_admission", error=_reason(exc), admitted=True))
            return Grant(plan, reserve, grant.since, unmetered=True)
        except BaseException:
            await asyncio.shield(self._undo(grant))
            raise
        return grant

    async def settle(self, grant: Grant, outcome: Outcome) -> None:
        """Release the leases and charge what the request really used."""
        if grant.unmetered or grant.plan.empty:
            return
        delta = tokens_used(outcome, grant.reserved) - grant.reserved
        try:
            await self._run(self._settlement(grant, delta))
        except (QuotaStorageError, TimeoutError) as exc:
            log.error(event_line("quota_settle_failed", error=_reason(exc)))

    async def _undo(self, grant: Grant) -> None:
        """Give back what a refused (or failed) admission took; best effort."""
        try:
            await self._run(self._undoing(grant))
        except (QuotaStorageError, TimeoutError):
            pass  # leases expire on their own; counters err on the safe side
        grant.leases.clear()
        grant.taken.clear()

    # -- the steps, as generators of storage operations (one algorithm, two ways to run it) ----
    def _admission(self, grant: Grant) -> Steps:
        """Take everything ``grant.plan`` asks for, recording it in ``grant``; raise on the first refusal."""
        plan, cost = grant.plan, grant.reserved
        for limit in plan.slots:
            lease = (yield ("acquire", limit)) if limit.amount > 0 else None
            if lease is None:
                raise QuotaExceeded(limit.name, limit.scope, 1.0)
            grant.leases.append((limit, lease))
        headers = grant.headers
        for kind, limits, amount in (("tokens", plan.tokens, cost), ("requests", plan.requests, 1)):
            binding: tuple[int, int, float] | None = None
            for limit in limits:
                if amount > limit.amount:
                    code = "max_tokens_over_quota" if kind == "tokens" else None
                    raise QuotaExceeded(limit.name, limit.scope, limit.window, code)
                if amount:
                    taken, remaining, reset = yield ("take", limit, amount)
                    if not taken:
                        now = time.time()
                        raise QuotaExceeded(
                            limit.name,
                            limit.scope,
                            min(limit.window, reset - now),
                            None,
                            ratelimit_headers(kind, (limit.amount, remaining, reset), now),
                        )
                else:
                    remaining, reset = yield ("remaining", limit)
                grant.taken.append((limit, amount))
                if binding is None or remaining < binding[1]:
                    binding = (limit.amount, remaining, reset)
            if binding is not None:
                headers.update(ratelimit_headers(kind, binding, grant.since))

    @staticmethod
    def _settlement(grant: Grant, delta: int) -> Steps:
        for limit, lease in grant.leases:
            yield ("release", limit, lease)
        grant.leases.clear()
        if delta:
            for limit in grant.plan.tokens:
                yield ("adjust", limit, delta)

    @staticmethod
    def _undoing(grant: Grant) -> Steps:
        for limit, lease in grant.leases:
            yield ("release", limit, lease)
        for limit, cost in grant.taken:
            if cost:
                yield ("adjust", limit, -cost)

    async def _run(self, steps: Steps) -> None:
        """Run ``steps`` against the backend: in one go for memory, awaiting each for a remote store."""
        if self._now is not None:
            now, result = self._now, None
            try:
                while True:
                    op = steps.send(result)
                    result = now[op[0]](*op[1:])
            except StopIteration:
                return
        async with asyncio.timeout(self._timeout):
            backend, result = self.backend, None
            try:
                while True:
                    op = steps.send(result)
                    result = await getattr(backend, op[0])(*op[1:])
            except StopIteration:
                return

    async def snapshot(self, principal: Principal) -> list[dict[str, object]]:
        """Each rate limit that applies to ``principal``: amount, remaining, reset (epoch seconds)."""
        plan = self.policy.plan(principal)
        rows: list[dict[str, object]] = []
        for limit in (*plan.requests, *plan.tokens):
            remaining, reset = await self.backend.remaining(limit)
            rows.append(
                {"limit": limit.name, "scope": limit.scope, "amount": limit.amount, "remaining": remaining, "reset": reset}
            )
        return rows
