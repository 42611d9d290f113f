"""The Redis quota store against a real redis-server: counters, leases, and Redis going away."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import tomllib
from collections.abc import Iterator

import pytest
from limits.aio.strategies import SlidingWindowCounterRateLimiter

from appliance.auth.base import Principal
from appliance.metering import Outcome
from appliance.quotas import QuotaExceeded, Quotas, QuotaUnavailable, parse_policy
from appliance.quotas._memory import rate_item
from appliance.quotas._redis import RedisBackend
from appliance.quotas.errors import QuotaStorageError
from appliance.quotas.policy import Limit
from tests.services.redis import RedisServer

pytestmark = pytest.mark.integration

ALICE = Principal("alice", "alice-key")


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    server = RedisServer()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(autouse=True)
def clean(redis: RedisServer) -> None:
    redis.start() if redis.cli("PING") != "PONG" else None
    redis.flush()


def quotas(redis: RedisServer, text: str, fail_open: bool = False, lease_ttl: float = 30.0, timeout: float = 0.5) -> Quotas:
    backend = RedisBackend(redis.url, timeout=timeout, lease_ttl=lease_ttl)
    return Quotas(parse_policy(tomllib.loads(text)), backend, fail_open, timeout)


def run(scenario, *closing: Quotas | RedisBackend) -> None:  # type: ignore[no-untyped-def]
    """Start the Redis clients, run ``scenario()``, and close them on the same loop, whatever happens."""

    async def main() -> None:
        try:
            for item in closing:  # as the appliance does at start: connect, load the scripts
                await item.start()
            await scenario()
        finally:
            for item in closing:
                await item.aclose()

    asyncio.run(main())


def test_limits_hold_under_a_concurrent_burst(redis: RedisServer) -> None:
    q = quotas(redis, "[user]\nrequests_per_minute = 10\ntokens_per_minute = 1000")

    async def scenario() -> None:
        results = await asyncio.gather(*(q.admit(ALICE, 90, False) for _ in range(50)), return_exceptions=True)
        admitted = [r for r in results if not isinstance(r, BaseException)]
        assert len(admitted) == 10, results
        assert all(isinstance(r, QuotaExceeded) for r in results if isinstance(r, BaseException))
        # Tokens: 10 x 90 taken, and nothing of the 40 refused requests.
        rows = {row["limit"]: row for row in await q.snapshot(ALICE)}
        assert rows["tokens_per_minute"]["remaining"] == 100
        assert rows["requests_per_minute"]["remaining"] == 0

    run(scenario, q)


def test_adjust_works_on_the_keys_limits_uses(redis: RedisServer) -> None:
    """Refunds and charges land on the very counters limits' own strategy reads."""
    backend = RedisBackend(redis.url)
    limit = Limit("tokens_per_minute", "user", "u.layout", 1000, 60)
    reader = SlidingWindowCounterRateLimiter(backend._storage)

    async def remaining() -> int:
        return (await reader.get_window_stats(rate_item(limit), limit.name, limit.subject)).remaining

    async def scenario() -> None:
        assert (await backend.take(limit, 600))[:2] == (True, 400)
        await backend.adjust(limit, -450)
        assert await remaining() == 850
        await backend.adjust(limit, 300)
        assert await remaining() == 550
        await backend.adjust(limit, -5000)  # never below zero
        assert await remaining() == 1000
        await backend.adjust(limit, 2000)  # charged past the limit: it was used
        assert await remaining() == 0
        assert (await backend.take(limit, 1))[0] is False
        keys = redis.cli("KEYS", "*").split()
        assert keys == ["sluice:{sluice/tokens_per_minute/u.layout/1000/1/minute}"]

    run(scenario, backend)


def test_a_take_is_one_round_trip_and_agrees_with_limits_own_strategy(redis: RedisServer) -> None:
    """TAKE is limits' acquire and its window reading in one script: the same answers and counters."""
    backend = RedisBackend(redis.url)
    ours = Limit("tokens_per_minute", "user", "u.ours", 100, 60)
    theirs = Limit("tokens_per_minute", "user", "u.theirs", 100, 60)
    strategy = SlidingWindowCounterRateLimiter(backend._storage)
    item = rate_item(theirs)

    def scripts_run() -> int:
        stats = redis.cli("INFO", "commandstats")
        return sum(int(line.split("calls=")[1].split(",")[0]) for line in stats.splitlines() if line.startswith("cmdstat_eval"))

    async def scenario() -> None:
        for cost in (30, 30, 30, 30, 5, 50, 5, 1):
            before = scripts_run()
            taken, remaining, reset = await backend.take(ours, cost)
            assert scripts_run() - before == 1  # one script, one round trip
            assert taken == await strategy.hit(item, theirs.name, theirs.subject, cost=cost)
            stats = await strategy.get_window_stats(item, theirs.name, theirs.subject)
            assert remaining == stats.remaining
            # The same reset, but where limits reads a window in the millisecond it began: its
            # arithmetic then says "now", ours a window later (window_stats).
            apart = abs(reset - stats.reset_time)
            assert min(apart, abs(apart - 60)) < 0.5
            assert reset > time.time() + 1
        # limits' own strategy reads what TAKE wrote.
        assert (await strategy.get_window_stats(rate_item(ours), ours.name, ours.subject)).remaining == 0

    run(scenario, backend)


