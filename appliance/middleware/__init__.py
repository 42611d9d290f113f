"""The appliance's one ASGI middleware (:mod:`.front`) and the per-request concerns it runs."""

from .front import FrontMiddleware

__all__ = ["FrontMiddleware"]
