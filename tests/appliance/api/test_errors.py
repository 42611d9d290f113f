"""Errors in OpenAI's shape (appliance/api/errors.py): fixed messages by code, the type by
status, and Retry-After on what a client should try again."""

from __future__ import annotations

import json

import pytest

from appliance.api.errors import error_body, error_response, from_error
from policy.errors import BackendFailed, BodyRejected, NoBackend, SluiceError


def _document(body: bytes) -> dict[str, object]:
    document = json.loads(body)
    assert list(document) == ["error"] and sorted(document["error"]) == ["code", "message", "param", "type"]
    return document["error"]  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (403, "permission_error"),
        (404, "not_found_error"),
        (413, "invalid_request_error"),
        (429, "rate_limit_error"),
        (409, "invalid_request_error"),
        (500, "server_error"),
        (502, "server_error"),
        (503, "server_error"),
    ],
)
def test_type_follows_the_status(status: int, kind: str) -> None:
    error = _document(error_body(status, "internal"))
    assert error["type"] == kind and error["code"] == "internal" and error["param"] is None


def test_a_known_code_has_its_own_fixed_message() -> None:
    error = _document(error_body(404, "model_not_found"))
    assert error["message"] == "The model does not exist or you do not have access to it."


@pytest.mark.parametrize(
    ("status", "message"),
    [
        (422, "The request was rejected."),
        (502, "The request could not be served."),
    ],
)
def test_reject_echoing_an_unknown_code_as_its_message(status: int, message: str) -> None:
    """A code with no message of its own gets a generic one, never text made from the code."""
    error = _document(error_body(status, "some_new_code"))
    assert error["message"] == message and error["code"] == "some_new_code"


def test_response_is_json_with_its_status_and_headers() -> None:
    response = error_response(413, "body_too_large", {"X-Test": "1"})
    assert response.status_code == 413 and response.headers["content-type"] == "application/json"
    assert response.headers["x-test"] == "1"
    assert _document(response.body)["message"] == "The request body is too large."


@pytest.mark.parametrize("error", [NoBackend(), SluiceError("busy", 503), SluiceError("requests_per_minute_exceeded", 429)])
def test_try_again_statuses_say_when(error: SluiceError) -> None:
    response = from_error(error)
    assert response.status_code == error.status and response.headers["retry-after"] == "5"


@pytest.mark.parametrize("error", [BackendFailed(), BodyRejected("unknown_field"), SluiceError()])
def test_other_statuses_carry_no_retry_after(error: SluiceError) -> None:
    response = from_error(error)
    assert response.status_code == error.status and "retry-after" not in response.headers
    assert _document(response.body)["code"] == error.code


@pytest.mark.parametrize(("retry_after", "header"), [(0.0, "1"), (0.2, "1"), (1.0, "1"), (2.5, "3"), (59.001, "60")])
def test_retry_after_of_the_error_rounds_up_to_whole_seconds(retry_after: float, header: str) -> None:
    error = SluiceError("tokens_per_minute_exceeded", 429)
    error.retry_after = retry_after  # type: ignore[attr-defined]
    assert from_error(error).headers["retry-after"] == header


def test_the_errors_own_headers_are_sent_and_the_callers_win() -> None:
    error = SluiceError("tokens_per_minute_exceeded", 429)
    error.headers = {"x-ratelimit-remaining-tokens": "0", "X-Both": "error"}  # type: ignore[attr-defined]
    response = from_error(error, {"X-Both": "caller"})
    assert response.headers["x-ratelimit-remaining-tokens"] == "0" and response.headers["x-both"] == "caller"
    assert response.headers["retry-after"] == "5"
