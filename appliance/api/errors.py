"""Errors in OpenAI's JSON shape: ``{"error": {"message", "type", "param", "code"}}``.

Messages are fixed texts chosen by code (the registry in :mod:`policy.codes`):
never the request's content, never an internal detail.  Internal errors are logged by the caller, and the
client gets a short code.
"""

from __future__ import annotations

from typing import Final

import orjson
from starlette.responses import Response

from policy.codes import message_for
from policy.errors import SluiceError

__all__ = ["error_response", "error_body", "from_error"]

_TYPES: Final = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    408: "invalid_request_error",
    415: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


def error_body(status: int, code: str) -> bytes:
    """The JSON error document for ``status`` and ``code``."""
    message = message_for(code, status)
    kind = _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return orjson.dumps({"error": {"message": message, "type": kind, "param": None, "code": code}})


def error_response(status: int, code: str, headers: dict[str, str] | None = None) -> Response:
    return Response(error_body(status, code), status_code=status, headers=headers, media_type="application/json")


def from_error(error: SluiceError, headers: dict[str, str] | None = None) -> Response:
    """The response for ``error``; 503 and 429 carry ``Retry-After``."""
    merged = {**getattr(error, "headers", {}), **(headers or {})}  # e.g. a quota refusal's x-ratelimit-*
    retry_after = getattr(error, "retry_after", None)
    if retry_after is not None:
        merged["Retry-After"] = str(max(1, int(retry_after + 0.999)))
    elif error.status in (503, 429):
        merged.setdefault("Retry-After", "5")
    return error_response(error.status, error.code, merged or None)
