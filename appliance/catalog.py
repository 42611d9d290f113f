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
from policy.grammar import Models, Ping

from .transport.base import GateTransport
from .transport.replies import produced_by

__all__ = ["ModelInfo", "Catalog", "ClusterSet"]

log = logging.getLogger("sluice.catalog")

# How long a listing is trusted.  A model that appears is usable within this
# time; readiness changes are the gate's business, not the catalog's.
CATALOG_TTL: Final = 2.0


@dataclass(frozen=True, slots=True)
class ModelInfo:
    id: str
    ready: bool
    routes: frozenset[str]
    cluster: str
    # What the gate says produced the model's answers (the END frame says it per answer).
    produced_by: tuple[tuple[str, str], ...] = ()
    # For clients: "ready", "starting", "scaled_to_zero" or "unavailable" (cluster/scheduler/
    # availability.py), the ready instances, and the estimated wait in seconds when not ready.
    status: str = "ready"
    ready_instances: int = 0
    estimated_wait: int | None = None


_STATUSES: Final = frozenset({"ready", "starting", "scaled_to_zero", "unavailable"})
# The longest wait passed on to clients (a day): a gate's estimate beyond it is not news.
MAX_WAIT: Final = 86400


def _status(item: dict[str, object]) -> tuple[str, int, int | None]:
    """(status, ready instances, estimated wait) of a listing entry; older gates say only "ready"."""
    status = item.get("status")
    if status not in _STATUSES:
        status = "ready" if item["ready"] else "unavailable"
    count = item.get("ready_instances")
    wait = item.get("estimated_wait")
    return (
        str(status),
        count if type(count) is int and 0 <= count <= MAX_WAIT else int(bool(item["ready"])),
        wait if type(wait) is int and 0 <= wait <= MAX_WAIT else None,
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
            models = {
                item["id"]: ModelInfo(item["id"], bool(item["ready"]), frozenset(item["routes"]), self.name,
                                      tuple(sorted(produced_by(item).items())), *_status(item))
                for item in listing["data"]
            }
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

        async def one(transport: GateTransport) -> bool:
            try:
                async with asyncio.timeout(timeout):
                    reply = await transport.request(Ping(), b"")
                    await reply.read()
            except (SluiceError, TimeoutError):
                return False
            return True

        names = list(self.catalogs)
        results = await asyncio.gather(*(one(self.catalogs[n].transport) for n in names))
        return dict(zip(names, results, strict=True))

    def stats(self) -> dict[str, int]:
        total = {"sessions": 0, "streams": 0}
        for catalog in self.catalogs.values():
            for key, value in catalog.transport.stats().items():
                total[key] = total.get(key, 0) + value
        return total