def test_reconciliation_with_redis(redis: RedisServer) -> None:
    q = quotas(redis, "reserve_tokens = 500\n[user]\ntokens_per_minute = 5000\ntokens_per_day = 50000")

    async def used() -> dict[str, int]:
        return {str(r["limit"]): int(r["amount"]) - int(r["remaining"]) for r in await q.snapshot(ALICE)}  # type: ignore[call-overload]

    async def scenario() -> None:
        plain = await q.admit(ALICE, 300, False)
        streamed = await q.admit(ALICE, 200, False)
        sealed = await q.admit(ALICE, 999, True)  # sealed: max_tokens unseen, reserve_tokens instead
        assert await used() == {"tokens_per_minute": 1000, "tokens_per_day": 1000}
        await q.settle(plain, Outcome(200, 20, 30))
        await q.settle(streamed, Outcome(200, 20, 400, first_token=0.1))
        await q.settle(sealed, Outcome(200, 5, 5, sealed=True))
        assert await used() == {"tokens_per_minute": 480, "tokens_per_day": 480}

    run(scenario, q)


def test_concurrency_leases_are_shared_and_released(redis: RedisServer) -> None:
    text = "[user]\nconcurrent_requests = 3"
    one, two = quotas(redis, text), quotas(redis, text)  # two replicas

    async def scenario() -> None:
        grants = [await one.admit(ALICE, 1, False), await two.admit(ALICE, 1, False), await one.admit(ALICE, 1, False)]
        for replica in (one, two):
            with pytest.raises(QuotaExceeded, match="concurrent_requests_exceeded"):
                await replica.admit(ALICE, 1, False)
        await one.settle(grants[0], Outcome(200, 1, 1))
        await two.admit(ALICE, 1, False)
        limit = one.policy.plan(ALICE).slots[0]
        assert await one.backend.in_use(limit) == 3  # type: ignore[attr-defined]

    run(scenario, one, two)


def test_a_dead_replicas_leases_expire_and_a_live_ones_are_renewed(redis: RedisServer) -> None:
    text = "[user]\nconcurrent_requests = 2"
    dead, live = quotas(redis, text, lease_ttl=1.0), quotas(redis, text, lease_ttl=1.0)

    async def scenario() -> None:
        await live.start()  # renews its leases every lease_ttl / 3
        try:
            await dead.admit(ALICE, 1, False)  # never renewed, never released: a crashed replica
            held = await live.admit(ALICE, 1, False)
            with pytest.raises(QuotaExceeded):
                await live.admit(ALICE, 1, False)
            await asyncio.sleep(2.0)
            limit = live.policy.plan(ALICE).slots[0]
            assert await live.backend.in_use(limit) == 1  # type: ignore[attr-defined]
            await live.admit(ALICE, 1, False)  # the dead replica's slot is free again
            await live.settle(held, Outcome(200))
        finally:
            await dead.aclose()  # (never started: it renewed nothing)

    run(scenario, live)


def test_redis_down_fails_closed_then_recovers(redis: RedisServer) -> None:
    q = quotas(redis, "[user]\nrequests_per_minute = 100\nconcurrent_requests = 5")

    async def scenario() -> None:
        grant = await q.admit(ALICE, 1, False)
        redis.stop()
        started = time.monotonic()
        with pytest.raises(QuotaUnavailable):
            await q.admit(ALICE, 1, False)
        assert time.monotonic() - started < 1.0
        await q.settle(grant, Outcome(200, 1, 1))  # logged, not raised
        redis.start()
        for _ in range(50):
            try:
                await q.admit(ALICE, 1, False)
                return
            except QuotaUnavailable:
                await asyncio.sleep(0.1)
        raise AssertionError("no recovery after Redis came back")

    run(scenario, q)


def test_redis_down_fails_open_when_configured(redis: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    q = quotas(redis, "[user]\nrequests_per_minute = 1", fail_open=True)

    async def scenario() -> None:
        await q.admit(ALICE, 1, False)
        with pytest.raises(QuotaExceeded):
            await q.admit(ALICE, 1, False)  # up: the limit holds
        redis.stop()
        for _ in range(3):
            grant = await q.admit(ALICE, 1, False)  # down: admitted, unmetered
            assert grant.unmetered
            await q.settle(grant, Outcome(200, 1, 1))

    run(scenario, q)
    assert caplog.text.count("unsafe_unmetered_admission") == 3


def test_a_hung_redis_times_out(redis: RedisServer) -> None:
    """A Redis that accepts but never answers (SIGSTOP) costs at most the storage timeout."""
    q = quotas(redis, "[user]\nrequests_per_minute = 100", timeout=0.3)
    pid = int(redis.pidfile.read_text())

    async def scenario() -> None:
        await q.admit(ALICE, 1, False)
        os.kill(pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(QuotaUnavailable):
                await q.admit(ALICE, 1, False)
            assert time.monotonic() - started < 1.5
        finally:
            os.kill(pid, signal.SIGCONT)

    run(scenario, q)


def test_storage_errors_are_ours(redis: RedisServer) -> None:
    backend = RedisBackend(f"async+redis://127.0.0.1:{redis.port}/0", timeout=0.3)
    limit = Limit("requests_per_minute", "user", "u.x", 5, 60)
    redis.stop()

    async def scenario() -> None:
        with pytest.raises(QuotaStorageError):
            await backend.take(limit, 1)

    run(scenario, backend)
