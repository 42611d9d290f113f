"""Usage from a Responses API event stream, without reading its content.

A Responses stream (``POST /v1/responses`` with ``"stream": true``) is a
server-sent event stream of typed events (``event: response.output_text.delta``
then a ``data:`` line).  Usage travels in the ``response`` object of the last
event: ``response.completed`` (or ``response.incomplete`` / ``response.failed``)
as ``input_tokens`` and ``output_tokens``.  Every event passes unchanged
(tool-call events included); only those events are looked at, and only for their
``response.usage``.
"""

from __future__ import annotations

from typing import Final

from .usage import Usage, usage_from_json

__all__ = ["ResponsesUsageFilter", "FINAL_EVENTS"]

_EVENT_END: Final = b"\n\n"
_USAGE_KEY: Final = b'"usage":'

# The event types that end a response and carry its usage, and how they show in an
# event: its `event:` line or the compact `type` member of its data (neither can
# stand inside a JSON string, whose quotes are escaped).
FINAL_EVENTS: Final = frozenset({"response.completed", "response.incomplete", "response.failed"})
_FINAL_MARKERS: Final = tuple(
    marker
    for name in sorted(FINAL_EVENTS)
    for marker in (b"event: " + name.encode() + b"\n", b'"type":"' + name.encode() + b'"')
)


class ResponsesUsageFilter:
    """Passes a Responses event stream through unchanged, noting the final usage."""

    __slots__ = ("_pending", "usage")

    def __init__(self) -> None:
        self._pending = b""
        self.usage: Usage | None = None

    def feed(self, piece: bytes) -> bytes:
        """The complete events in ``pending + piece``; the rest waits for more."""
        data = self._pending + piece if self._pending else piece
        cut = data.rfind(_EVENT_END)
        if cut < 0:
            self._pending = data
            return b""
        ready, self._pending = data[: cut + 2], data[cut + 2 :]
        if _USAGE_KEY in ready:
            for event in ready.split(_EVENT_END)[:-1]:
                self._inspect(event)
        return ready

    def flush(self) -> bytes:
        """Whatever is left at the end of the stream (an unterminated event)."""
        rest, self._pending = self._pending, b""
        return rest

    def _inspect(self, event: bytes) -> None:
        if not any(marker in event for marker in _FINAL_MARKERS):
            return
        for line in event.split(b"\n"):
            if line.startswith(b"data:"):
                # The last "usage" key of the event is the response's own: the
                # response object names it after its output, tools and text.
                usage = usage_from_json(line[5:])
                if usage is not None:
                    self.usage = usage
