"""Quotas and accounting around each request: the interface the API depends on.

Before a request goes to the cluster, :meth:`Metering.admit` decides (and
reserves, e.g. ``max_tokens`` against a token budget); it raises a
:class:`~policy.errors.SluiceError` with status 429 to refuse.  When the
request is over -- answered, failed, or abandoned mid-stream -- the ticket is
settled exactly once with what the gate reported.  Content never passes
through here: only who, which model and route, status, token counts, timing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from .auth.base import Principal

__all__ = ["Outcome", "Ticket", "Metering", "NoMetering"]


@dataclass(frozen=True, slots=True)
class Outcome:
    status: int
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency: float = 0.0
    first_token: float | None = None  # seconds to a stream's first content (SSE comments are not content)
    sealed: bool = False
    audio_ms: int = 0  # audio in the request, from the gate's usage (audio routes)
    model_revision: str | None = None  # what produced the answer (the gate's END frame)
    backend_version: str | None = None


class Ticket(Protocol):
    @property
    def headers(self) -> dict[str, str]:
        """Headers for the answer (e.g. ``x-ratelimit-*``)."""
        ...

    async def settle(self, outcome: Outcome) -> None: ...


class Metering(Protocol):
    async def admit(self, principal: Principal, route: str, model: str, max_tokens: int | None, sealed: bool) -> Ticket: ...


class _FreeTicket:
    headers: dict[str, str] = {}

    async def settle(self, outcome: Outcome) -> None:
        return None


class NoMetering:
    """No limits and no records (the demo without accounting)."""

    async def admit(self, principal: Principal, route: str, model: str, max_tokens: int | None, sealed: bool) -> Ticket:
        return _FreeTicket()
