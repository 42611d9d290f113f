"""The gate's SSE usage filter (cluster/gate/usage.py): every SSE framing, bounded events,
usage so far, and what the client did not ask for taken out."""

from __future__ import annotations

import json

import pytest

from cluster.gate.usage import MAX_EVENT_BYTES, SseUsageFilter
from policy.errors import BackendFailed

CONTENT = b'data: {"id":"c","choices":[{"index":0,"delta":{"content":"hi \\"usage\\": x"}}],"usage":{"prompt_tokens":3,"completion_tokens":%d}}'
FINAL = b'data: {"id":"c","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}'
DONE = b"data: [DONE]"


def _stream(eol: bytes) -> bytes:
    return b"".join(event + eol + eol for event in (CONTENT % 1, CONTENT % 2, FINAL, DONE))


def _feed_all(data: bytes, asked: bool, step: int) -> tuple[bytes, SseUsageFilter]:
    usage_filter = SseUsageFilter(asked)
    out = b"".join(usage_filter.feed(data[i : i + step]) for i in range(0, len(data), step))
    return out + usage_filter.flush(), usage_filter


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"], ids=["LF", "CRLF", "CR"])
@pytest.mark.parametrize("step", [1, 7, 1 << 20], ids=["bytewise", "pieces", "whole"])
def test_every_sse_framing_whole_and_bytewise(eol: bytes, step: int) -> None:
    data = _stream(eol)
    out, usage_filter = _feed_all(data, asked=False, step=step)
    assert usage_filter.usage == {"prompt_tokens": 3, "completion_tokens": 2}
    events = [e for e in out.split(eol + eol) if e]
    assert len(events) == 3 and events[-1] == DONE  # the usage-only event dropped
    for event in events[:2]:  # per-chunk usage (asked for by the gate only) hidden
        chunk = json.loads(event[6:])
        assert chunk["usage"] is None and chunk["choices"][0]["delta"]["content"] == 'hi "usage": x'


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"], ids=["LF", "CRLF", "CR"])
def test_usage_event_kept_when_asked(eol: bytes) -> None:
    out, usage_filter = _feed_all(_stream(eol), asked=True, step=5)
    assert FINAL in out and usage_filter.usage == {"prompt_tokens": 3, "completion_tokens": 2}


def test_usage_so_far_while_the_stream_runs() -> None:
    usage_filter = SseUsageFilter(False)
    usage_filter.feed((CONTENT % 1) + b"\n\n" + (CONTENT % 7)[:20])
    assert usage_filter.usage == {"prompt_tokens": 3, "completion_tokens": 1}
    usage_filter.feed((CONTENT % 7)[20:] + b"\r\n\r\n")
    assert usage_filter.usage == {"prompt_tokens": 3, "completion_tokens": 7}


def test_mixed_line_ends_and_comments_pass_untouched() -> None:
    data = b": keepalive\r\n\r\nevent: x\rdata: a\r\rdata: b\n\r\ndata: [DONE]\n\n"
    out, usage_filter = _feed_all(data, asked=False, step=1)
    assert out == data and usage_filter.usage is None


def test_crlf_is_one_line_end_not_a_blank_line() -> None:
    usage_filter = SseUsageFilter(False)
    assert usage_filter.feed(b"data: a\r\ndata: b\r\n") == b""
    assert usage_filter.feed(b"\r\n") == b"data: a\r\ndata: b\r\n\r\n"


@pytest.mark.parametrize("eol", [b"", b"\r\n"], ids=["unframed", "never-blank"])
def test_reject_stream_without_event_boundaries_is_bounded(eol: bytes) -> None:
    """Finding 6: a stream that never ends an event is refused at MAX_EVENT_BYTES, not buffered."""
    usage_filter = SseUsageFilter(False)
    piece = b"data: " + b"x" * 4000 + eol
    with pytest.raises(BackendFailed) as info:
        for _ in range(2 * MAX_EVENT_BYTES // len(piece)):
            assert usage_filter.feed(piece) == b""
    assert info.value.code == "bad_event_stream"


def test_garbage_usage_is_not_usage() -> None:
    for event in (b'data: {"usage":[[[[', b'data: {"usage":"x"}', b'data: {"usage":null}'):
        usage_filter = SseUsageFilter(False)
        assert usage_filter.feed(event + b"\n\n") == event + b"\n\n"
        assert usage_filter.usage is None
