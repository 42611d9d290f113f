"""Pure ASGI middleware of the appliance, one per module."""

from .api_guard import ApiGuardMiddleware
from .body_deadline import BodyDeadlineMiddleware

__all__ = ["ApiGuardMiddleware", "BodyDeadlineMiddleware"]
