"""Hypercorn's HTTP/1.1 protocol, stricter: one protocol on the plain port, exact methods, a connection cap.

Hypercorn upgrades a plain connection to HTTP/2 on ``Upgrade: h2c`` or the
``PRI *`` preface, upper-cases whatever method a client sends (so ``get``
is served as ``GET``), and accepts any number of connections.  Sluice speaks
HTTP/1.1 only on its plain port (TLS, and with it HTTP/2, ends at the load
balancer), so:

* an ``Upgrade: h2c`` request or the HTTP/2 preface gets 400 and the
  connection is closed;
* a method that is not an upper-case token (``get``, ``Post``) gets 405
  before the app sees it: methods match exactly as registered;
* past ``max_connections`` open connections a new one gets 503 with
  ``Retry-After`` and is closed at once, before anything is read.

:func:`install` puts :class:`StrictH11Protocol` in place of Hypercorn's own
(once per process; Hypercorn picks its HTTP/1.1 class from
``hypercorn.protocol`` for every connection).  It writes a response's head
and body together (:mod:`.coalesce`) and times kept-alive idle connections
with a loop timer (:mod:`.idle`).
"""

from __future__ import annotations

import h11
import hypercorn.protocol
from hypercorn.events import Closed, Event, RawData

from ..api.errors import error_body
from .coalesce import CoalescingH11Protocol
from .idle import IdleTimerH11Protocol

__all__ = ["ConnectionCounter", "StrictH11Protocol", "install"]

_BUSY_BODY = error_body(503, "too_many_connections")
_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n"
    b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(_BUSY_BODY), _BUSY_BODY)
)


class ConnectionCounter:
    """Open connections of one server; ``limit`` None: no cap (Hypercorn's own default)."""

    __slots__ = ("limit", "open")

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.open = 0


def _counter(config: object) -> ConnectionCounter | None:
    counter = getattr(config, "sluice_connections", None)
    return counter if isinstance(counter, ConnectionCounter) else None


def _h2c(event: h11.Request) -> bool:
    for raw_name, value in event.headers.raw_items():  # one pass, without h11's per-item Sequence lookups
        name = raw_name.lower()
        if name == b"http2-settings" or (name == b"upgrade" and b"h2c" in value.lower()):
            return True
    return False


class StrictH11Protocol(CoalescingH11Protocol, IdleTimerH11Protocol):
    """HTTP/1.1 without HTTP/2 upgrades or case-folded methods, under a connection cap."""

    _counted = False
    _refused = False

    async def initiate(self) -> None:
        counter = _counter(self.config)
        if counter is not None:
            if counter.limit is not None and counter.open >= counter.limit:
                self._refused = True
                await self.send(RawData(data=_BUSY))
                await self.send(Closed())
                return
            counter.open += 1
            self._counted = True
        await super().initiate()

    async def handle(self, event: Event) -> None:
        if self._refused:
            return
        if isinstance(event, Closed) and self._counted:
            self._counted = False
            counter = _counter(self.config)
            if counter is not None:
                counter.open -= 1
        await super().handle(event)

    async def _check_protocol(self, event: h11.Request) -> None:
        """Never switch to HTTP/2 here: that check is made (and refused) in :meth:`_create_stream`."""

    async def _create_stream(self, request: h11.Request) -> None:
        method = request.method
        if method == b"PRI" or request.http_version == b"2.0" or _h2c(request):
            await self._refuse(400)
            return
        if method != method.upper():
            await self._refuse(405)
            return
        await super()._create_stream(request)

    async def _refuse(self, status: int) -> None:
        await self._send_error_response(status)
        await self.send(Closed())


def install() -> None:
    """Make Hypercorn use :class:`StrictH11Protocol` for every HTTP/1.1 connection in this process."""
    # Replacing the class hypercorn.protocol imports (it names no __all__, so mypy calls it private).
    hypercorn.protocol.H11Protocol = StrictH11Protocol  # type: ignore[attr-defined]
