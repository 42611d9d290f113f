"""Token usage, taken from backend responses without reading their content.

Usage travels back to the appliance as metadata (the END frame), so quotas and
accounting never need the body.  For a JSON response the gate decodes only
the top-level ``"usage"`` object; for a stream it looks only at the events
that carry usage.  The gate asks the backend for usage on every stream, and
for usage so far on every chunk (vLLM's ``continuous_usage_stats``), so that a
stream cut short (a CANCEL, a timeout) is still metered with what was
delivered; what the client did not ask for is taken out on the way: the
per-chunk usage becomes ``null`` and the final usage-only event is dropped.

The event stream is split the way the SSE specification frames it: an event
ends at a blank line, and a line ends at CRLF, LF or a lone CR.  Each byte is
scanned once (no rescanning of what waits for its event's end), and an event
longer than :data:`MAX_EVENT_BYTES` ends the stream (a backend that never
frames its events must not make the gate buffer without bound).
"""

from __future__ import annotations

import json
import re
from typing import Final

from policy.errors import BackendFailed

__all__ = ["Usage", "usage_from_json", "SseUsageFilter", "MAX_EVENT_BYTES", "MAX_EVENT_SCAN", "with_audio", "AUDIO_USAGE_KEY"]

Usage = dict[str, int]

_USAGE_KEY: Final = b'"usage":'
_decoder = json.JSONDecoder()

# Token counts beyond this are not real; clamp rather than trust a backend.
MAX_TOKENS_REPORTED: Final = 10**9

# An SSE event larger than this is forwarded without looking for usage in it.
MAX_EVENT_SCAN: Final = 256 * 1024

# The longest SSE event the gate holds while waiting for its blank line.  A
# chunk of a real stream is under a few KiB (one token, or a tool call's
# arguments piece, with logprobs at most tens of KiB); 1 MiB is far above
# that and bounds what one stream can make the gate hold.
MAX_EVENT_BYTES: Final = 1024 * 1024

# A blank line in any framing SSE allows: two line ends in a row, a line end
# being CRLF, LF, or a CR not followed by LF.
_BLANK_LINE: Final = re.compile(rb"(?:\r\n|\r(?!\n)|\n)(?:\r\n|\r(?!\n)|\n)")

# The longest blank line (CRLF CRLF) less one byte: how far back a scan resumes.
_RESCAN: Final = 3

# The final usage-only chunk of an OpenAI-style stream has no choices.
_NO_CHOICES: Final = (b'"choices":[]', b'"choices": []')


# Other names of the same counts, in the order they are tried: the Responses API says
# input_tokens and output_tokens; rerank answers (vLLM, Cohere style) only total_tokens,
# which is all input there.
_OTHER_KEYS: Final = {"prompt_tokens": ("input_tokens", "total_tokens"), "completion_tokens": ("output_tokens",)}


def _clean(raw: object) -> Usage | None:
    if not isinstance(raw, dict):
        return None
    usage: Usage = {}
    for key, others in _OTHER_KEYS.items():
        value = raw.get(key)
        for other in others:
            if value is not None:
                break
            value = raw.get(other)
        if value is None:
            value = 0
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            usage[key] = min(value, MAX_TOKENS_REPORTED)
    return usage or None


def usage_from_json(body: bytes) -> Usage | None:
    """The ``usage`` object of a JSON response body.

    A key is the only place the bytes ``"usage":`` can stand in JSON: inside a
    string the quotes would be escaped.  The last one is the top-level key in
    the responses of vLLM and OpenAI.
    """
    at = body.rfind(_USAGE_KEY)
    if at < 0:
        return None
    try:
        raw, _ = _decoder.raw_decode(body[at + len(_USAGE_KEY) :].decode("utf-8", "replace").lstrip())
    except (ValueError, RecursionError):  # a backend's garbage, however deep, is not usage
        return None
    return _clean(raw)


class SseUsageFilter:
    """Passes a server-sent event stream through, event by event, noting usage.

    ``usage`` is the latest usage seen: the final report, or the usage so far
    while the stream runs (with continuous usage stats).
    """

    __slots__ = ("_buffer", "_scan", "_keep_usage_event", "_keep_usage_so_far", "usage")

    def __init__(self, client_asked_for_usage: bool, client_asked_for_usage_so_far: bool = False) -> None:
        self._buffer = bytearray()
        self._scan = 0
        self._keep_usage_event = client_asked_for_usage
        self._keep_usage_so_far = client_asked_for_usage_so_far
        self.usage: Usage | None = None

    def feed(self, piece: bytes) -> bytes:
        """The complete events of what arrived so far; the rest waits for more.

        Raises :class:`~policy.errors.BackendFailed` when an event grows past
        :data:`MAX_EVENT_BYTES`."""
        buffer = self._buffer
        buffer += piece
        out: list[bytes] = []
        start = 0
        pos = self._scan
        size = len(buffer)
        if 0x0D not in buffer:
            # LF line ends only (what servers send): a blank line is two LFs, found without the regex
            while (at := buffer.find(b"\n\n", pos)) >= 0:
                end = at + 2
                out.append(self._inspect(bytes(buffer[start:end])))
                start = pos = end
        else:
            while True:
                match = _BLANK_LINE.search(buffer, pos)
                if match is None:
                    break
                end = match.end()
                if end == size and buffer[-1] == 0x0D:
                    break  # a CR at the very end may be the first half of a CRLF: wait
                out.append(self._inspect(bytes(buffer[start:end])))
                start = pos = end
        if start:
            del buffer[:start]
        if len(buffer) > MAX_EVENT_BYTES:
            raise BackendFailed("bad_event_stream")
        self._scan = max(len(buffer) - _RESCAN, 0)
        return b"".join(out)

    def flush(self) -> bytes:
        """Whatever is left at the end of the stream (an unterminated event)."""
        rest = bytes(self._buffer)
        self._buffer.clear()
        self._scan = 0
        return self._inspect(rest) if rest else b""

    def _inspect(self, event: bytes) -> bytes:
        at = event.rfind(_USAGE_KEY)
        if at < 0 or len(event) > MAX_EVENT_SCAN:
            return event
        value_at = at + len(_USAGE_KEY)
        # latin-1 maps each byte to one character: offsets in the text are offsets in the event
        text = event[value_at:].decode("latin-1")
        skip = len(text) - len(text.lstrip(" \t"))
        try:
            raw, length = _decoder.raw_decode(text, skip)
        except (ValueError, RecursionError):  # a backend's garbage, however deep, is not usage
            return event
        usage = _clean(raw)
        if usage is None:
            return event  # "usage": null, or nothing we count
        self.usage = usage
        if _NO_CHOICES[0] in event or _NO_CHOICES[1] in event:
            return event if self._keep_usage_event else b""
        if self._keep_usage_so_far:
            return event
        # usage so far on a content chunk: asked for by the gate, not by the client
        return event[: value_at + skip] + b"null" + event[value_at + length :]


# The usage key of the audio in a request (milliseconds, read from the file's
# container header by the gate, never from the client's say-so).
AUDIO_USAGE_KEY: Final = "audio_ms"


def with_audio(usage: Usage | None, checked: object) -> Usage | None:
    """``usage`` with the request's audio length in ms added, where its header gave one."""
    seconds = getattr(checked, "audio_seconds", None)
    if seconds is None:
        return usage
    return {**(usage or {}), AUDIO_USAGE_KEY: round(seconds * 1000)}
