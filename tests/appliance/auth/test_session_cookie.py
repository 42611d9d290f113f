"""The session cookie: signed, expiring, HttpOnly, Secure, SameSite, and __Host- when secure."""

from __future__ import annotations

import time

import itsdangerous
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from appliance.auth.secret import Secret
from appliance.auth.session_cookie import SessionCookieMiddleware

SECRET = Secret("k" * 40)


async def write(request: Request) -> JSONResponse:
    request.session["sid"] = "abc"
    return JSONResponse({})


async def read(request: Request) -> JSONResponse:
    return JSONResponse(dict(request.session))


async def clear(request: Request) -> JSONResponse:
    request.session.clear()
    return JSONResponse({})


def app(secure: bool, max_age: int = 60) -> Starlette:
    return Starlette(
        routes=[Route("/write", write), Route("/read", read), Route("/clear", clear)],
        middleware=[Middleware(SessionCookieMiddleware, secret=SECRET, secure=secure, samesite="lax", max_age=max_age)],
    )


def test_flags_secure() -> None:
    with TestClient(app(secure=True), base_url="https://testserver") as client:
        cookie = client.get("/write").headers["set-cookie"]
        assert cookie.startswith("__Host-sluice-session=")
        for flag in ("Path=/", "HttpOnly", "SameSite=Lax", "Secure", "Max-Age=60"):
            assert flag in cookie
        assert "Domain" not in cookie
        assert client.get("/read").json() == {"sid": "abc"}


def test_flags_local_http() -> None:
    with TestClient(app(secure=False)) as client:
        cookie = client.get("/write").headers["set-cookie"]
        assert cookie.startswith("sluice-session=") and "Secure" not in cookie and "HttpOnly" in cookie
        assert client.get("/read").json() == {"sid": "abc"}
        cleared = client.get("/clear").headers["set-cookie"]
        assert "Max-Age=0" in cleared


def test_reject_tampered_foreign_and_old_cookies() -> None:
    with TestClient(app(secure=False)) as client:
        value = client.get("/write").cookies["sluice-session"]

        def read_with(cookie: str) -> object:
            client.cookies.clear()
            return client.get("/read", headers={"Cookie": f"sluice-session={cookie}"}).json()

        assert read_with(value) == {"sid": "abc"}
        # Flip a character inside the signature, not the last one: the last base64 character
        # of a 32-byte MAC also carries padding bits, so some changes to it decode the same.
        at = len(value) - 5
        assert read_with(value[:at] + ("A" if value[at] != "A" else "B") + value[at + 1 :]) == {}
        assert read_with(itsdangerous.TimestampSigner("another secret" * 3).sign(b"eyJzaWQiOiJ4In0=").decode()) == {}
        assert read_with("x" * 5000) == {}
    with TestClient(app(secure=False, max_age=1)) as client:
        client.get("/write")
        time.sleep(2.1)
        assert client.get("/read").json() == {}
