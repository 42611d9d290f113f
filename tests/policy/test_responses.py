"""The Responses route: stateless only, typed input items, bounded like every route."""

from __future__ import annotations

import json
from typing import Any

import pytest

from policy.bodies import load_routes
from policy.errors import BodyRejected

ROUTE = load_routes().get("responses")
TOOL = {"type": "function", "name": "lookup", "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}


def _check(body: dict[str, Any], **kwargs: Any):  # type: ignore[no-untyped-def]
    return ROUTE.check(json.dumps(body).encode(), **kwargs)


def _forwarded(body: dict[str, Any]) -> dict[str, Any]:
    return json.loads(_check(body).body)


@pytest.mark.parametrize(
    "body",
    [
        {"model": "m", "input": "Hello"},
        {"model": "m", "input": [{"role": "user", "content": "Hello"}], "instructions": "Be brief."},
        {"model": "m", "input": [{"role": "user", "content": [{"type": "input_text", "text": "Hi"}]}]},
        {"model": "m", "input": "x", "stream": True, "max_output_tokens": 16, "temperature": 0.5, "top_p": 1},
        {"model": "m", "input": "x", "tools": [TOOL], "tool_choice": "required", "parallel_tool_calls": True},
        {"model": "m", "input": "x", "tool_choice": {"type": "function", "name": "lookup"}, "tools": [TOOL]},
        {"model": "m", "input": "x", "text": {"format": {"type": "json_schema", "name": "a", "schema": {}}}},
        {"model": "m", "input": "x", "reasoning": {"effort": "low"}, "truncation": "auto", "user": "u"},
        # A whole tool round trip, as a client echoes the model's output back.
        {
            "model": "m",
            "input": [
                {"role": "user", "content": "Look it up"},
                {
                    "type": "function_call",
                    "call_id": "call_1",
                    "name": "lookup",
                    "arguments": "{}",
                    "id": "fc_1",
                    "status": "completed",
                },
                {"type": "function_call_output", "call_id": "call_1", "output": "42"},
                {
                    "type": "message",
                    "role": "assistant",
                    "id": "msg_1",
                    "status": "completed",
                    "content": [{"type": "output_text", "text": "It is 42.", "annotations": []}],
                },
                {"type": "reasoning", "summary": [{"type": "summary_text", "text": "thought"}]},
            ],
        },
        # The server-state fields pass when they ask for nothing.
        {"model": "m", "input": "x", "store": False, "previous_response_id": None, "background": False},
    ],
)
def test_accepts_stateless_requests(body: dict[str, Any]) -> None:
    checked = _check(body)
    assert checked.model == "m"
    assert checked.stream is (body.get("stream") is True)


def test_forwarded_body_is_never_stored() -> None:
    for body in ({"model": "m", "input": "x"}, {"model": "m", "input": "x", "store": False}):
        forwarded = _forwarded(body)
        assert forwarded["store"] is False
    forwarded = _forwarded({"model": "m", "input": "x", "previous_response_id": None, "background": False})
    assert "previous_response_id" not in forwarded and "background" not in forwarded


def test_message_items_get_their_default_type() -> None:
    forwarded = _forwarded({"model": "m", "input": [{"role": "user", "content": "Hi"}]})
    assert forwarded["input"] == [{"type": "message", "role": "user", "content": "Hi"}]


def test_usage_and_limits() -> None:
    checked = _check({"model": "m", "input": "x", "stream": True, "max_output_tokens": 7}, force_usage=True)
    # Usage comes in response.completed: nothing is added to the body for it.
    assert checked.include_usage is True and checked.max_tokens == 7
    assert b"stream_options" not in checked.body


def test_reject_store_true() -> None:
    with pytest.raises(BodyRejected) as info:
        _check({"model": "m", "input": "x", "store": True})
    assert (info.value.code, info.value.status) == ("store_not_supported", 422)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("previous_response_id", "resp_123"),
        ("conversation", "conv_123"),
        ("conversation", {"id": "conv_123"}),
        ("background", True),
        ("prompt", {"id": "pmpt_123"}),
    ],
)
def test_reject_server_state_fields(field: str, value: object) -> None:
    with pytest.raises(BodyRejected) as info:
        _check({"model": "m", "input": "x", field: value})
    assert (info.value.code, info.value.status) == ("server_state_not_supported", 422)
    assert str(value) not in str(info.value)


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"model": "m", "input": [{"type": "item_reference", "id": "msg_1"}]}, "bad_value"),
        ({"model": "m", "input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]}, "bad_value"),
        (
            {"model": "m", "input": [{"role": "user", "content": [{"type": "input_image", "image_url": "https://x/y.png"}]}]},
            "bad_value",
        ),
        ({"model": "m", "input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]}, "missing_field"),
        ({"model": "m", "input": [{"role": "tool", "content": "x"}]}, "bad_value"),
        ({"model": "m", "input": "x", "tools": [{"type": "web_search", "name": "w"}]}, "bad_value"),
        ({"model": "m", "input": "x", "metadata": {"a": "b"}}, "unknown_field"),
        ({"model": "m", "input": "x", "stream_options": {"include_usage": True}}, "unknown_field"),
        ({"model": "m", "input": "x", "include": ["file_search_call.results"]}, "bad_value"),
        ({"model": "m", "input": "x", "max_output_tokens": 0}, "out_of_range"),
        ({"model": "m", "input": []}, "too_short"),
        ({"model": "m"}, "missing_field"),
        ({"model": "m", "input": [{"type": "function_call_output", "call_id": "c", "output": "x", "x": 1}]}, "unknown_field"),
        (
            {
                "model": "m",
                "input": [
                    {"role": "assistant", "content": [{"type": "output_text", "text": "x", "annotations": [{"type": "url"}]}]}
                ],
            },
            "too_long",
        ),
    ],
)
def test_reject_outside_the_responses_policy(body: dict[str, Any], code: str) -> None:
    with pytest.raises(BodyRejected) as info:
        _check(body)
    assert info.value.code == code


def test_reject_server_state_before_anything_else_is_looked_at() -> None:
    # A stateful request with an unknown field still says why it cannot be served.
    with pytest.raises(BodyRejected) as info:
        _check({"model": "m", "input": "x", "previous_response_id": "r", "metadata": {}})
    assert info.value.code == "server_state_not_supported"


@pytest.mark.parametrize("cut", range(1, 40))
def test_reject_every_truncation(cut: int) -> None:
    data = json.dumps({"model": "m", "input": [{"role": "user", "content": "Hi"}]}).encode()
    with pytest.raises(BodyRejected):
        ROUTE.check(data[:cut])
