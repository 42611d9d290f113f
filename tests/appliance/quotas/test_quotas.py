"""Quotas in memory: admission, refusal, rollback, reconciliation, headers, and storage failure."""

from __future__ import annotations

import asyncio
import time
import tomllib

import pytest
from limits.strategies import SlidingWindowCounterRateLimiter

from appliance.auth.base import Principal
from appliance.metering import Outcome
from appliance.quotas import (
    MemoryBackend,
    QuotaExceeded,
    Quotas,
    QuotaUnavailable,
    parse_policy,
    tokens_used,
)
from appliance.quotas._memory import _LoopMemoryStorage, counter_key, rate_item
from appliance.quotas.errors import QuotaStorageError
from appliance.quotas.policy import Limit
from appliance.quotas.quotas import go_duration

ALICE = Principal("alice", "alice-key")


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def quotas(text: str, backend: object | None = None, fail_open: bool = False) -> Quotas:
    return Quotas(parse_policy(tomllib.loads(text)), backend or MemoryBackend(), fail_open)  # type: ignore[arg-type]


def away_from_minute_boundary() -> None:
    """In-memory windows are aligned to the clock: keep a short test inside one minute."""
    if time.time() % 60 > 57:
        time.sleep(60 - time.time() % 60 + 0.05)


async def used(q: Quotas, principal: Principal, name: str) -> int:
    """How much of the limit ``name`` is used (amount - remaining)."""
    for row in await q.snapshot(principal):
        if row["limit"] == name:
            return int(row["amount"]) - int(row["remaining"])  # type: ignore[call-overload]
    raise KeyError(name)


def test_requests_per_minute_admits_exactly_the_limit() -> None:
    away_from_minute_boundary()
    q = quotas("[user]\nrequests_per_minute = 5")

    async def scenario() -> None:
        results = await asyncio.gather(*(q.admit(ALICE, 10, False) for _ in range(12)), return_exceptions=True)
        admitted = [r for r in results if not isinstance(r, BaseException)]
        refused = [r for r in results if isinstance(r, QuotaExceeded)]
        assert len(admitted) == 5 and len(refused) == 7
        error = refused[0]
        assert error.status == 429 and error.code == "requests_per_minute_exceeded"
        assert error.limit == "requests_per_minute" and error.scope == "user"
        assert 1 <= error.retry_after <= 60
        assert error.headers["x-ratelimit-limit-requests"] == "5"
        assert error.headers["x-ratelimit-remaining-requests"] == "0"
        # Another user has a budget of their own.
        await q.admit(Principal("bob"), 10, False)

    run(scenario())


def test_a_refused_request_costs_nothing() -> None:
    """What the other limits took for a refused request is given back (and nothing reaches the cluster)."""
    away_from_minute_boundary()
    q = quotas("[user]\ntokens_per_minute = 1000\nconcurrent_requests = 4\n[key]\nrequests_per_minute = 1")
    backend = q.backend
    assert isinstance(backend, MemoryBackend)

    async def scenario() -> None:
        grant = await q.admit(ALICE, 100, False)
        assert await used(q, ALICE, "tokens_per_minute") == 100
        with pytest.raises(QuotaExceeded) as refused:
            await q.admit(ALICE, 100, False)
        assert refused.value.code == "requests_per_minute_exceeded" and refused.value.scope == "key"
        assert await used(q, ALICE, "tokens_per_minute") == 100  # the refused reservation was given back
        assert backend.in_use(q.policy.plan(ALICE).slots[0]) == 1  # and its concurrency slot
        await q.settle(grant, Outcome(200, 40, 60))
        assert backend.in_use(q.policy.plan(ALICE).slots[0]) == 0

    run(scenario())


def test_concurrency_limit_and_release_on_settle() -> None:
    q = quotas("[user]\nconcurrent_requests = 2")

    async def scenario() -> None:
        first = await q.admit(ALICE, None, False)
        second = await q.admit(ALICE, None, False)
        with pytest.raises(QuotaExceeded) as refused:
            await q.admit(ALICE, None, False)
        assert refused.value.code == "concurrent_requests_exceeded" and refused.value.retry_after == 1
        await q.settle(first, Outcome(499))
        third = await q.admit(ALICE, None, False)
        await q.settle(second, Outcome(200, 1, 1))
        await q.settle(third, Outcome(200, 1, 1))
        assert q.backend.in_use(q.policy.plan(ALICE).slots[0]) == 0  # type: ignore[attr-defined]

    run(scenario())


def test_zero_suspends() -> None:
    q = quotas("[user]\nrequests_per_minute = 0")
    with pytest.raises(QuotaExceeded, match="requests_per_minute_exceeded"):
        run(q.admit(ALICE, 1, False))
    q = quotas("[user]\nconcurrent_requests = 0")
    with pytest.raises(QuotaExceeded, match="concurrent_requests_exceeded"):
        run(q.admit(ALICE, 1, False))


