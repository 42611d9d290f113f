"""The external-model limits hold across replicas: two quota engines (two replicas) on one real Redis."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from appliance.auth.secret import Secret
from appliance.external import ExternalUpstream, _Upstream
from appliance.metering import Outcome
from appliance.quotas import QuotaExceeded, QuotaPolicy, Quotas
from appliance.quotas._redis import RedisBackend
from tests.services.redis import RedisServer

pytestmark = pytest.mark.integration


def test_external_limits_hold_across_two_replicas() -> None:
    redis = RedisServer()
    upstream = _Upstream(
        ExternalUpstream(
            "partner", "https://x.example", Path("k"), ("m",), frozenset({"g"}), requests_per_minute=3, max_concurrent=2
        ),
        Secret("k"),
    )

    async def scenario() -> None:
        replicas = [Quotas(QuotaPolicy(), RedisBackend(redis.url, timeout=2)) for _ in range(2)]
        for replica in replicas:
            await replica.start()
        try:
            results = await asyncio.gather(
                *(replicas[i % 2].admit_plan(upstream.plan("alice")) for i in range(10)), return_exceptions=True
            )
            admitted = [r for r in results if not isinstance(r, BaseException)]
            refused = [r for r in results if isinstance(r, QuotaExceeded)]
            # Two in flight at most over both replicas (the slots), not two per replica.
            assert len(admitted) == 2 and len(refused) == 8, results
            for grant in admitted:
                await replicas[0].settle(grant, Outcome(200))
            third = await replicas[1].admit_plan(upstream.plan("alice"))
            await replicas[1].settle(third, Outcome(200))
            with pytest.raises(QuotaExceeded) as minute:  # three this minute, over both replicas
                await replicas[0].admit_plan(upstream.plan("alice"))
            assert minute.value.code == "requests_per_minute_exceeded"
        finally:
            for replica in replicas:
                await replica.aclose()

    try:
        asyncio.run(scenario())
    finally:
        redis.close()
