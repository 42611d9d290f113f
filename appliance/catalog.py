"""The models the clusters serve, as last reported by each gate's ``models`` command.

Each cluster's listing is cached for a short time: the API checks every
request's model against the merged listing (404 before any cluster work),
routes it to the cluster that serves it, and ``/v1/models`` lists the union.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from policy.errors import BackendFailed, SluiceError
from policy.grammar import Models

from .transport.base import GateTransport
from .transport.replies import produced_by

__all__ = ["MODEL_STATES", "ModelInfo", "Catalog", "ClusterSet", "model_info"]

log = logging.getLogger("sluice.catalog")

# How long a listing is trusted.  A model that appears is usable within this
# time; readiness changes are the gate's business, not the catalog's.
CATALOG_TTL: Final = 2.0


# What a caller of a model can expect now (the gate's listing says; ``cluster/routing.py``).
MODEL_STATES: Final = frozenset({"ready", "starting", "scaled_to_zero", "unavailable"})


@dataclass(frozen=True, slots=True)
class ModelInfo:
    id: str
    ready: bool
    routes: frozenset[str]
    cluster: str
    # From gates that report it; an older gate's listing gives ready or unavailable and zero counts.
    status: str = "unavailable"
    instances_ready: int = 0
    instances_starting: int = 0
    held: int = 0  # requests waiting in the gates' hold queue for an instance
    gate_in_flight: int = 0
    # What the gate says produced the model's answers (the END frame says it per answer).
    produced_by: tuple[tuple[str, str], ...] = ()
    # Seconds until the model is likely ready, when it is not (cluster/scheduler/availability.py).
    estimated_wait: int | None = None


# A count in a listing above this is not believed (it would be a broken gate, not a busy one).
MAX_COUNT: Final = 1_000_000

# The longest wait passed on to clients (a day): a gate's estimate beyond it is not news.
MAX_WAIT: Final = 86400


def _count(item: Mapping[str, object], *path: str, most: int = MAX_COUNT) -> int | None:
    """A non-negative integer up to ``most`` at ``path`` in ``item``, or None (absent, or not plausible)."""
    value: object = item
    for key in path:
        value = value.get(key) if isinstance(value, Mapping) else None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= most:
        return None
    return value


def model_info(item: Mapping[str, object], cluster: str) -> ModelInfo:
    """One entry of a gate's ``models`` listing; KeyError, TypeError or ValueError when it is not one."""
    ready = bool(item["ready"])
    status = item.get("status", "ready" if ready else "unavailable")
    if status not in MODEL_STATES:
        raise ValueError("model state")
    return ModelInfo(
        str(item["id"]),
        ready,
        # frozenset() of whatever the listing holds: TypeError when it is not a list, as documented above.
        frozenset(item["routes"]),  # type: ignore[call-overload]
        cluster,
        str(status),
        _count(item, "instances", "ready") or 0,
        _count(item, "instances", "starting") or 0,
        _count(item, "held") or 0,
        _count(item, "in_flight") or 0,
        produced_by=tuple(sorted(produced_by(dict(item)).items())),
        estimated_wait=_count(item, "estimated_wait", most=MAX_WAIT),
    )


class Catalog:
    """One cluster's model listing, cached for ``ttl`` seconds."""

    def __init__(self, name: str, transport: GateTransport, ttl: float = CATALOG_TTL) -> None:
        self.name = name
        self.transport = transport
        self._ttl = ttl
        self._models: dict[str, ModelInfo] = {}
        self._fetched = float("-inf")
        self._lock = asyncio.Lock()

    async def models(self) -> dict[str, ModelInfo]:
        if time.monotonic() - self._fetched < self._ttl:
            return self._models
        async with self._lock:
            if time.monotonic() - self._fetched >= self._ttl:
                await self.refresh()
        return self._models

    async def refresh(self) -> None:
        reply = await self.transport.request(Models(), b"")
        data = await reply.read()
        try:
            listing = json.loads(data)
            models = {item["id"]: model_info(item, self.name) for item in listing["data"]}
        except (ValueError, KeyError, TypeError):
            raise BackendFailed("bad_model_listing") from None
        self._models = models
        self._fetched = time.monotonic()


class ClusterSet:
    """Every configured cluster: one transport each, listings merged by model."""

    def __init__(self, transports: Mapping[str, GateTransport], ttl: float = CATALOG_TTL) -> None:
        if not transports:
            raise ValueError("at least one cluster")
        self.catalogs = {name: Catalog(name, transport, ttl) for name, transport in transports.items()}

    @classmethod
    def single(cls, transport: GateTransport, name: str = "local") -> ClusterSet:
        return cls({name: transport})

    def transport(self, cluster: str) -> GateTransport:
        return self.catalogs[cluster].transport

    async def start(self) -> None:
        for catalog in self.catalogs.values():
            await catalog.transport.start()

    async def aclose(self) -> None:
        await asyncio.gather(*(c.transport.aclose() for c in self.catalogs.values()), return_exceptions=True)

    async def models(self) -> dict[str, ModelInfo]:
        """The union of all clusters' models; a model on several clusters goes to the first one listed."""
        merged: dict[str, ModelInfo] = {}
        failures: list[SluiceError] = []
        for catalog in self.catalogs.values():
            try:
                listing = await catalog.models()
            except SluiceError as exc:
                failures.append(exc)
                continue
            for name, info in listing.items():
                merged.setdefault(name, info)
        if failures and not merged:
            raise failures[0]
        return merged

    async def refresh(self) -> None:
        for catalog in self.catalogs.values():
            with contextlib.suppress(SluiceError):
                await catalog.refresh()

    async def ping(self, timeout: float) -> dict[str, bool]:
        """Ping every cluster's gate; True where it answered within ``timeout``."""

        names = list(self.catalogs)
        results = await asyncio.gather(*(self.catalogs[n].transport.ping(timeout) for n in names))
        return dict(zip(names, results, strict=True))

    def stats(self) -> dict[str, int]:
        """Open sessions and streams over every cluster (the metrics show each transport's other numbers)."""
        total = {"sessions": 0, "streams": 0}
        for catalog in self.catalogs.values():
            stats = catalog.transport.stats()
            for key in total:
                total[key] += stats.get(key, 0)
        return total
