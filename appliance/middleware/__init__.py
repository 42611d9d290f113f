"""Pure ASGI middleware of the appliance, one per module."""

from .api_guard import ApiGuardMiddleware
from .body_deadline import BodyDeadlineMiddleware
from .http_metrics import HttpMetricsMiddleware
from .request_log import RequestLogMiddleware

__all__ = ["ApiGuardMiddleware", "BodyDeadlineMiddleware", "HttpMetricsMiddleware", "RequestLogMiddleware"]
