"""Token reservations cover the worst case a request can cause; a request naming no limit gets a ceiling."""

from __future__ import annotations

import json

import pytest

from appliance.quotas.reservation import DEFAULT_MAX_OUTPUT_TOKENS, OutputCeilings, reserve
from policy.bodies import load_routes

ROUTES = load_routes()
CEILINGS = OutputCeilings(500, {"big": 9000})


def _reserve(route_id: str, obj: dict[str, object], ceilings: OutputCeilings = CEILINGS) -> tuple[int | None, dict[str, object]]:
    route = ROUTES.get(route_id)
    sent = json.dumps(obj).encode()
    reservation = reserve(route, route.check(sent), sent, ceilings)
    return reservation.tokens, json.loads(reservation.body)


CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def test_reject_n_underreserved() -> None:
    assert _reserve("chat", {**CHAT, "n": 4, "max_tokens": 100})[0] == 400


def test_reject_prompts_underreserved() -> None:
    tokens, _ = _reserve("completions", {"model": "m", "prompt": ["a", "b", "c"], "n": 2, "max_tokens": 10})
    assert tokens == 60
    assert _reserve("completions", {"model": "m", "prompt": [1, 2, 3], "max_tokens": 10})[0] == 10  # one token prompt


def test_reject_smaller_of_two_limits_reserved() -> None:
    assert _reserve("chat", {**CHAT, "max_tokens": 10, "max_completion_tokens": 300})[0] == 300
    assert _reserve("chat", {**CHAT, "max_tokens": 300, "max_completion_tokens": 10})[0] == 300


def test_reject_no_limit_reserves_a_fixed_guess() -> None:
    """No limit named: the model's ceiling is reserved and set on the forwarded body."""
    tokens, body = _reserve("chat", {**CHAT, "n": 2})
    assert tokens == 1000 and body["max_tokens"] == 500
    tokens, body = _reserve("chat", {**CHAT, "model": "big"})
    assert tokens == 9000 and body["max_tokens"] == 9000
    assert _reserve("chat", CHAT, OutputCeilings())[1]["max_tokens"] == DEFAULT_MAX_OUTPUT_TOKENS


def test_named_limit_body_is_the_clients() -> None:
    route = ROUTES.get("chat")
    sent = json.dumps({**CHAT, "max_tokens": 7}).encode()
    assert reserve(route, route.check(sent), sent, CEILINGS).body == sent


def test_embeddings_reserve_no_output() -> None:
    tokens, body = _reserve("embeddings", {"model": "m", "input": "x"})
    assert tokens is None and "max_tokens" not in body


@pytest.mark.parametrize("ceiling", [1, 2**20])
def test_ceiling_bounds(ceiling: int) -> None:
    assert _reserve("chat", CHAT, OutputCeilings(ceiling))[0] == ceiling


def test_reject_responses_without_limit_unbounded() -> None:
    """A responses request naming no max_output_tokens gets the model's ceiling, reserved and set."""
    request = {"model": "big", "input": "hi"}
    tokens, body = _reserve("responses", request)
    assert tokens == 9000 and body["max_output_tokens"] == 9000 and "max_tokens" not in body
    tokens, body = _reserve("responses", {**request, "max_output_tokens": 42})
    assert tokens == 42 and body["max_output_tokens"] == 42


def test_scores_reserve_no_output() -> None:
    assert _reserve("rerank", {"model": "m", "query": "q", "documents": ["a"]})[0] is None
