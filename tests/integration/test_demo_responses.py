"""The Responses API and tool calls through `sluice demo`, driven by the official openai client."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx2
import openai
import pytest

from tests.integration.test_demo import KEY, Demo, start_demo, stop_demo

pytestmark = pytest.mark.integration

CHAT_TOOLS = [
    {"type": "function", "function": {"name": "weather", "parameters": {"type": "object", "properties": {}}}},
    {"type": "function", "function": {"name": "time", "parameters": {"type": "object", "properties": {}}}},
]
RESPONSE_TOOLS = [{"type": "function", **tool["function"]} for tool in CHAT_TOOLS]  # type: ignore[dict-item]


@pytest.fixture(scope="module", params=["mux", "exec"])
def demo(request: pytest.FixtureRequest) -> Iterator[Demo]:
    running = start_demo(request.param)
    try:
        yield running
    finally:
        if running.process.poll() is None:
            stop_demo(running)


def test_responses_plain(demo: Demo) -> None:
    answer = demo.client().responses.create(model="standin-chat", input="Hello there", max_output_tokens=12)
    assert answer.output_text and len(answer.output_text.split()) == 12
    assert answer.usage is not None and answer.usage.output_tokens == 12 and answer.usage.input_tokens == 2
    raw = demo.client().responses.with_raw_response.create(model="standin-chat", input="Hello there",
                                                           max_output_tokens=12)
    assert raw.headers["sluice-store"] == "false"
    assert raw.parse().output_text == answer.output_text


def test_responses_stream(demo: Demo) -> None:
    plain = demo.client().responses.create(
        model="standin-chat", input=[{"role": "user", "content": "Hello there"}], max_output_tokens=12
    )
    events = list(demo.client().responses.create(
        model="standin-chat", input=[{"role": "user", "content": "Hello there"}], max_output_tokens=12, stream=True
    ))
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert len(deltas) == 12 and "".join(deltas) == plain.output_text
    assert events[0].type == "response.created"
    final = events[-1]
    assert final.type == "response.incomplete" or final.type == "response.completed"
    assert final.response.usage is not None and final.response.usage.output_tokens == 12


def test_responses_parallel_tool_calls_stream_unchanged(demo: Demo) -> None:
    kwargs = {"model": "standin-chat", "input": "What now?", "tools": RESPONSE_TOOLS, "tool_choice": "required"}
    plain = demo.client().responses.create(**kwargs)  # type: ignore[call-overload]
    calls = [item for item in plain.output if item.type == "function_call"]
    assert [c.name for c in calls] == ["weather", "time"]
    events = list(demo.client().responses.create(stream=True, **kwargs))  # type: ignore[call-overload]
    done = [e.item for e in events if e.type == "response.output_item.done"]
    assert [(d.call_id, d.name, d.arguments) for d in done] == [(c.call_id, c.name, c.arguments) for c in calls]
    pieces: dict[int, str] = {}
    for e in events:
        if e.type == "response.function_call_arguments.delta":
            pieces[e.output_index] = pieces.get(e.output_index, "") + e.delta
    assert [pieces[0], pieces[1]] == [c.arguments for c in calls]
    assert all(json.loads(c.arguments)["query"] for c in calls)


def test_chat_parallel_tool_calls_stream_unchanged(demo: Demo) -> None:
    kwargs = {"model": "standin-chat", "messages": [{"role": "user", "content": "What now?"}], "tools": CHAT_TOOLS,
              "tool_choice": "required"}
    plain = demo.client().chat.completions.create(**kwargs)  # type: ignore[call-overload]
    message = plain.choices[0].message
    assert plain.choices[0].finish_reason == "tool_calls" and message.tool_calls and len(message.tool_calls) == 2
    calls: dict[int, dict[str, str]] = {}
    for chunk in demo.client().chat.completions.create(stream=True, **kwargs):  # type: ignore[call-overload]
        for delta in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            call = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
            call["id"] += delta.id or ""
            if delta.function is not None:
                call["name"] += delta.function.name or ""
                call["arguments"] += delta.function.arguments or ""
    assert [calls[i] for i in sorted(calls)] == [
        {"id": c.id, "name": c.function.name, "arguments": c.function.arguments}  # type: ignore[union-attr]
        for c in message.tool_calls
    ]


@pytest.mark.parametrize(
    ("extra", "code"),
    [
        ({"store": True}, "store_not_supported"),
        ({"previous_response_id": "resp_123"}, "server_state_not_supported"),
        ({"conversation": "conv_1"}, "server_state_not_supported"),
        ({"background": True}, "server_state_not_supported"),
    ],
)
def test_reject_server_state(demo: Demo, extra: dict[str, object], code: str) -> None:
    with pytest.raises(openai.UnprocessableEntityError) as info:
        demo.client().responses.create(model="standin-chat", input="x", **extra)  # type: ignore[call-overload]
    assert info.value.body["code"] == code  # type: ignore[index]
    assert "stateless" in info.value.body["message"]  # type: ignore[index]
    assert "resp_123" not in info.value.response.text


def test_responses_route_not_served_by_embeddings(demo: Demo) -> None:
    response = httpx2.post(f"{demo.url}/v1/responses", json={"model": "standin-embed", "input": "x"},
                           headers={"Authorization": f"Bearer {KEY}"}, timeout=30)
    assert response.status_code == 404 and response.json()["error"]["code"] == "route_not_served"


def test_sealed_responses(demo: Demo) -> None:
    from sluice_sdk import fetch_fingerprint, sealed_openai_client

    fingerprint = fetch_fingerprint(f"{demo.url}/v1")
    plain = demo.client().responses.create(model="standin-chat", input="Hello there", max_output_tokens=9)
    with sealed_openai_client(f"{demo.url}/v1", KEY, fingerprint) as client:
        answer = client.responses.create(model="standin-chat", input="Hello there", max_output_tokens=9)
        assert answer.output_text == plain.output_text
        deltas = [e.delta for e in client.responses.create(
            model="standin-chat", input="Hello there", max_output_tokens=9, stream=True)
            if e.type == "response.output_text.delta"]
        assert "".join(deltas) == plain.output_text
