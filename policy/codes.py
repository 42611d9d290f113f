"""Every error code a client, an SDK or a log can meet, with its status and message.

One registry for the gate, the scheduler and the appliance: a code is a short,
fixed name (never the offending input); its entry gives the HTTP status it is
normally sent with and the one fixed sentence an API client reads
(``appliance/api/errors.py`` renders it in OpenAI's error shape).  A code that
is not here gets a generic sentence for its status class: that is meant only
for codes relayed from elsewhere (a gate of another version, an upstream), and
``tests/security/test_error_codes.py`` fails when a code raised anywhere in
Sluice is missing here, or when an entry here is raised nowhere.

Standard library only: the gate imports this too.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

__all__ = ["Code", "CODES", "message_for"]


@dataclass(frozen=True, slots=True)
class Code:
    status: int
    message: str


def _table(*groups: dict[str, tuple[int, str]]) -> MappingProxyType[str, Code]:
    merged: dict[str, Code] = {}
    for group in groups:
        for code, (status, message) in group.items():
            if code in merged:
                raise ValueError(f"error code {code!r} is listed twice")
            merged[code] = Code(status, message)
    return MappingProxyType(merged)


# The base classes' own codes (policy/errors.py).
_GENERAL: Final = {
    "internal": (500, "Internal error."),
    "bad_config": (500, "Internal error: the configuration is not valid."),
    "bad_request": (400, "The request is not acceptable."),
    "disallowed": (400, "The request is outside the gate's grammar."),
    "invalid_body": (422, "The request body breaks this endpoint's policy."),
    "not_found": (404, "Not found."),
    "method_not_allowed": (405, "Method not allowed."),
}

# Models, routes, backends and the way to the cluster.
_SERVING: Final = {
    "model_not_found": (404, "The model does not exist or you do not have access to it."),
    "route_not_served": (404, "The model does not serve this endpoint."),
    "no_backend": (503, "No instance of the model is ready; try again shortly."),
    "backend_failed": (502, "The model server failed to answer."),
    "backend_timeout": (504, "The model server did not answer in time."),
    "backend_rejected": (400, "The model server rejected the request."),
    "bad_event_stream": (502, "The model server sent a malformed event stream."),
    "bad_model_listing": (502, "The cluster sent a malformed model listing."),
    "response_too_large": (502, "The model server's answer is too large."),
    "upstream_rejected": (400, "The upstream provider rejected the request."),
    "overloaded": (503, "The cluster is overloaded; try again shortly."),
    "busy": (503, "The cluster connection is busy; try again shortly."),
    "too_many_streams": (503, "Too many requests in flight on one cluster connection; try again shortly."),
    "gate_memory": (503, "The gate holds too much unsent data; try again shortly."),
    "client_too_slow": (503, "The answer was not read fast enough and was cancelled."),
    "cluster_unavailable": (503, "The cluster is not reachable; try again shortly."),
    "gate_closed": (503, "The connection to the cluster closed; try again shortly."),
    "gate_start_failed": (503, "The connection to the cluster could not be opened; try again shortly."),
    "gate_protocol": (503, "The cluster sent something out of protocol; try again shortly."),
    "bad_gate_error": (502, "The cluster sent a malformed error."),
    "closing": (503, "The cluster connection is closing; try again shortly."),
    "session_exhausted": (503, "The cluster connection has used up its streams; try again shortly."),
    "too_many_connections": (503, "Too many connections; try again shortly."),
    "sealed_invalid": (400, "The sealed request could not be opened."),
    "sealed_unavailable": (503, "Sealed requests are not available on this cluster."),
    "sealed_route_mismatch": (400, "The sealed request is not for this endpoint."),
    "model_mismatch": (400, "The model in the request does not match the endpoint's model."),
}

# The gate's grammar and its frames (policy/grammar.py, policy/frames.py, cluster/gate/, and the
# appliance's reading of the gate's frames): violations end the session.
_PROTOCOL: Final = {
    "bad_command": (400, "The gate command is not in the grammar."),
    "line_too_long": (400, "The gate command line is too long."),
    "unknown_route": (400, "The gate command names a route that does not exist."),
    "body_length": (400, "The declared body length is out of range."),
    "body_short": (400, "The request body ended before its declared length."),
    "body_overrun": (400, "The request body is longer than its declared length."),
    "frame_kind": (400, "A frame has an unknown kind."),
    "frame_length": (400, "A frame is too long."),
    "frame_stream": (400, "A frame names a stream it may not name."),
    "frame_flood": (400, "Too many frames in too short a time."),
    "refused_flood": (400, "Too many refused requests on one session."),
    "stream_reuse": (400, "A stream id was used twice."),
    "stream_gap": (400, "A stream id skipped ahead."),
    "data_without_stream": (400, "A body frame names no open stream."),
    "pending_bodies": (400, "Too many request bodies are pending."),
    "cancel_unknown": (400, "A cancel names no open stream."),
    "session_idle": (400, "The session was idle too long."),
    "truncated_frame": (400, "The session ended inside a frame."),
    "head_twice": (400, "The gate sent a reply head twice."),
    "bad_head": (400, "The gate sent a malformed reply head."),
    "body_before_head": (400, "The gate sent a reply body before its head."),
    "end_before_head": (400, "The gate ended a reply before its head."),
}

# Request bodies: strict JSON (policy/_strict_json.py), the routes' field policy
# (policy/_schema.py, policy/bodies.py, policy/_responses.py), multipart audio uploads
# (policy/multipart.py, policy/_forms.py, policy/_audio.py).
_BODIES: Final = {
    "body_too_large": (413, "The request body is too large."),
    "invalid_json": (400, "The request body is not valid JSON."),
    "not_object": (400, "The request body is not a JSON object."),
    "byte_order_mark": (400, "The request body starts with a byte order mark."),
    "duplicate_key": (400, "The request body has a duplicate key."),
    "too_deep": (400, "The request body is nested too deeply."),
    "bad_number": (400, "The request body has a number out of range."),
    "bad_string": (400, "The request body has an invalid string."),
    "bad_encoding": (400, "The request body is not valid UTF-8."),
    "trailing_data": (400, "The request body has bytes after its end."),
    "unknown_field": (422, "The request has a field this endpoint does not accept."),
    "wrong_type": (422, "A request field has the wrong type."),
    "out_of_range": (422, "A request field is out of range."),
    "too_long": (422, "A request field is too long or has too many items."),
    "too_short": (422, "A request field is empty or too short."),
    "missing_field": (422, "A required request field is missing."),
    "bad_value": (422, "A request field has a value this endpoint does not accept."),
    "stream_not_allowed": (422, "This endpoint does not stream."),
    "stream_options_without_stream": (422, "stream_options is only allowed with stream: true."),
    "store_not_supported": (422, "Sluice is stateless and stores no responses: send store: false or leave it out."),
    "server_state_not_supported": (
        422,
        "Sluice is stateless: previous_response_id, conversation, background and stored prompts need "
        "state kept on the server, which Sluice never keeps. Send the whole conversation in input.",
    ),
    "bad_content_type": (415, "The request must be multipart/form-data with a boundary."),
    "bad_boundary": (400, "The multipart body does not use the boundary its Content-Type names."),
    "no_final_boundary": (400, "The multipart body does not end with its closing boundary."),
    "too_many_parts": (400, "The multipart body has too many parts."),
    "bad_part_header": (400, "A part of the multipart body has a header this endpoint does not accept."),
    "unknown_part": (400, "The multipart body has a part this endpoint does not accept."),
    "duplicate_part": (400, "The multipart body names a part twice."),
    "missing_part": (400, "The multipart body has no file part."),
    "nested_multipart": (400, "A part of the multipart body is itself multipart."),
    "bad_filename": (400, "The file name must be plain ASCII letters, digits, dots, dashes or spaces, without a path."),
    "bad_field": (400, "A form field is too long or not UTF-8 text."),
    "file_too_large": (413, "The audio file is too large."),
    "not_audio": (400, "The file is not audio in a supported container (WAV, MP3, FLAC, Ogg, WebM, M4A)."),
}

# The appliance's front door: keys, headers, media types, body deadlines, quotas.
_FRONT: Final = {
    "invalid_api_key": (401, "Invalid or missing API key."),
    "invalid_model_header": (400, "The Sluice-Model header is missing or not a valid model name."),
    "unsupported_media_type": (
        415,
        "Content-Type must be application/json (audio: multipart/form-data; sealed "
        "requests: message/ohttp-req or message/ohttp-chunked-req).",
    ),
    "foreign_origin": (403, "Requests from another site's pages are not accepted."),
    "form_needs_api_key": (403, "A form upload must carry an API key in the Authorization header."),
    "body_timeout": (408, "The request body did not arrive in time."),
    "body_incomplete": (400, "The request body ended before it was complete."),
    "identity_unavailable": (503, "Credentials cannot be checked right now; try again shortly."),
    "header_spoofed": (401, "The request carried an identity header it may not carry."),
    "rate_limited": (429, "Too many requests; try again shortly."),
    "requests_per_minute_exceeded": (429, "Rate limit reached for requests per minute."),
    "tokens_per_minute_exceeded": (429, "Rate limit reached for tokens per minute."),
    "tokens_per_day_exceeded": (429, "Rate limit reached for tokens per day."),
    "concurrent_requests_exceeded": (429, "Too many requests in flight at once."),
    "max_tokens_over_quota": (429, "max_tokens is larger than your token quota allows."),
    "quota_unavailable": (503, "Quotas cannot be checked right now; try again shortly."),
    "metrics_closed": (403, "Metrics are not served here."),
    "invalid_metrics_token": (401, "Invalid or missing metrics token."),
}

# Why a bearer token (appliance/auth/tokens.py) or a sign-in (appliance/auth/oidc.py) was
# refused: for logs and the sign-in error page; an API client sees invalid_api_key.
_SIGN_IN: Final = {
    "malformed": (401, "The token is malformed."),
    "invalid": (401, "The token is not valid."),
    "expired": (401, "The token has expired."),
    "not_yet_valid": (401, "The token is not valid yet."),
    "bad_signature": (401, "The token's signature does not verify."),
    "algorithm_not_allowed": (401, "The token is signed with an algorithm that is not allowed."),
    "critical_header": (401, "The token has a critical header that is not understood."),
    "unknown_key": (401, "The token is signed with an unknown key."),
    "wrong_issuer": (401, "The token or sign-in is from another issuer."),
    "wrong_audience": (401, "The token is for another audience."),
    "wrong_nonce": (401, "The token's nonce does not match the sign-in."),
    "missing_claim": (401, "The token lacks a required claim."),
    "missing_scope": (401, "The token lacks the required scope."),
    "bad_exp": (401, "The token's expiry is not a number."),
    "bad_nbf": (401, "The token's not-before time is not a number."),
    "bad_iat": (401, "The token's issue time is not a number."),
    "bad_claims": (401, "The sign-in's claims are not acceptable."),
    "id_token_wrong_azp": (401, "The sign-in's ID token names another client."),
    "login_expired": (401, "The sign-in took too long; start again."),
    "no_code": (401, "The sign-in answer carries no authorization code."),
    "no_id_token": (401, "The provider sent no ID token."),
    "no_login_in_progress": (401, "No sign-in is in progress; start again."),
    "provider_refused": (401, "The identity provider refused the sign-in."),
    "repeated_parameter": (401, "The sign-in answer repeats a parameter."),
    "state_mismatch": (401, "The sign-in answer does not belong to this sign-in."),
    "token_request_failed": (401, "The identity provider did not issue tokens."),
    "userinfo_wrong_subject": (401, "The provider's user information is for another user."),
}

# The gate's own HTTP/1.1 client (cluster/_http1.py): what a backend sent that is not strict
# HTTP/1.1, and what we refused to send.
_HTTP: Final = {
    "bad_http": (400, "The backend's answer is not valid HTTP/1.1."),
    "bad_http_local": (500, "Internal error: a request to the backend is not valid HTTP/1.1."),
    "bare_lf": (400, "The HTTP message has a line that does not end with CRLF."),
    "head_too_large": (431, "The HTTP head is too large."),
    "head_incomplete": (400, "The HTTP head ended before it was complete."),
    "too_many_headers": (431, "The HTTP head has too many fields."),
    "bad_status_line": (400, "The HTTP status line is malformed."),
    "bad_request_line": (400, "The HTTP request line is malformed."),
    "bad_header": (400, "An HTTP header field is malformed."),
    "duplicate_header": (400, "An HTTP header field appears twice."),
    "bad_host": (400, "The HTTP Host field is malformed."),
    "bad_content_length": (400, "The HTTP Content-Length is malformed."),
    "duplicate_content_length": (400, "The HTTP message has two Content-Length fields."),
    "conflicting_length": (400, "The HTTP message has both Content-Length and Transfer-Encoding."),
    "unsupported_transfer_encoding": (501, "The HTTP Transfer-Encoding is not supported."),
    "transfer_encoding_http10": (400, "An HTTP/1.0 message may not use Transfer-Encoding."),
    "unexpected_informational": (400, "The HTTP answer has an unexpected informational status."),
    "body_truncated": (400, "The HTTP body ended before it was complete."),
    "bad_chunk_size": (400, "An HTTP chunk size is malformed."),
    "bad_chunk_end": (400, "An HTTP chunk does not end with CRLF."),
    "chunk_line_too_long": (400, "An HTTP chunk line is too long."),
    "too_many_trailers": (400, "The HTTP message has too many trailer fields."),
    "bad_method": (500, "Internal error: an HTTP method is not valid."),
    "bad_path": (500, "Internal error: an HTTP path is not valid."),
    "bad_port": (500, "Internal error: an HTTP port is not valid."),
    "bad_token": (500, "Internal error: an HTTP field value is not valid."),
    "bad_framing": (500, "Internal error: an HTTP message has no valid framing."),
    "bad_status": (500, "Internal error: an HTTP status is not valid."),
    "empty_chunk": (500, "Internal error: an empty HTTP chunk would end the body."),
}

# The built-in stand-in model server (cluster/standin/): what it refuses, as a backend would.
_STANDIN: Final = {
    "invalid_query": (400, "The query must be a non-empty string."),
    "invalid_documents": (400, "documents must be a string or a non-empty list of strings."),
    "invalid_top_n": (400, "top_n must be a positive whole number."),
    "invalid_text_1": (400, "text_1 must be a string or a non-empty list of strings."),
    "invalid_text_2": (400, "text_2 must be a string or a non-empty list of strings."),
    "text_lengths_differ": (400, "The two lists of texts must have the same length."),
}

CODES: Final = _table(_GENERAL, _SERVING, _PROTOCOL, _BODIES, _FRONT, _SIGN_IN, _HTTP, _STANDIN)


def message_for(code: str, status: int) -> str:
    """The fixed message for ``code``; for a code not listed (relayed from another
    version), a generic one for ``status``, never text made from the code."""
    entry = CODES.get(code)
    if entry is not None:
        return entry.message
    return "The request was rejected." if status < 500 else "The request could not be served."
