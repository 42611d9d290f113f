"""Errors in OpenAI's JSON shape: ``{"error": {"message", "type", "param", "code"}}``.

Messages are fixed texts chosen by code: never the request's content, never
an internal detail.  Internal errors are logged by the caller, and the
client gets a short code.
"""

from __future__ import annotations

from typing import Final

import orjson
from starlette.responses import Response

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

_MESSAGES: Final = {
    "invalid_api_key": "Invalid or missing API key.",
    "model_not_found": "The model does not exist or you do not have access to it.",
    "route_not_served": "The model does not serve this endpoint.",
    "no_backend": "No instance of the model is ready; try again shortly.",
    "backend_failed": "The model server failed to answer.",
    "backend_timeout": "The model server did not answer in time.",
    "cluster_unavailable": "The cluster is not reachable; try again shortly.",
    "body_too_large": "The request body is too large.",
    "invalid_json": "The request body is not valid JSON.",
    "unknown_field": "The request has a field this endpoint does not accept.",
    "wrong_type": "A request field has the wrong type.",
    "out_of_range": "A request field is out of range.",
    "too_long": "A request field is too long or has too many items.",
    "missing_field": "A required request field is missing.",
    "stream_not_allowed": "This endpoint does not stream.",
    "stream_options_without_stream": "stream_options is only allowed with stream: true.",
    "too_short": "A request field is empty or too short.",
    "bad_value": "A request field has a value this endpoint does not accept.",
    "duplicate_key": "The request body has a duplicate key.",
    "too_deep": "The request body is nested too deeply.",
    "bad_number": "The request body has a number out of range.",
    "bad_string": "The request body has an invalid string.",
    "bad_encoding": "The request body is not valid UTF-8.",
    "not_found": "Not found.",
    "requests_per_minute_exceeded": "Rate limit reached for requests per minute.",
    "tokens_per_minute_exceeded": "Rate limit reached for tokens per minute.",
    "tokens_per_day_exceeded": "Rate limit reached for tokens per day.",
    "concurrent_requests_exceeded": "Too many requests in flight at once.",
    "max_tokens_over_quota": "max_tokens is larger than your token quota allows.",
    "quota_unavailable": "Quotas cannot be checked right now; try again shortly.",
    "identity_unavailable": "Credentials cannot be checked right now; try again shortly.",
    "sealed_invalid": "The sealed request could not be opened.",
    "sealed_unavailable": "Sealed requests are not available on this cluster.",
    "sealed_route_mismatch": "The sealed request is not for this endpoint.",
    "model_mismatch": "The model in the request does not match the endpoint's model.",
    "invalid_model_header": "The Sluice-Model header is missing or not a valid model name.",
    "unsupported_media_type": "Content-Type must be application/json (audio: multipart/form-data; sealed "
                              "requests: message/ohttp-req or message/ohttp-chunked-req).",
    "foreign_origin": "Requests from another site's pages are not accepted.",
    "form_needs_api_key": "A form upload must carry an API key in the Authorization header.",
    "body_timeout": "The request body did not arrive in time.",
    "body_incomplete": "The request body ended before it was complete.",
    "too_many_connections": "Too many connections; try again shortly.",
    "busy": "The cluster connection is busy; try again shortly.",
    "method_not_allowed": "Method not allowed.",
    "bad_content_type": "The request must be multipart/form-data with a boundary.",
    "bad_boundary": "The multipart body does not use the boundary its Content-Type names.",
    "no_final_boundary": "The multipart body does not end with its closing boundary.",
    "trailing_data": "The request body has bytes after its end.",
    "too_many_parts": "The multipart body has too many parts.",
    "bad_part_header": "A part of the multipart body has a header this endpoint does not accept.",
    "unknown_part": "The multipart body has a part this endpoint does not accept.",
    "duplicate_part": "The multipart body names a part twice.",
    "missing_part": "The multipart body has no file part.",
    "nested_multipart": "A part of the multipart body is itself multipart.",
    "bad_filename": "The file name must be plain ASCII letters, digits, dots, dashes or spaces, without a path.",
    "bad_field": "A form field is too long or not UTF-8 text.",
    "file_too_large": "The audio file is too large.",
    "not_audio": "The file is not audio in a supported container (WAV, MP3, FLAC, Ogg, WebM, M4A).",
    "store_not_supported": (
        "Sluice is stateless and stores no responses: send store: false or leave it out."
    ),
    "server_state_not_supported": (
        "Sluice is stateless: previous_response_id, conversation, background and stored prompts need "
        "state kept on the server, which Sluice never keeps. Send the whole conversation in input."
    ),
    "internal": "Internal error.",
}


def error_body(status: int, code: str) -> bytes:
    """The JSON error document for ``status`` and ``code``."""
    message = _MESSAGES.get(code)
    if message is None:
        message = "The request was rejected." if status < 500 else "The request could not be served."
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
