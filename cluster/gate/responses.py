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

from .usage import SseUsageFilter, usage_from_json

__all__ = ["ResponsesUsageFilter", "FINAL_EVENTS"]

# The event types that end a response and carry its usage, and how they show in an
# event: its `event:` line or the compact `type` member of its data (neither can
# stand inside a JSON string, whose quotes are escaped).
FINAL_EVENTS: Final = frozenset({"response.completed", "response.incomplete", "response.failed"})
_FINAL_MARKERS: Final = tuple(
    marker for name in sorted(FINAL_EVENTS) for marker in (b"event: " + name.encode() + b"\n", b'"type":"' + name.encode() + b'"')
)


class ResponsesUsageFilter(SseUsageFilter):
    """Passes a Responses event stream through unchanged, noting the final usage."""

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__(client_asked_for_usage=True)

    def _inspect(self, event: bytes) -> bytes:
        if any(marker in event for marker in _FINAL_MARKERS):
            for line in event.split(b"\n"):
                if line.startswith(b"data:"):
                    # The last "usage" key of the event is the response's own: the
                    # response object names it after its output, tools and text.
                    usage = usage_from_json(line[5:])
                    if usage is not None:
                        self.usage = usage
        return event  # framed as it came (the filter hands over whole events)
