"""The shared store of several appliance replicas: Redis.

Every check is one atomic server-side step, so a limit holds across replicas
(it is not multiplied by their number):

- rate limits are ``limits``' Redis sliding window counters: a take is
  :data:`TAKE`, ``limits``' own acquire script followed by its reading of the
  window, in one round trip (``limits.aio`` needs two: a hit, then the window's
  stats); the snapshot reads through ``limits.aio`` itself;
- giving tokens back or charging more is :data:`ADJUST`, a script on the same
  keys (it relies on the key layout of ``limits``' ``RedisStorage``, 4.x-5.x:
  ``<prefix>:{<key>}`` for the current window and ``<prefix>:{<key>}/-1`` for
  the previous one; ``tests/integration/test_quotas_redis.py`` holds it to that);
- a concurrency limit is a sorted set of leases scored by their expiry on the
  Redis clock (:data:`ACQUIRE`).  Each replica renews its own leases every
  ``lease_ttl / 3`` seconds; the leases of a replica that dies expire after
  ``lease_ttl``, so a crash cannot hold slots for longer than that.

Any failure (refused, timed out, dropped) raises :class:`QuotaStorageError`;
what happens then is the caller's configured choice.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from typing import Any, Final

from coredis.retry import NoRetryPolicy
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from limits.errors import ConfigurationError, StorageError
from limits.storage import storage_from_string

from policy.events import event_line

from ..auth.secret import Secret
from ._memory import MAX_KEYS_CACHED, counter_key, rate_item, window_stats
from .errors import QuotaStorageError
from .policy import Limit

__all__ = ["KEY_PREFIX", "RedisBackend"]

log = logging.getLogger("sluice.quotas")

# Every key Sluice writes to Redis starts with this.
KEY_PREFIX: Final = "sluice"

# Milliseconds on the Redis server's own clock, so that replicas' clocks do not matter.
_NOW: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS[1]: the lease set.  ARGV: limit, lease ttl (ms), lease id.  Returns 1 if taken.
ACQUIRE: Final = (
    _NOW
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
    return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 2)
return 1
"""
)

# KEYS[1]: the lease set.  ARGV: lease ttl (ms), lease ids...  Extends the leases still there.
RENEW: Final = (
    _NOW
    + """
local ttl = tonumber(ARGV[1])
for i = 2, #ARGV do
    redis.call('ZADD', KEYS[1], 'XX', now + ttl, ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], ttl * 2)
return 0
"""
)

# KEYS: previous window, current window.  ARGV: limit, window (s), cost.
# limits' acquire_sliding_window.lua (shift the windows, take `cost` if the weighted count
# leaves room), then what its sliding_window.lua reads: {taken, previous count, previous ttl
# (ms), current count, current ttl (ms)}, from which the caller computes what is left.
TAKE: Final = """
local limit = tonumber(ARGV[1])
local expiry = tonumber(ARGV[2]) * 1000
local amount = tonumber(ARGV[3])
local current_ttl = tonumber(redis.call('pttl', KEYS[2]))
if current_ttl > 0 and current_ttl < expiry then
    redis.call('rename', KEYS[2], KEYS[1])
    redis.call('set', KEYS[2], 0, 'PX', current_ttl + expiry)
end
local previous_count = tonumber(redis.call('get', KEYS[1])) or 0
local previous_ttl = math.max(tonumber(redis.call('pttl', KEYS[1])) or 0, 0)
local current_count = tonumber(redis.call('get', KEYS[2])) or 0
local taken = 0
if amount <= limit and math.floor(previous_count * previous_ttl / expiry) + current_count + amount <= limit then
    if redis.call('exists', KEYS[2]) == 1 then
        current_count = redis.call('incrby', KEYS[2], amount)
    else
        redis.call('set', KEYS[2], amount, 'PX', expiry * 2)
        current_count = amount
    end
    taken = 1
end
current_ttl = math.max(tonumber(redis.call('pttl', KEYS[2])) or 0, 0)
return {taken, previous_count, previous_ttl, current_count, current_ttl}
"""

# KEYS: previous window, current window.  ARGV: window (s), delta.
# Shifts the windows first exactly as limits' own scripts do, then charges the
# current window (delta > 0) or gives back from the current and then the
# previous window, never below zero (delta < 0).
ADJUST: Final = """
local expiry = tonumber(ARGV[1]) * 1000
local delta = tonumber(ARGV[2])
local current_ttl = tonumber(redis.call('pttl', KEYS[2]))
if current_ttl > 0 and current_ttl < expiry then
    redis.call('rename', KEYS[2], KEYS[1])
    redis.call('set', KEYS[2], 0, 'PX', current_ttl + expiry)
end
if delta > 0 then
    if redis.call('exists', KEYS[2]) == 1 then
        redis.call('incrby', KEYS[2], delta)
    else
        redis.call('set', KEYS[2], delta, 'PX', expiry * 2)
    end
    return delta
end
local give = -delta
for _, key in ipairs({KEYS[2], KEYS[1]}) do
    if give <= 0 then break end
    local held = tonumber(redis.call('get', key)) or 0
    local taken = math.min(held, give)
    if taken > 0 then
        redis.call('decrby', key, taken)
        give = give - taken
    end
end
return -delta - give
"""


