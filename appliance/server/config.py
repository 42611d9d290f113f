"""The Hypercorn configuration both ``sluice serve`` and ``sluice demo`` run with.

Deadlines, each against one way of holding a connection:

* headers and idle keep-alive: Hypercorn's ``keep_alive_timeout`` runs from
  the moment a connection is accepted (or its last answer was sent) until a
  request's whole head has arrived, so it bounds a slow-header client and an
  idle one alike (``[server].header_timeout``);
* a head's size: ``h11_max_incomplete_size`` (a larger head gets 431/400);
* the body: a total deadline from the first byte of the request
  (``[server].body_timeout``), enforced by
  :class:`~appliance.middleware.front.FrontMiddleware`;
* connections: at most ``[server].max_connections`` open at once, enforced by
  :class:`~.strict_h11.StrictH11Protocol` (Hypercorn has no such setting).

``read_timeout`` stays unset on purpose: after its body, a client of a long
streamed answer legitimately sends nothing for minutes, and Hypercorn's read
timeout would cut that stream.  A client that stops reading is bounded by the
reply's own buffer limit instead (``appliance.transport.replies.MAX_BUFFERED``).
"""

from __future__ import annotations

import logging
import time
from typing import Final

from hypercorn.config import Config

from ..settings import ServerSettings
from .strict_h11 import ConnectionCounter, install

__all__ = ["hypercorn_config", "MAX_HEAD_BYTES", "LISTEN_BACKLOG"]

# A request head (request line and headers) larger than this is refused.
# API clients send a few hundred bytes; a browser with cookies a few KiB.
MAX_HEAD_BYTES: Final = 16 * 1024

# Connections the kernel queues before the server accepts them.
LISTEN_BACKLOG: Final = 128

# Seconds Hypercorn gives open requests to finish on shutdown.
GRACEFUL_TIMEOUT: Final = 5.0


class _Config(Config):
    """Hypercorn's configuration, with the headers of every answer (Date, Server) made once a second.

    Hypercorn formats the Date header for each answer; its resolution is a second."""

    _second = -1
    _made: dict[str, list[tuple[bytes, bytes]]]

    def response_headers(self, protocol: str) -> list[tuple[bytes, bytes]]:
        second = int(time.time())
        if second != self._second:
            self._second, self._made = second, {}
        made = self._made.get(protocol)
        if made is None:
            made = self._made[protocol] = super().response_headers(protocol)
        return list(made)


def hypercorn_config(server: ServerSettings, bind: str, graceful_timeout: float = GRACEFUL_TIMEOUT) -> Config:
    """Hypercorn's configuration for one listening address, with Sluice's deadlines and caps."""
    install()
    config = _Config()
    config.bind = [bind]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.graceful_timeout = graceful_timeout
    config.keep_alive_timeout = server.header_timeout
    config.h11_max_incomplete_size = MAX_HEAD_BYTES
    config.backlog = LISTEN_BACKLOG
    config.read_timeout = None
    config.alpn_protocols = ["http/1.1"]
    # The counter rides on the Config, the one object every connection's protocol sees (strict_h11._counter).
    config.sluice_connections = ConnectionCounter(server.max_connections)  # type: ignore[attr-defined]
    return config
