"""The external-model proxy's own limits and its error mapping (the route itself: tests/integration)."""

from __future__ import annotations

from appliance.external import RateLimiter, _event_usage, _map_status


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_rate_limit_is_per_user_and_slides() -> None:
    clock = Clock()
    limiter = RateLimiter(3, window=60, clock=clock)
    assert [limiter.hit("alice") for _ in range(3)] == [None, None, None]
    wait = limiter.hit("alice")
    assert wait is not None and 59 < wait <= 60
    assert limiter.hit("bob") is None
    clock.now += 30
    assert limiter.hit("alice") is not None  # refusals are not counted, and the window has not slid yet
    clock.now += 30.1
    assert limiter.hit("alice") is None


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
