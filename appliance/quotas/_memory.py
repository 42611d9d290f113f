"""Where the counters live: the interface, and the in-memory store of a single process.

Rate limits (requests and tokens) are ``limits``' sliding window counters:
O(1) per check whatever the limit, atomic check-and-take, and with a cost so
that a request can take many tokens at once.  Giving tokens back (or charging
more) when the gate reports the real usage adjusts the same counters.
Concurrency limits are counts of leases.

The in-memory store uses ``limits``' synchronous memory storage through its
published methods: no await inside, so a check costs microseconds and never
interleaves with another on the event loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from math import floor, inf
from typing import Any, Final, Protocol

from limits import (
    RateLimitItem,
    RateLimitItemPerDay,
    RateLimitItemPerMinute,
    RateLimitItemPerSecond,
)
from limits.storage import MemoryStorage
from limits.strategies import SlidingWindowCounterRateLimiter

from .policy import Limit

__all__ = ["Backend", "MemoryBackend", "rate_item", "window_stats"]

# Counter keys remembered per limit; past this many the cache starts over.
MAX_KEYS_CACHED: Final = 100_000

# The namespace of every counter key; keys are ``NAMESPACE/<limit>/<subject>/<amount>/...``.
NAMESPACE: Final = "sluice"


class Backend(Protocol):
    """Counters for :class:`~appliance.quotas.quotas.Quotas`.  Failures raise QuotaStorageError."""

    async def start(self) -> None: ...

    async def aclose(self) -> None: ...

    async def take(self, limit: Limit, cost: int) -> tuple[bool, int, float]:
        """Take ``cost`` from a rate limit if it fits, atomically.

        Returns whether it was taken, what is left (after taking), and when the
        window is whole again (epoch seconds).
        """
        ...

    async def adjust(self, limit: Limit, delta: int) -> None:
        """Charge ``delta`` more (> 0) or give ``-delta`` back (< 0), never below zero."""
        ...

    async def remaining(self, limit: Limit) -> tuple[int, float]:
        """What is left of a rate limit, and the time (epoch seconds) it is whole again."""
        ...

    async def acquire(self, limit: Limit) -> str | None:
        """A lease on one of ``limit.amount`` concurrency slots, or None when all are taken."""
        ...

    async def release(self, limit: Limit, lease: str) -> None: ...


_ITEMS: dict[tuple[int, int], RateLimitItem] = {}


def rate_item(limit: Limit) -> RateLimitItem:
    """The ``limits`` item for ``limit`` (cached: items are immutable)."""
    found = _ITEMS.get((limit.amount, limit.window))
    if found is None:
        if limit.window == 60:
            found = RateLimitItemPerMinute(limit.amount, namespace=NAMESPACE)
        elif limit.window == 86_400:
            found = RateLimitItemPerDay(limit.amount, namespace=NAMESPACE)
        else:
            found = RateLimitItemPerSecond(limit.amount, limit.window, namespace=NAMESPACE)
        _ITEMS[(limit.amount, limit.window)] = found
    return found


def window_stats(
    limit: int, expiry: int, previous: int, previous_ttl: float, current: int, current_ttl: float, now: float
) -> tuple[int, float]:
    """What is left of a sliding window and when it is whole again (epoch seconds), from its two
    counts and their time to live (seconds): ``SlidingWindowCounterRateLimiter.get_window_stats``,
    except at a step's very end (a remainder of exactly 0), which counts as the whole next step:
    a count read in the script that made it (Redis, :data:`~._redis.TAKE`) has exactly twice the
    window to live, and is whole again a window later, not now."""
    remaining = max(limit - floor(previous * previous_ttl / expiry + current), 0)
    if not (previous or current):
        return remaining, now
    step = expiry / previous if previous else inf
    previous_reset_in = (previous_ttl % step or step) if previous else inf
    current_reset_in = (current_ttl % expiry or expiry) if current else inf
    return remaining, now + min(previous_reset_in, current_reset_in)


def counter_key(limit: Limit) -> str:
    """The storage key ``limits`` uses for ``limit``'s counter."""
    return rate_item(limit).key_for(limit.name, limit.subject)