def test_max_tokens_larger_than_the_limit_is_refused_outright() -> None:
    q = quotas("[user]\ntokens_per_minute = 100")
    with pytest.raises(QuotaExceeded) as refused:
        run(q.admit(ALICE, 101, False))
    assert refused.value.code == "max_tokens_over_quota" and refused.value.retry_after == 60


@pytest.mark.parametrize(
    ("outcome", "charged"),
    [
        (Outcome(200, 30, 20), 50),  # plain: the gate's report
        (Outcome(200, 30, 200, first_token=0.01), 230),  # streamed, more than reserved: the excess is charged
        (Outcome(200, 30, 20, sealed=True), 50),  # sealed: the same report, as metadata
        (Outcome(200), 100),  # answered but no report: the reservation stands
        (Outcome(499, first_token=0.1), 100),  # client gone mid-stream: the reservation stands
        (Outcome(503, first_token=0.1), 100),  # broken mid-stream
        (Outcome(504), 100),  # timed out: the backend may have worked
        (Outcome(503), 0),  # no instance ready: nothing was done
        (Outcome(502), 0),
        (Outcome(422), 0),  # the gate refused the body
    ],
)
def test_tokens_used(outcome: Outcome, charged: int) -> None:
    assert tokens_used(outcome, 100) == charged


@pytest.mark.parametrize("sealed", [False, True])
@pytest.mark.parametrize(("reported", "streamed"), [((10, 15), False), ((10, 15), True), ((100, 400), True)])
def test_reconciliation_replaces_the_reservation_with_the_reported_usage(
    reported: tuple[int, int], streamed: bool, sealed: bool
) -> None:
    """Reserve max_tokens (or reserve_tokens when sealed); settle with the gate's numbers."""
    away_from_minute_boundary()
    q = quotas("reserve_tokens = 300\n[user]\ntokens_per_minute = 10000\ntokens_per_day = 100000")

    async def scenario() -> None:
        grant = await q.admit(ALICE, 200, sealed)
        reserved = 300 if sealed else 200
        assert grant.reserved == reserved
        assert await used(q, ALICE, "tokens_per_minute") == reserved
        assert await used(q, ALICE, "tokens_per_day") == reserved
        outcome = Outcome(200, *reported, first_token=0.05 if streamed else None, sealed=sealed)
        await q.settle(grant, outcome)
        assert await used(q, ALICE, "tokens_per_minute") == sum(reported)
        assert await used(q, ALICE, "tokens_per_day") == sum(reported)

    run(scenario())


def test_reconciliation_frees_room_for_more_requests() -> None:
    away_from_minute_boundary()
    q = quotas("[user]\ntokens_per_minute = 1000")

    async def scenario() -> None:
        grants = [await q.admit(ALICE, 400, False) for _ in range(2)]
        with pytest.raises(QuotaExceeded, match="tokens_per_minute_exceeded"):
            await q.admit(ALICE, 400, False)
        for grant in grants:
            await q.settle(grant, Outcome(200, 10, 40))
        await q.admit(ALICE, 400, False)  # 100 used, 400 more fit

    run(scenario())


def test_headers_show_the_binding_limits_in_openai_format() -> None:
    away_from_minute_boundary()
    q = quotas("[user]\nrequests_per_minute = 10\ntokens_per_minute = 1000\ntokens_per_day = 500\n[key]\nrequests_per_minute = 3")

    async def scenario() -> None:
        grant = await q.admit(ALICE, 100, False)
        headers = grant.headers
        assert headers["x-ratelimit-limit-requests"] == "3"  # the key's limit binds
        assert headers["x-ratelimit-remaining-requests"] == "2"
        assert headers["x-ratelimit-limit-tokens"] == "500"  # the day's limit binds
        assert headers["x-ratelimit-remaining-tokens"] == "400"
        for kind in ("requests", "tokens"):
            reset = headers[f"x-ratelimit-reset-{kind}"]
            assert reset.endswith("s") and (reset[:-1].isdigit() or "m" in reset or "h" in reset or "ms" in reset)

    run(scenario())


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.02, "20ms"), (0.9999, "999ms"), (1, "1s"), (1.2, "2s"), (59.5, "1m0s"), (360, "6m0s"), (3723, "1h2m3s")],
)
def test_go_duration(seconds: float, text: str) -> None:
    assert go_duration(seconds) == text


