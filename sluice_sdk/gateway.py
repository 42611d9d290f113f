"""The gate's recipe for one sealed request: open, decode, check the date, check for a replay.

The order matters and is fixed here so that the gate cannot get it wrong:

1. decapsulate (RFC 9458, or chunked OHTTP): only authenticated requests go on,
   so unauthenticated bytes never reach the replay guard's memory;
2. decode the Binary HTTP request, strictly and within ``limits``;
3. the request must carry exactly one ``date`` header within the guard's
   window (RFC 9458 Section 6.5.1);
4. its ``enc`` must not have been seen within the window (Section 6.5).

Failures in 1, 3 and 4 raise the message-less
:class:`~sluice_sdk.errors.SealError`; a malformed inner request (2) raises
:class:`~sluice_sdk.errors.BhttpError`.  The gate then still checks that the
route and model the appliance saw match the inner request.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from .bhttp import DEFAULT_LIMITS, Limits, Request, decode_request
from .errors import SealError
from .ohttp import (
    ChunkedResponseSealer,
    KeyLookup,
    ResponseSealer,
    decapsulate_chunked_request,
    decapsulate_request,
)

__all__ = ["OpenedRequest", "ReplayCheck", "open_request"]


class ReplayCheck(Protocol):
    """What a request's date and ``enc`` are checked with: a :class:`~sluice_sdk.replay.ReplayGuard`,
    or a store shared by several processes (the gate's)."""

    def check_date(self, date: bytes | str) -> None: ...

    def check(self, enc: bytes) -> None: ...


@dataclass(frozen=True, slots=True)
class OpenedRequest:
    """An accepted sealed request and the sealer for its (one) response."""

    request: Request
    sealer: ResponseSealer | ChunkedResponseSealer


def open_request(
    keys: KeyLookup,
    guard: ReplayCheck,
    body: bytes,
    *,
    chunked: bool,
    limits: Limits = DEFAULT_LIMITS,
) -> OpenedRequest:
    """Open ``body`` (``message/ohttp-req``, or ``message/ohttp-chunked-req`` if ``chunked``)."""
    sealer: ResponseSealer | ChunkedResponseSealer
    if chunked:
        inner, sealer = decapsulate_chunked_request(keys, body)
    else:
        inner, sealer = decapsulate_request(keys, body)
    request = decode_request(inner, limits)
    dates = request.header_values(b"date")
    if len(dates) != 1:
        raise SealError from None
    guard.check_date(dates[0])
    guard.check(sealer.enc)
    return OpenedRequest(request, sealer)
