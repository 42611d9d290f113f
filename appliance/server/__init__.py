"""How the appliance's HTTP server is set up: one Hypercorn configuration for ``serve`` and ``demo``.

:func:`hypercorn_config` turns the ``[server]`` settings into Hypercorn's
configuration, with the deadlines and caps that keep one client from holding
the server (see :mod:`.strict_h11` for the protocol itself).
"""

from .config import hypercorn_config
from .strict_h11 import ConnectionCounter, StrictH11Protocol

__all__ = ["hypercorn_config", "ConnectionCounter", "StrictH11Protocol"]