def test_fast_path_agrees_with_limits_own_strategy() -> None:
    """take() is limits' acquire + window stats in one step: same answers, same counters."""
    away_from_minute_boundary()
    ours, theirs = _LoopMemoryStorage(), _LoopMemoryStorage()
    strategy = SlidingWindowCounterRateLimiter(theirs)
    limit = Limit("tokens_per_minute", "user", "u.test", 100, 60)
    item, key = rate_item(limit), counter_key(limit)
    for cost in (30, 30, 30, 30, 5, 50, 5, 1):
        taken, remaining, reset = ours.take(key, 100, 60, cost)
        assert taken == strategy.hit(item, limit.name, limit.subject, cost=cost)
        stats = strategy.get_window_stats(item, limit.name, limit.subject)
        assert remaining == stats.remaining
        assert abs(reset - stats.reset_time) < 0.5
    assert ours.storage == theirs.storage
    # limits' own strategy reads what the fast path wrote.
    assert SlidingWindowCounterRateLimiter(ours).get_window_stats(item, limit.name, limit.subject).remaining == 0
    ours.adjust(key, 60, -50)
    assert SlidingWindowCounterRateLimiter(ours).get_window_stats(item, limit.name, limit.subject).remaining == 50
    ours.adjust(key, 60, -1000)  # never below zero
    assert SlidingWindowCounterRateLimiter(ours).get_window_stats(item, limit.name, limit.subject).remaining == 100
    ours.adjust(key, 60, 150)  # charging past the limit is allowed (it was used)
    assert SlidingWindowCounterRateLimiter(ours).get_window_stats(item, limit.name, limit.subject).remaining == 0
    assert ours.take(key, 100, 60, 1)[0] is False


def test_expired_counters_are_swept() -> None:
    storage = _LoopMemoryStorage()
    storage.take("k", 10, 1, 1)
    assert storage.storage
    storage.expirations = {k: time.time() - 1 for k in storage.expirations}
    storage.sweep()
    assert not storage.storage and not storage.expirations


class BrokenBackend(MemoryBackend):
    """A store that fails the way an unreachable Redis does."""

    def take_now(self, limit: Limit, cost: int) -> tuple[bool, int, float]:
        raise QuotaStorageError("ConnectionError")

    def acquire_now(self, limit: Limit) -> str | None:
        raise QuotaStorageError("ConnectionError")


def test_storage_failure_fails_closed_by_default(caplog: pytest.LogCaptureFixture) -> None:
    q = quotas("[user]\nrequests_per_minute = 5", BrokenBackend())
    with pytest.raises(QuotaUnavailable) as refused:
        run(q.admit(ALICE, 1, False))
    assert refused.value.status == 503 and refused.value.code == "quota_unavailable" and refused.value.retry_after == 5
    assert "quota_storage_failed" in caplog.text


def test_storage_failure_fails_open_when_configured_and_says_so_every_time(caplog: pytest.LogCaptureFixture) -> None:
    q = quotas("[user]\nrequests_per_minute = 5\nconcurrent_requests = 1", BrokenBackend(), fail_open=True)

    async def scenario() -> None:
        for _ in range(3):
            grant = await q.admit(ALICE, 1, False)
            assert grant.unmetered and grant.headers == {}
            await q.settle(grant, Outcome(200, 1, 1))

    run(scenario())
    assert caplog.text.count("unsafe_unmetered_admission") == 3


def test_memory_backend_sweeper_starts_and_stops() -> None:
    async def scenario() -> None:
        backend = MemoryBackend()
        await backend.start()
        await backend.aclose()
        await backend.aclose()

    run(scenario())


def test_the_in_memory_store_starts_no_expiry_threads() -> None:
    """limits' own incr/decr start an expiry timer thread every 10 ms; the loop's steps do not."""
    storage = _LoopMemoryStorage()
    storage.timer.join()  # the one timer limits' constructor starts runs once and ends
    first = storage.timer
    for cost in range(1, 50):
        storage.take("k", 10_000, 60, cost)
        storage.adjust("k", 60, -1)
        storage.adjust("k", 60, 2)
    assert storage.timer is first and not storage.timer.is_alive()
    assert not storage.locks  # nor a lock per key
    assert (
        SlidingWindowCounterRateLimiter(storage)
        .get_window_stats(rate_item(Limit("tokens_per_minute", "user", "u.t", 10_000, 60)), "tokens_per_minute", "u.t")
        .remaining
        == 10_000
    )  # another key: untouched


def test_window_stats_of_a_count_read_as_it_was_made_resets_a_window_later() -> None:
    from appliance.quotas._memory import window_stats

    # A count made in the same step that reads it (a Redis script) has twice the window to live.
    assert window_stats(100, 60, 0, 0.0, 30, 120.0, 1000.0) == (70, 1060.0)
    assert window_stats(100, 60, 0, 0.0, 30, 119.5, 1000.0) == (70, 1059.5)  # limits' own answer
    assert window_stats(100, 60, 0, 0.0, 0, 0.0, 1000.0) == (100, 1000.0)  # nothing counted: whole now
    # The previous window's count frees one unit every window / count seconds.
    assert window_stats(100, 60, 30, 41.0, 0, 0.0, 1000.0) == (80, 1001.0)
    assert window_stats(100, 60, 30, 40.0, 0, 0.0, 1000.0) == (80, 1002.0)  # a unit freed just now: the next
