"""The API guard on the form routes (audio uploads): multipart/form-data, and only with an API key."""

from __future__ import annotations

import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.testclient import TestClient

from appliance.middleware import FrontMiddleware
from policy.bodies import load_routes

FORM_PATHS = [r.path for r in load_routes().routes.values() if r.form is not None]
FORM = {"Content-Type": "multipart/form-data; boundary=x"}
KEY = {"Authorization": "Bearer sk-test"}


async def _ok(request: Request) -> Response:
    return Response("passed")


def _client() -> TestClient:
    app = Starlette(
        routes=[Route(path, _ok, methods=["POST"]) for path in [*FORM_PATHS, "/v1/chat/completions"]],
        middleware=[Middleware(FrontMiddleware, form_paths=FORM_PATHS)],
    )
    return TestClient(app)


def test_the_audio_routes_are_the_form_paths() -> None:
    assert set(FORM_PATHS) == {"/v1/audio/transcriptions", "/v1/audio/translations"}


@pytest.mark.parametrize("path", FORM_PATHS)
def test_a_form_with_an_api_key_passes(path: str) -> None:
    answer = _client().post(path, content=b"--x--\r\n", headers={**FORM, **KEY})
    assert answer.status_code == 200 and answer.text == "passed"


@pytest.mark.parametrize("path", FORM_PATHS)
def test_reject_a_form_without_an_api_key(path: str) -> None:
    """A cross-site HTML form can post multipart/form-data with the browser's cookies, never a header."""
    answer = _client().post(path, content=b"--x--\r\n", headers={**FORM, "Cookie": "session=1"})
    assert answer.status_code == 403 and answer.json()["error"]["code"] == "form_needs_api_key"


@pytest.mark.parametrize("path", FORM_PATHS)
def test_reject_a_form_from_a_foreign_origin(path: str) -> None:
    answer = _client().post(path, content=b"--x--\r\n", headers={**FORM, **KEY, "Origin": "https://evil.example"})
    assert answer.status_code == 403 and answer.json()["error"]["code"] == "foreign_origin"


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "application/json"])
def test_reject_other_types_on_a_form_route(content_type: str) -> None:
    answer = _client().post(FORM_PATHS[0], content=b"{}", headers={"Content-Type": content_type, **KEY})
    assert answer.status_code == 415 and answer.json()["error"]["code"] == "unsupported_media_type"


def test_reject_a_form_on_a_json_route() -> None:
    answer = _client().post("/v1/chat/completions", content=b"--x--\r\n", headers={**FORM, **KEY})
    assert answer.status_code == 415
