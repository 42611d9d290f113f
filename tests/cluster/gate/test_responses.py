"""Usage from the answers of the newer routes (Responses, rerank, score), content untouched."""

from __future__ import annotations

import json
from itertools import count

import pytest

from cluster.gate.responses import ResponsesUsageFilter
from cluster.gate.usage import usage_from_json
from cluster.standin._responses import response_events, response_object

_IDS = count(1)
TOOLS = [
    {"type": "function", "name": "a", "parameters": {"properties": {"usage": {"type": "string"}}}},
    {"type": "function", "name": "b"},
]


def _new_id(prefix: str) -> str:
    return f"{prefix}_{next(_IDS)}"


def _stream(obj: dict[str, object], max_tokens: int = 6) -> bytes:
    return b"".join(response_events(obj, ["hello there"], max_tokens, "m", _new_id))


def _feed(data: bytes, step: int | None) -> tuple[bytes, ResponsesUsageFilter]:
    usage_filter = ResponsesUsageFilter()
    pieces = [data] if step is None else [data[i : i + step] for i in range(0, len(data), step)]
    out = b"".join(usage_filter.feed(piece) for piece in pieces) + usage_filter.flush()
    return out, usage_filter


def test_usage_of_a_plain_response() -> None:
    body = json.dumps(response_object({"input": "x", "tools": TOOLS}, ["hello there"], 5, "m", _new_id)).encode()
    assert usage_from_json(body) == {"prompt_tokens": 2, "completion_tokens": 5}


@pytest.mark.parametrize("step", [None, 1, 7, 4096])
@pytest.mark.parametrize("obj", [{"input": "x"}, {"input": "x", "tools": TOOLS, "tool_choice": "required"}])
def test_stream_passes_unchanged_and_usage_is_found(step: int | None, obj: dict[str, object]) -> None:
    data = _stream(obj)
    out, usage_filter = _feed(data, step)
    assert out == data
    assert usage_filter.usage is not None and usage_filter.usage["prompt_tokens"] == 2
    assert usage_filter.usage["completion_tokens"] > 0


def test_usage_only_from_the_final_event() -> None:
    # Usage-shaped bytes in other events (a delta, a snapshot) are not usage.
    fake = b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta","usage":{"input_tokens":9}}\n\n'
    out, usage_filter = _feed(fake, None)
    assert out == fake and usage_filter.usage is None


def test_trailing_garbage_is_passed_and_ignored() -> None:
    data = _stream({"input": "x"}) + b"event: response.completed\ndata: {not json"
    out, usage_filter = _feed(data, 3)
    assert out == data
    assert usage_filter.usage is not None and usage_filter.usage["completion_tokens"] == 6


@pytest.mark.parametrize(
    "usage",
    [b'{"input_tokens":-1,"output_tokens":true}', b"[]", b'"x"', b"{" * 5000],
)
def test_reject_usage_that_is_not_counts(usage: bytes) -> None:
    event = b'event: response.completed\ndata: {"type":"response.completed","response":{"usage":' + usage + b"}}\n\n"
    _, usage_filter = _feed(event, None)
    assert usage_filter.usage is None


def test_usage_of_rerank_and_score() -> None:
    from cluster.standin._scoring import rerank_reply, score_reply

    rerank = json.dumps(rerank_reply({"query": "a b", "documents": ["c", "d e"]}, "m", "r1")).encode()
    assert usage_from_json(rerank) == {"prompt_tokens": 7, "completion_tokens": 0}
    score = json.dumps(score_reply({"text_1": "a", "text_2": ["b", "c d"]}, "m", "s1", 0)).encode()
    assert usage_from_json(score) == {"prompt_tokens": 5, "completion_tokens": 0}
    # Chat usage keeps its own names first.
    chat = b'{"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}'
    assert usage_from_json(chat) == {"prompt_tokens": 3, "completion_tokens": 4}
