"""The sealed key configuration is cached (one fetch per TTL, single-flight) and its route limited per address."""

from __future__ import annotations

import asyncio

from appliance.api.sealed_keys import MIN_REFRESH, AddressLimiter, KeyConfigCache


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_reject_a_fetch_per_call() -> None:
    clock = Clock()

    async def fetch() -> bytes:
        await asyncio.sleep(0.01)
        return b"config"

    async def scenario() -> None:
        cache = KeyConfigCache(fetch, ttl=300, clock=clock)
        assert await asyncio.gather(*(cache.get() for _ in range(100))) == [b"config"] * 100
        assert cache.fetches == 1
        clock.now += 299
        await cache.get()
        assert cache.fetches == 1
        clock.now += 2
        await cache.get()
        assert cache.fetches == 2

    asyncio.run(scenario())


def test_unknown_key_answer_refreshes_at_most_so_often() -> None:
    clock = Clock()

    async def fetch() -> bytes:
        return b"config"

    async def scenario() -> None:
        cache = KeyConfigCache(fetch, ttl=300, clock=clock)
        await cache.get()
        cache.stale()
        await cache.get()
        assert cache.fetches == 2
        cache.stale()  # again at once: ignored
        await cache.get()
        assert cache.fetches == 2
        clock.now += MIN_REFRESH
        cache.stale()
        await cache.get()
        assert cache.fetches == 3

    asyncio.run(scenario())


def test_empty_answer_is_retried_soon() -> None:
    clock = Clock()
    answers = [b"", b"config"]

    async def fetch() -> bytes:
        return answers.pop(0)

    async def scenario() -> None:
        cache = KeyConfigCache(fetch, ttl=300, clock=clock)
        assert await cache.get() == b""
        clock.now += 10
        assert await cache.get() == b"config"

    asyncio.run(scenario())


def test_reject_unlimited_calls_from_one_address() -> None:
    clock = Clock()
    limiter = AddressLimiter(limit=3, window=60, max_addresses=2, clock=clock)
    assert [limiter.hit("a") for _ in range(3)] == [None] * 3
    wait = limiter.hit("a")
    assert wait is not None and 0 < wait <= 60
    assert limiter.hit("b") is None  # another address has its own window
    clock.now += 60
    assert limiter.hit("a") is None
    for address in ("c", "d", "e"):
        limiter.hit(address)
    assert len(limiter._seen) == 2  # bounded memory
