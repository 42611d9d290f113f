"""Quotas: per user, per API key and per group limits, enforced before a request reaches a cluster.

Requests per minute, tokens per minute and per day, and concurrent requests,
from a policy file (``policy/quotas.toml``); counted with the ``limits``
library in memory (one process) or in Redis (several replicas, one limit).
:class:`Meter` is the appliance's Metering: quotas, accounting and metrics
around each request.
"""

from __future__ import annotations

from ._memory import Backend, MemoryBackend
from .config import MeteringSettings, parse_metering
from .errors import QuotaExceeded, QuotaUnavailable
from .meter import Meter, build_meter
from .policy import Limit, Plan, PolicyError, QuotaPolicy, load_policy, parse_policy
from .quotas import Grant, Quotas, tokens_used

__all__ = [
    "Backend",
    "Grant",
    "Limit",
    "MemoryBackend",
    "Meter",
    "MeteringSettings",
    "Plan",
    "PolicyError",
    "QuotaExceeded",
    "QuotaPolicy",
    "QuotaUnavailable",
    "Quotas",
    "RedisBackend",
    "build_meter",
    "load_policy",
    "parse_metering",
    "parse_policy",
    "tokens_used",
]


def __getattr__(name: str) -> object:
    if name == "RedisBackend":  # imports the Redis client only when asked for
        from ._redis import RedisBackend

        return RedisBackend
    raise AttributeError(name)