class _LoopMemoryStorage(MemoryStorage):
    """``limits``' memory storage, with the steps the quotas need done on the event loop's thread.

    The same counters as ``limits``' own sliding window (``storage``: the count of each
    window, under the keys ``sliding_window_keys`` names; ``expirations``: when each count
    lapses) and the same arithmetic as its ``acquire_sliding_window_entry``, ``incr``,
    ``decr`` and ``SlidingWindowCounterRateLimiter.get_window_stats``, so that ``limits``'
    own strategies read and write the same counters: ``tests/appliance/quotas/test_quotas.py``
    holds :meth:`take` and :meth:`adjust` to that strategy on the same storage (and fails
    if a ``limits`` release moves these attributes).  What only threads need is left out:
    a lock per key, and an expiry timer thread started again (every 10 ms) by each
    ``incr``; through those, one take cost 14.6 microseconds, and here 4.9 (one
    microbenchmark, the same loaded machine).  Lapsed
    counts are dropped when read, and by :meth:`sweep`, which :class:`MemoryBackend`
    calls every ``SWEEP_EVERY`` seconds.  Used from one thread (the event loop's) only.
    """

    def __init__(self) -> None:
        super().__init__()
        # Per counter key: the window index its two window keys were made for, and the keys.
        self._window_keys: dict[str, tuple[int, str, str]] = {}

    def _windows(self, key: str, expiry: int, now: float) -> tuple[str, str]:
        """``sliding_window_keys(key, expiry, now)``, made once per window."""
        index = int(now / expiry)
        found = self._window_keys.get(key)
        if found is None or found[0] != index:
            if len(self._window_keys) > MAX_KEYS_CACHED:
                self._window_keys.clear()
            previous, current = self.sliding_window_keys(key, expiry, now)
            found = self._window_keys[key] = (index, previous, current)
        return found[1], found[2]

    def _count(self, key: str, now: float) -> int:
        """``get``: the count, or 0 once it lapsed (and then it is dropped)."""
        expires = self.expirations.get(key)
        if expires is None:
            return 0
        if expires <= now:
            self.storage.pop(key, None)
            del self.expirations[key]
            return 0
        return self.storage.get(key, 0)

    def take(self, key: str, limit: int, expiry: int, cost: int) -> tuple[bool, int, float]:
        """``acquire_sliding_window_entry``, then the window's stats as
        ``SlidingWindowCounterRateLimiter.get_window_stats`` gives them.

        Returns whether ``cost`` was taken, what is left, and when the window is whole again.
        """
        now = time.time()
        previous_key, current_key = self._windows(key, expiry, now)
        previous = self._count(previous_key, now)
        current = self._count(current_key, now)
        previous_ttl = (1 - (((now - expiry) / expiry) % 1)) * expiry if previous else 0.0
        taken = cost <= limit and floor(previous * previous_ttl / expiry + current) + cost <= limit
        if taken:
            current = self.storage[current_key] = current + cost
            if current == cost:  # a new count: it lapses two windows from now (``incr``)
                self.expirations[current_key] = now + 2 * expiry
        current_ttl = (1 - ((now / expiry) % 1)) * expiry + expiry
        return (taken, *window_stats(limit, expiry, previous, previous_ttl, current, current_ttl, now))

    def adjust(self, key: str, expiry: int, delta: int) -> None:
        """Charge the current window ``delta`` more, or give ``-delta`` back from the current
        and then the previous window, never below zero."""
        now = time.time()
        previous_key, current_key = self._windows(key, expiry, now)
        if delta > 0:
            current = self.storage[current_key] = self._count(current_key, now) + delta
            if current == delta:
                self.expirations[current_key] = now + 2 * expiry
            return
        give = -delta
        for part in (current_key, previous_key):
            held = self._count(part, now)
            taken = min(give, held)
            if taken > 0:
                self.storage[part] = held - taken
                give -= taken
                if give == 0:
                    return

    def sweep(self) -> None:
        self._window_keys.clear()
        now = time.time()
        for key in list(self.expirations):
            self._count(key, now)


# Seconds between sweeps of expired counters in memory.
SWEEP_EVERY: Final = 60.0


class MemoryBackend:
    """The single-process store: correct only while one appliance process serves."""

    def __init__(self) -> None:
        self._storage = _LoopMemoryStorage()
        self._limiter = SlidingWindowCounterRateLimiter(self._storage)
        self._slots: dict[str, int] = {}
        self._keys: dict[Limit, str] = {}
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self._sweeper is None:
            self._sweeper = asyncio.create_task(self._sweep_forever())

    async def aclose(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
            self._sweeper = None

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_EVERY)
            self._storage.sweep()

    def _key(self, limit: Limit) -> str:
        key = self._keys.get(limit)
        if key is None:
            if len(self._keys) > MAX_KEYS_CACHED:
                self._keys.clear()
            key = self._keys[limit] = counter_key(limit)
        return key

    # Synchronous operations (the in-memory store never waits); the async ones wrap them.
    def take_now(self, limit: Limit, cost: int) -> tuple[bool, int, float]:
        return self._storage.take(self._key(limit), limit.amount, limit.window, cost)

    def adjust_now(self, limit: Limit, delta: int) -> None:
        self._storage.adjust(self._key(limit), limit.window, delta)

    def remaining_now(self, limit: Limit) -> tuple[int, float]:
        stats = self._limiter.get_window_stats(rate_item(limit), limit.name, limit.subject)
        return stats.remaining, stats.reset_time

    def acquire_now(self, limit: Limit) -> str | None:
        key = self._key(limit)
        used = self._slots.get(key, 0)
        if used >= limit.amount:
            return None
        self._slots[key] = used + 1
        return "m"

    def release_now(self, limit: Limit, lease: str) -> None:
        key = self._key(limit)
        used = self._slots.get(key, 0) - 1
        if used > 0:
            self._slots[key] = used
        else:
            self._slots.pop(key, None)

    def now_operations(self) -> dict[str, Callable[..., Any]]:
        """The synchronous operations by the names :class:`Backend` gives their async forms."""
        return {
            "take": self.take_now,
            "adjust": self.adjust_now,
            "remaining": self.remaining_now,
            "acquire": self.acquire_now,
            "release": self.release_now,
        }

    async def take(self, limit: Limit, cost: int) -> tuple[bool, int, float]:
        return self.take_now(limit, cost)

    async def adjust(self, limit: Limit, delta: int) -> None:
        self.adjust_now(limit, delta)

    async def remaining(self, limit: Limit) -> tuple[int, float]:
        return self.remaining_now(limit)

    async def acquire(self, limit: Limit) -> str | None:
        return self.acquire_now(limit)

    async def release(self, limit: Limit, lease: str) -> None:
        self.release_now(limit, lease)

    def in_use(self, limit: Limit) -> int:
        """Concurrency slots taken (for tests and metrics)."""
        return self._slots.get(self._key(limit), 0)
