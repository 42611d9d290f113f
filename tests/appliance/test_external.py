"""The external-model proxy's own limits and its error mapping (the route itself: tests/integration)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from appliance.auth.secret import Secret
from appliance.external import ExternalUpstream, _event_usage, _map_status, _Upstream
from appliance.metering import Outcome
from appliance.quotas import MemoryBackend, QuotaExceeded, QuotaPolicy, Quotas


def test_rate_limit_is_per_user_and_in_flight_per_upstream_on_the_quota_engine() -> None:
    upstream = _Upstream(
        ExternalUpstream(
            "partner", "https://x.example", Path("k"), ("m",), frozenset({"g"}), requests_per_minute=3, max_concurrent=4
        ),
        Secret("k"),
    )

    async def scenario() -> None:
        limits = Quotas(QuotaPolicy(), MemoryBackend())
        grants = [await limits.admit_plan(upstream.plan("alice")) for _ in range(3)]
        with pytest.raises(QuotaExceeded) as refused:
            await limits.admit_plan(upstream.plan("alice"))
        assert refused.value.code == "requests_per_minute_exceeded" and 1 <= refused.value.retry_after <= 60
        grants.append(await limits.admit_plan(upstream.plan("bob")))  # another user's own minute
        # Four in flight (alice's three and bob's one): the fifth caller waits for one to finish.
        with pytest.raises(QuotaExceeded) as busy:
            await limits.admit_plan(upstream.plan("carol"))
        assert busy.value.code == "concurrent_requests_exceeded"
        await limits.settle(grants[0], Outcome(200))
        await limits.admit_plan(upstream.plan("carol"))

    asyncio.run(scenario())


def test_upstream_errors_become_short_codes() -> None:
    assert _map_status(401) == (502, "backend_failed")  # our key's problem, not the client's
    assert _map_status(403) == (502, "backend_failed")
    assert _map_status(429) == (429, "rate_limited")
    assert _map_status(400) == (400, "upstream_rejected")
    assert _map_status(404) == (404, "model_not_found")
    assert _map_status(500) == (502, "backend_failed")


def test_usage_events() -> None:
    usage_only = b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":5,"total_tokens":8}}'
    assert _event_usage(usage_only) == ({"prompt_tokens": 3, "completion_tokens": 5}, True)
    with_choice = b'data: {"choices":[{"delta":{}}],"usage":{"prompt_tokens":1,"completion_tokens":2}}'
    assert _event_usage(with_choice) == ({"prompt_tokens": 1, "completion_tokens": 2}, False)
    assert _event_usage(b'data: {"choices":[{"delta":{"content":"usage"}}]}') is None
    assert _event_usage(b"data: [DONE]") is None