class RedisBackend:
    """Counters and leases in Redis at ``uri`` (``async+redis://host:port/db``)."""

    def __init__(self, uri: str, password: Secret | None = None, timeout: float = 0.5, lease_ttl: float = 30.0) -> None:
        # No retries inside the client: a script whose answer was lost may have run, and running
        # it again would count twice.  A failure is reported, and the configured choice applies.
        options: dict[str, Any] = {"connect_timeout": timeout, "stream_timeout": timeout, "retry_policy": NoRetryPolicy()}
        if password is not None:
            options["password"] = password.reveal()  # the one place it is used: the client's options
        storage: Any  # a Redis storage: `bridge` (its client) is not on the base class limits types it as
        try:
            storage = storage_from_string(uri, wrap_exceptions=True, key_prefix=KEY_PREFIX, **options)
        except ConfigurationError as exc:
            raise ValueError(f"quota storage {uri.split('@')[-1]!r}: {exc}") from None
        self._storage: Any = storage
        self._limiter = SlidingWindowCounterRateLimiter(storage)
        connection = storage.bridge.get_connection()
        self._acquire = connection.register_script(ACQUIRE)
        self._renew = connection.register_script(RENEW)
        self._adjust = connection.register_script(ADJUST)
        self._take = connection.register_script(TAKE)
        self._connection = connection
        self._timeout = timeout
        self._lease_ms = int(lease_ttl * 1000)
        self._renew_every = lease_ttl / 3
        self._leases: dict[str, set[str]] = {}
        self._windows: dict[Limit, tuple[str, str]] = {}
        self._renewer: asyncio.Task[None] | None = None
        # Every exception the client can raise for a storage that is not there.
        exceptions = storage.bridge.base_exceptions
        self._errors: tuple[type[BaseException], ...] = (
            StorageError,
            OSError,
            TimeoutError,
            *(exceptions if isinstance(exceptions, tuple) else (exceptions,)),
        )

    async def start(self) -> None:
        """Connect and load the scripts before the first request (then start renewing leases).

        Done once here rather than by the first burst of requests: many first calls at once
        on a client that is still connecting can fail.  Redis being down at start is not
        fatal: each request then meets the configured choice.
        """
        bridge = self._storage.bridge
        scripts = (self._acquire, self._renew, self._adjust, self._take, bridge.lua_sliding_window)
        try:
            async with asyncio.timeout(max(2.0, 4 * self._timeout)):
                await self._connection.ping()
                for script in scripts:
                    await self._connection.script_load(script.script)
        except self._errors + (TimeoutError,) as exc:
            log.warning(event_line("quota_storage_unreachable_at_start", error=type(exc).__name__))
        if self._renewer is None:
            self._renewer = asyncio.create_task(self._renew_forever())

    async def aclose(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            await asyncio.gather(self._renewer, return_exceptions=True)
            self._renewer = None
        self._connection.connection_pool.disconnect()
        await asyncio.sleep(0)  # let the closed transports finish closing on this loop

    def _key(self, name: str) -> str:
        return f"{KEY_PREFIX}:{name}"

    def _window_keys(self, limit: Limit) -> list[str]:
        """The previous and the current window's keys, as ``limits``' Redis storage names them (remembered)."""
        found = self._windows.get(limit)
        if found is None:
            if len(self._windows) > MAX_KEYS_CACHED:
                self._windows.clear()
            current = self._key("{" + counter_key(limit) + "}")
            found = self._windows[limit] = (current + "/-1", current)
        return list(found)

    async def _call(self, coro: Any) -> Any:
        try:
            return await coro
        except self._errors as exc:
            raise QuotaStorageError(type(exc).__name__) from None

    async def take(self, limit: Limit, cost: int) -> tuple[bool, int, float]:
        window = limit.window
        taken, previous, previous_ttl, current, current_ttl = await self._call(
            self._take.execute(self._window_keys(limit), [limit.amount, window, cost])
        )
        stats = window_stats(
            limit.amount, window, int(previous), int(previous_ttl) / 1000, int(current), int(current_ttl) / 1000, time.time()
        )
        return bool(taken), *stats

    async def adjust(self, limit: Limit, delta: int) -> None:
        await self._call(self._adjust.execute(self._window_keys(limit), [limit.window, delta]))

    async def remaining(self, limit: Limit) -> tuple[int, float]:
        stats = await self._call(self._limiter.get_window_stats(rate_item(limit), limit.name, limit.subject))
        return stats.remaining, stats.reset_time

    def _lease_key(self, limit: Limit) -> str:
        return self._key(f"leases/{limit.name}/{limit.subject}")

    async def acquire(self, limit: Limit) -> str | None:
        lease = secrets.token_hex(8)
        key = self._lease_key(limit)
        taken = await self._call(self._acquire.execute([key], [limit.amount, self._lease_ms, lease]))
        if not taken:
            return None
        self._leases.setdefault(key, set()).add(lease)
        return lease

    async def release(self, limit: Limit, lease: str) -> None:
        key = self._lease_key(limit)
        held = self._leases.get(key)
        if held is not None:
            held.discard(lease)
            if not held:
                del self._leases[key]
        await self._call(self._connection.zrem(key, [lease]))

    async def in_use(self, limit: Limit) -> int:
        """Live leases on ``limit`` across every replica (for tests and metrics)."""
        key = self._lease_key(limit)
        now = await self._call(self._connection.time())
        now_ms = int(now.timestamp() * 1000) if hasattr(now, "timestamp") else int(now[0]) * 1000
        return int(await self._call(self._connection.zcount(key, now_ms, "+inf")))

    async def renew(self) -> None:
        """Extend every lease this replica holds (done every ``lease_ttl / 3`` seconds)."""
        for key, leases in list(self._leases.items()):
            if leases:
                await self._call(self._renew.execute([key], [self._lease_ms, *leases]))

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(self._renew_every)
            try:
                await self.renew()
            except QuotaStorageError as exc:
                log.warning(event_line("quota_lease_renewal_failed", error=str(exc)))
