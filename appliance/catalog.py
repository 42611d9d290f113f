"""The models the cluster serves, as last reported by the gate's ``models`` command.

Cached for a short time: the API checks every request's model against it
(404 before any cluster work), and ``/v1/models`` lists it.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Final

from policy.errors import BackendFailed
from policy.grammar import Models

from .transport.base import GateTransport

__all__ = ["ModelInfo", "Catalog"]

# How long a listing is trusted.  A model that appears is usable within this
# time; readiness changes are the gate's business, not the catalog's.
CATALOG_TTL: Final = 2.0


@dataclass(frozen=True, slots=True)
class ModelInfo:
    id: str
    ready: bool
    routes: frozenset[str]


class Catalog:
    def __init__(self, transport: GateTransport, ttl: float = CATALOG_TTL) -> None:
        self._transport = transport
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
        reply = await self._transport.request(Models(), b"")
        data = await reply.read()
        try:
            listing = json.loads(data)
            models = {
                item["id"]: ModelInfo(item["id"], bool(item["ready"]), frozenset(item["routes"]))
                for item in listing["data"]
            }
        except (ValueError, KeyError, TypeError):
            raise BackendFailed("bad_model_listing") from None
        self._models = models
        self._fetched = time.monotonic()
