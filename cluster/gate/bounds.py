"""The byte bounds of every response path in the gate, in one place.

What a backend sends reaches the appliance along one of these paths, each
bounded so that one stream or one backend cannot grow the gate's memory:

* the response head: ``cluster._http1.MAX_HEAD_BYTES`` (and its header count,
  chunk-line and trailer bounds), checked while it arrives;
* a streamed body (SSE, chunked sealed): never held, forwarded piece by piece
  with back-pressure (the backend client pauses reading past
  ``cluster.backend_client.READ_HIGH_WATER``; each BODY frame waits for the
  pipe to drain); an SSE event waits for its end at most
  ``cluster.gate.usage.MAX_EVENT_BYTES``;
* a whole body (JSON, and every answer sealed whole, which must be complete
  before it is sealed): at most :data:`MAX_RESPONSE_BYTES` per stream and
  :data:`MAX_HELD_BYTES` for all streams of the process together
  (:class:`HeldBytes`).

Past a bound the stream ends with an ERROR of its own; the session and the
other streams go on.
"""

from __future__ import annotations

from typing import Final

from policy.errors import BackendFailed, Overloaded

__all__ = ["MAX_RESPONSE_BYTES", "MAX_HELD_BYTES", "HeldBytes", "Holder", "ResponseTooLarge"]

# A whole (non-streamed) response held in memory: embeddings of a large batch
# are the largest legitimate ones.  Also the bound of an answer sealed whole
# (RFC 9458), streamed inside or not: it is held until it can be sealed.
MAX_RESPONSE_BYTES: Final = 64 * 1024 * 1024

# Whole responses held at once by one gate process (a mux session's streams
# together): four of the largest, far above real traffic (a chat answer is a
# few KiB), and a bound on the process however many streams hold answers.
MAX_HELD_BYTES: Final = 4 * MAX_RESPONSE_BYTES


class ResponseTooLarge(BackendFailed):
    """A whole response past :data:`MAX_RESPONSE_BYTES`."""

    code = "response_too_large"


class HeldBytes:
    """The process-wide count of whole-response bytes held; one per process."""

    __slots__ = ("_held", "_limit")

    def __init__(self, limit: int = MAX_HELD_BYTES) -> None:
        self._held = 0
        self._limit = limit

    @property
    def held(self) -> int:
        return self._held

    def take(self, size: int) -> None:
        """Count ``size`` more bytes held; :class:`Overloaded` (503) past the limit."""
        if self._held + size > self._limit:
            raise Overloaded("gate_memory")
        self._held += size

    def release(self, size: int) -> None:
        self._held -= size


class Holder:
    """The bytes one stream holds: bounded per stream, counted in the process total."""

    __slots__ = ("_budget", "size")

    def __init__(self, budget: HeldBytes) -> None:
        self._budget = budget
        self.size = 0

    def take(self, size: int) -> None:
        if self.size + size > MAX_RESPONSE_BYTES:
            raise ResponseTooLarge()
        self._budget.take(size)
        self.size += size

    def release(self) -> None:
        self._budget.release(self.size)
        self.size = 0
