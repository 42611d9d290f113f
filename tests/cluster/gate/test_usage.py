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


# -- every split point: the filter's output and usage depend on the bytes, never on how they arrived --

# Each framing SSE allows, and one stream mixing them (a comment, a CR right before a
# piece boundary's LF, usage on a content chunk, the usage-only final chunk, [DONE]).
_FRAMINGS = {
    "LF": _stream(b"\n"),
    "CRLF": _stream(b"\r\n"),
    "CR": _stream(b"\r"),
    "mixed": b": ka\r\n\r\n" + (CONTENT % 1) + b"\r\r" + (CONTENT % 2) + b"\n\r\n" + FINAL + b"\r\n\n" + DONE + b"\r\r",
}


def _feed(pieces: list[bytes], asked: bool, so_far: bool) -> tuple[bytes, dict[str, int] | None, list[bytes]]:
    """What the filter passes through, its usage, and what each feed returned."""
    usage_filter = SseUsageFilter(asked, so_far)
    outs = [usage_filter.feed(piece) for piece in pieces]
    outs.append(usage_filter.flush())
    return b"".join(outs), usage_filter.usage, outs


@pytest.mark.parametrize("so_far", [False, True], ids=["final-only", "usage-so-far"])
@pytest.mark.parametrize("asked", [False, True], ids=["not-asked", "asked"])
@pytest.mark.parametrize("framing", sorted(_FRAMINGS))
def test_every_split_point_gives_what_the_whole_gives(framing: str, asked: bool, so_far: bool) -> None:
    data = _FRAMINGS[framing]
    whole, whole_usage, _ = _feed([data], asked, so_far)
    assert whole_usage == {"prompt_tokens": 3, "completion_tokens": 2}
    assert whole.rstrip(b"\r\n").endswith(DONE)
    for cut in range(len(data) + 1):
        out, usage, outs = _feed([data[:cut], data[cut:]], asked, so_far)
        assert (out, usage) == (whole, whole_usage), cut
        assert whole.startswith(outs[0]), cut  # nothing passed early that the whole would change


@pytest.mark.parametrize("framing", sorted(_FRAMINGS))
def test_byte_by_byte_gives_what_the_whole_gives_at_every_step(framing: str) -> None:
    """Fed one byte at a time, the output so far is always a prefix of the whole output, and
    the usage so far only ever grows to the final numbers."""
    data = _FRAMINGS[framing]
    whole, whole_usage, _ = _feed([data], False, False)
    usage_filter = SseUsageFilter(False)
    out = b""
    seen: list[int] = []
    for at in range(len(data)):
        out += usage_filter.feed(data[at : at + 1])
        assert whole.startswith(out), at
        if usage_filter.usage is not None:
            seen.append(usage_filter.usage["completion_tokens"])
    out += usage_filter.flush()
    assert out == whole and usage_filter.usage == whole_usage
    assert seen == sorted(seen) and seen[-1] == 2


@pytest.mark.parametrize("framing", ["CRLF", "mixed"])
def test_every_pair_of_split_points_gives_what_the_whole_gives(framing: str) -> None:
    """Three pieces, cut at every pair of points around the framings' blank lines (a CR and its
    LF in different pieces, a blank line's halves in three)."""
    data = _FRAMINGS[framing]
    whole, whole_usage, _ = _feed([data], False, True)
    for first in range(len(data) + 1):
        for second in range(first, min(first + 8, len(data)) + 1):
            out, usage, _ = _feed([data[:first], data[first:second], data[second:]], False, True)
            assert (out, usage) == (whole, whole_usage), (first, second)
