"""Token usage, taken from backend responses without reading their content.

Usage travels back to the appliance as metadata (the END frame), so quotas and
accounting never need the body.  For a JSON response the gate decodes only
the top-level ``"usage"`` object; for a stream it looks only at the events
that carry usage, and drops the usage-only event when the client did not ask
for it (the gate asks the backend for it on every stream).
"""

from __future__ import annotations

import json
from typing import Final

__all__ = ["Usage", "usage_from_json", "SseUsageFilter", "with_audio", "AUDIO_USAGE_KEY"]

Usage = dict[str, int]

_USAGE_KEY: Final = b'"usage":'
_EVENT_END: Final = b"\n\n"
# OpenAI-style streams put "usage": null on every chunk but the last.
_NO_USAGE: Final = b'"usage":null'
_decoder = json.JSONDecoder()

# Token counts beyond this are not real; clamp rather than trust a backend.
MAX_TOKENS_REPORTED: Final = 10**9

# An SSE event larger than this is forwarded without looking for usage in it.
MAX_EVENT_SCAN: Final = 256 * 1024


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
    """Passes a server-sent event stream through, event by event, noting usage."""

    __slots__ = ("_pending", "_keep_usage_event", "usage")

    def __init__(self, client_asked_for_usage: bool) -> None:
        self._pending = b""
        self._keep_usage_event = client_asked_for_usage
        self.usage: Usage | None = None

    def feed(self, piece: bytes) -> bytes:
        """The complete events in ``pending + piece``; the rest waits for more."""
        data = self._pending + piece if self._pending else piece
        cut = data.rfind(_EVENT_END)
        if cut < 0:
            self._pending = data
            return b""
        ready, self._pending = data[: cut + 2], data[cut + 2 :]
        if _USAGE_KEY not in ready:
            return ready
        return b"".join(self._inspect(event) for event in ready.split(_EVENT_END)[:-1])

    def flush(self) -> bytes:
        """Whatever is left at the end of the stream (an unterminated event)."""
        rest, self._pending = self._pending, b""
        return rest

    def _inspect(self, event: bytes) -> bytes:
        framed = event + _EVENT_END
        if _USAGE_KEY not in event or _NO_USAGE in event or len(event) > MAX_EVENT_SCAN:
            return framed
        if not event.startswith(b"data: "):
            return framed
        try:
            chunk = json.loads(event[6:])
        except (ValueError, RecursionError):
            return framed
        if not isinstance(chunk, dict):
            return framed
        usage = _clean(chunk.get("usage"))
        if usage is not None:
            self.usage = usage
        if not self._keep_usage_event and chunk.get("choices") == [] and usage is not None:
            return b""
        return framed


# The usage key of the audio in a request (milliseconds, read from the file's
# container header by the gate, never from the client's say-so).
AUDIO_USAGE_KEY: Final = "audio_ms"


def with_audio(usage: Usage | None, checked: object) -> Usage | None:
    """``usage`` with the request's audio length in ms added, where its header gave one."""
    seconds = getattr(checked, "audio_seconds", None)
    if seconds is None:
        return usage
    return {**(usage or {}), AUDIO_USAGE_KEY: round(seconds * 1000)}
