"""``GET /v1/sealed/keys`` without a gate process per call: a cached key configuration, a per-address limit.

The route is public (an OHTTP key configuration is), so anyone could call it
in a loop; in exec mode each call used to start a gate process on the
cluster.  :class:`KeyConfigCache` keeps the gates' answer for
:data:`KEYS_TTL` seconds (the ``max-age`` clients are told), fetches it once
for all concurrent callers, and is marked stale when a gate answers a sealed
request with ``sealed_invalid`` (a client may hold a key the gate has rotated
away) -- at most once per :data:`MIN_REFRESH` seconds, so that bad sealed
requests cannot turn into a refresh per request.

:class:`AddressLimiter` allows each client address :data:`PER_ADDRESS` calls
per :data:`WINDOW` seconds, and remembers at most :data:`MAX_ADDRESSES`
addresses (the oldest are forgotten first).  Behind a load balancer every
caller shares its address: the limit is generous because the cache makes a
call cheap; it bounds the CPU a single flooder takes.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Final

import orjson

from policy.errors import SluiceError
from policy.grammar import Keys

from ..catalog import ClusterSet

__all__ = ["KeyConfigCache", "AddressLimiter", "KEYS_TTL", "MIN_REFRESH", "PER_ADDRESS", "WINDOW", "MAX_ADDRESSES"]

# Seconds a fetched key configuration is served (and the max-age clients are told), by default
# ([server] sealed_keys_ttl).  Keep it well below the gate's rotation overlap: a client that
# fetched the old configuration just before a rotation still has the overlap to use it.
KEYS_TTL: Final = 60.0
# Seconds between refreshes forced by sealed_invalid answers.
MIN_REFRESH: Final = 30.0
# Seconds an empty answer (no gate reachable, no keys) is remembered before asking again.
EMPTY_TTL: Final = 5.0

PER_ADDRESS: Final = 60
WINDOW: Final = 60.0
MAX_ADDRESSES: Final = 10_000


async def fetch_configs(clusters: ClusterSet) -> bytes:
    """Every cluster's key configurations, concatenated; clusters that fail are skipped."""
    configs = b""
    for name in clusters.catalogs:
        try:
            reply = await clusters.transport(name).request(Keys(), b"")
            document = orjson.loads(await reply.read())
            configs += base64.b64decode(document["keys"], validate=True)
        except (SluiceError, ValueError, KeyError, TypeError, binascii.Error):
            continue
    return configs


class KeyConfigCache:
    """The gates' key configurations, fetched at most once per TTL (single-flight)."""

    def __init__(
        self, fetch: Callable[[], Awaitable[bytes]], ttl: float = KEYS_TTL, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._fetch = fetch
        self.ttl = ttl
        self._clock = clock
        self._configs = b""
        self._expires = float("-inf")
        self._last_forced = float("-inf")
        self._lock = asyncio.Lock()
        self.fetches = 0

    async def get(self) -> bytes:
        if self._clock() < self._expires:
            return self._configs
        async with self._lock:
            if self._clock() < self._expires:
                return self._configs
            configs = await self._fetch()
            self.fetches += 1
            self._configs = configs
            self._expires = self._clock() + (self.ttl if configs else EMPTY_TTL)
            return configs

    def stale(self) -> None:
        """A gate did not know a sealed request's key: fetch again on the next call (rate-limited)."""
        now = self._clock()
        if now - self._last_forced >= MIN_REFRESH:
            self._last_forced = now
            self._expires = float("-inf")


class AddressLimiter:
    """At most ``limit`` calls per ``window`` seconds per client address (a fixed window, bounded memory)."""

    def __init__(
        self,
        limit: int = PER_ADDRESS,
        window: float = WINDOW,
        max_addresses: int = MAX_ADDRESSES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._limit = limit
        self._window = window
        self._max = max_addresses
        self._clock = clock
        self._seen: OrderedDict[str, tuple[float, int]] = OrderedDict()

    def hit(self, address: str) -> float | None:
        """None when allowed; else the seconds until ``address`` may call again."""
        now = self._clock()
        start, count = self._seen.pop(address, (now, 0))
        if now - start >= self._window:
            start, count = now, 0
        count += 1
        self._seen[address] = (start, count)
        while len(self._seen) > self._max:
            self._seen.popitem(last=False)
        if count > self._limit:
            return start + self._window - now
        return None
