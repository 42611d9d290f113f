"""The web chat's server side: the files and their headers, the manifest, no-store API answers,
the session-plus-CSRF authenticator for the page's API calls, and the demo's sign-in route."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient

from appliance.api.no_store import NoStoreMiddleware
from appliance.api.openai import model_entry
from appliance.auth._db import open_database
from appliance.auth.api_keys import ApiKeyStore
from appliance.auth.base import Principal
from appliance.auth.browser import CSRF_HEADER, BrowserSessionAuthenticator, same_origin
from appliance.auth.secret import Secret
from appliance.auth.session_cookie import SessionCookieReader
from appliance.auth.sessions import SessionStore
from appliance.catalog import ModelInfo, model_info
from appliance.demo_identity import demo_identity, demo_url, is_loopback
from appliance.web_chat import CHAT_DIR, ChatPage, chat_limits, content_security_policy, load_chat_files
from policy.bodies import load_routes

PUBLIC = "http://127.0.0.1:8080"
SECRET = Secret("s" * 40)


def chat_app() -> Starlette:
    page = ChatPage(form_origins=["https://idp.example.org/realms/x"])

    async def api(_: Request) -> Response:
        return JSONResponse({"ok": True}, headers={"Cache-Control": "no-cache"})

    appliance = SimpleNamespace(routes=load_routes())
    return Starlette(
        routes=[*page.routes(appliance), Route("/v1/models", api), Route("/v1/sealed/keys", api)],  # type: ignore[arg-type]
        middleware=[Middleware(NoStoreMiddleware)],
    )


# -- files, headers, manifest ---------------------------------------------------------------


def test_page_headers_are_strict() -> None:
    with TestClient(chat_app()) as client:
        for path in ("/", "/chat/app.js", "/chat/chat.css", "/chat/manifest.json"):
            response = client.get(path)
            assert response.status_code == 200, path
            csp = response.headers["content-security-policy"]
            assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
            for directive in (
                "default-src 'none'",
                "script-src 'self'",
                "style-src 'self'",
                "connect-src 'self'",
                "frame-ancestors 'none'",
                "base-uri 'none'",
                "form-action 'self' https://idp.example.org",
            ):
                assert directive in csp, (path, directive)
            assert response.headers["x-content-type-options"] == "nosniff"
            assert response.headers["x-frame-options"] == "DENY"
            assert response.headers["referrer-policy"] == "no-referrer"
        assert client.get("/").headers["content-type"] == "text/html; charset=utf-8"
        assert client.get("/chat/app.js").headers["content-type"] == "text/javascript; charset=utf-8"


def test_manifest_lists_every_file_with_its_sha256() -> None:
    files = sorted(p.name for p in CHAT_DIR.iterdir() if not p.name.startswith("."))
    with TestClient(chat_app()) as client:
        manifest = client.get("/chat/manifest.json").json()
        assert manifest["version"] == 1
        assert sorted(manifest["files"]) == [f"/chat/{name}" for name in files]
        for url, digest in manifest["files"].items():
            body = client.get("/" if url == "/chat/index.html" else url).content
            assert hashlib.sha256(body).hexdigest() == digest
            assert hashlib.sha256((CHAT_DIR / url.removeprefix("/chat/")).read_bytes()).hexdigest() == digest


def test_etag_answers_304() -> None:
    with TestClient(chat_app()) as client:
        first = client.get("/chat/app.js")
        etag = first.headers["etag"]
        assert first.headers["cache-control"] == "no-cache"
        again = client.get("/chat/app.js", headers={"If-None-Match": etag})
        assert again.status_code == 304 and again.content == b""


@pytest.mark.parametrize(
    "path",
    [
        "/chat/../demo.py",
        "/chat/%2e%2e/demo.py",
        "/chat/app.js.bak",
        "/chat/",
        "/chat/..%2fweb_chat.py",
        "/chat/manifest.json/x",
        "/index.html",
    ],
)
def test_reject_names_outside_the_allowlist(path: str) -> None:
    with TestClient(chat_app()) as client:
        assert client.get(path).status_code == 404


def test_reject_a_folder_with_a_stray_file(tmp_path: Path) -> None:
    (tmp_path / "index.html").write_text("<!doctype html>")
    (tmp_path / "notes.py").write_text("x = 1")
    with pytest.raises(ValueError, match="not a kind of file"):
        load_chat_files(tmp_path)
    with pytest.raises(ValueError, match="not an http"):
        content_security_policy(["javascript:alert(1)"])


def test_api_answers_are_never_cached() -> None:
    with TestClient(chat_app()) as client:
        assert client.get("/v1/models").headers["cache-control"] == "no-store"
        assert client.get("/v1/sealed/keys").headers["cache-control"] == "no-cache"  # public keys: its own say
        assert client.get("/chat/config.json").headers["cache-control"] == "no-store"


def test_page_limits_come_from_the_route_policy() -> None:
    limits = chat_limits(4 * 1024 * 1024)
    assert limits == {"max_body_bytes": 4 * 1024 * 1024, "max_image_url_chars": 3145728}
    with TestClient(chat_app()) as client:
        assert client.get("/chat/config.json").json() == chat_limits(load_routes().get("chat").max_body_bytes)


# -- model states in /v1/models -------------------------------------------------------------


def test_model_entries_carry_the_state() -> None:
    info = model_info(
        {"id": "m", "ready": False, "routes": ["chat"], "status": "starting", "instances": {"ready": 0, "starting": 1}}, "c"
    )
    assert model_entry(info) == {
        "id": "m",
        "object": "model",
        "created": 0,
        "owned_by": "sluice",
        "status": "starting",
        "routes": ["chat"],
        "ready_instances": 0,
        "starting_instances": 1,
    }
    older = model_info({"id": "m", "ready": True, "routes": ["chat"]}, "c")  # a gate without states
    assert older.status == "ready" and model_entry(older)["ready_instances"] == 0
    assert model_entry(ModelInfo("m", False, frozenset(), "c"))["status"] == "unavailable"


@pytest.mark.parametrize("status", ["exploded", "", 1, None])
def test_reject_bad_model_states(status: object) -> None:
    with pytest.raises(ValueError):
        model_info({"id": "m", "ready": True, "routes": [], "status": status}, "c")


# -- the page's API calls: session cookie plus CSRF header ------------------------------------


class Inner:
    async def authenticate(self, connection: HTTPConnection) -> Principal | None:
        return Principal("bearer-user") if connection.headers.get("authorization") == "Bearer good" else None


@pytest.fixture
def browser_auth() -> tuple[BrowserSessionAuthenticator, SessionCookieReader, str]:
    db = open_database(":memory:")
    sessions = SessionStore(db, 3600)
    reader = SessionCookieReader(SECRET, secure=False, max_age=3600)
    sid = asyncio.run(sessions.create("alice", None))
    cookie = reader.sign({"sid": sid, "csrf": "token-123"})
    return BrowserSessionAuthenticator(Inner(), reader, sessions, None, PUBLIC), reader, cookie


def connection(cookie: str | None = None, method: str = "POST", **headers: str) -> HTTPConnection:
    raw = [(k.replace("_", "-").lower().encode(), v.encode()) for k, v in headers.items()]
    if cookie is not None:
        raw.append((b"cookie", f"sluice-session={cookie}".encode()))
    return HTTPConnection(
        {
            "type": "http",
            "method": method,
            "path": "/v1/chat/completions",
            "headers": raw,
            "query_string": b"",
            "client": ("127.0.0.1", 1),
        }
    )


async def _who(auth: BrowserSessionAuthenticator, conn: HTTPConnection) -> str | None:
    principal = await auth.authenticate(conn)
    return principal.user if principal else None


def run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


def test_session_with_csrf_header_is_the_user(browser_auth: tuple) -> None:  # type: ignore[type-arg]
    auth, _, cookie = browser_auth
    good = {CSRF_HEADER.replace("-", "_"): "token-123", "content_type": "application/json"}
    assert run(_who(auth, connection(cookie, **good))) == "alice"
    assert run(_who(auth, connection(cookie, **good, origin=PUBLIC, sec_fetch_site="same-origin"))) == "alice"
    # What a no-referrer page sends on its own POSTs:
    assert run(_who(auth, connection(cookie, **good, origin="null", sec_fetch_site="same-origin"))) == "alice"
    assert run(_who(auth, connection(cookie, method="GET", **{CSRF_HEADER.replace("-", "_"): "token-123"}))) == "alice"
    assert run(_who(auth, connection(cookie, **{**good, "content_type": "message/ohttp-chunked-req"}))) == "alice"


def test_reject_session_cookie_without_the_csrf_header(browser_auth: tuple) -> None:  # type: ignore[type-arg]
    auth, _, cookie = browser_auth
    assert run(_who(auth, connection(cookie, content_type="application/json"))) is None
    assert run(_who(auth, connection(cookie, x_sluice_csrf="token-12", content_type="application/json"))) is None
    assert run(_who(auth, connection(cookie, method="GET"))) is None


@pytest.mark.parametrize(
    "headers",
    [
        {"origin": "http://127.0.0.1:9999"},
        {"origin": "http://localhost:8080"},
        {"sec_fetch_site": "same-site"},
        {"sec_fetch_site": "cross-site"},
        {"origin": "null"},  # null without the browser's word that it is same-origin
        {"content_type": "text/plain"},
        {"content_type": "application/x-www-form-urlencoded"},
        {"content_type": "multipart/form-data; boundary=x"},
    ],
)
def test_reject_cross_site_shapes(browser_auth: tuple, headers: dict[str, str]) -> None:  # type: ignore[type-arg]
    auth, _, cookie = browser_auth
    sent = {"x_sluice_csrf": "token-123", "content_type": "application/json", **headers}
    assert run(_who(auth, connection(cookie, **sent))) is None


def test_bearer_keys_work_as_before(browser_auth: tuple) -> None:  # type: ignore[type-arg]
    auth, _, cookie = browser_auth
    assert run(_who(auth, connection(authorization="Bearer good"))) == "bearer-user"
    assert run(_who(auth, connection(cookie, authorization="Bearer good"))) == "bearer-user"
    assert run(_who(auth, connection(authorization="Bearer bad"))) is None
    assert run(_who(auth, connection())) is None


def test_reject_ended_or_forged_sessions(browser_auth: tuple) -> None:  # type: ignore[type-arg]
    auth, reader, _ = browser_auth
    headers = {"x_sluice_csrf": "token-123", "content_type": "application/json"}
    ended = reader.sign({"sid": "no-such-session", "csrf": "token-123"})
    assert run(_who(auth, connection(ended, **headers))) is None
    forged = SessionCookieReader(Secret("x" * 40), secure=False, max_age=3600).sign({"sid": "a", "csrf": "token-123"})
    assert run(_who(auth, connection(forged, **headers))) is None


def test_same_origin_rules() -> None:
    def conn(**headers: str) -> HTTPConnection:
        return connection(**headers)

    assert same_origin(conn(), PUBLIC) and not same_origin(conn(), PUBLIC, required=True)
    assert same_origin(conn(origin=PUBLIC), PUBLIC, required=True)
    assert same_origin(conn(origin="null", sec_fetch_site="same-origin"), PUBLIC, required=True)
    assert not same_origin(conn(origin="null"), PUBLIC)
    assert not same_origin(conn(origin=PUBLIC, sec_fetch_site="cross-site"), PUBLIC)


# -- the demo's sign-in: loopback only ------------------------------------------------------------


def demo_client(tmp_path: Path, host: str) -> TestClient:
    url = demo_url(host, 8080)
    identity = demo_identity(tmp_path, url, host, ApiKeyStore())

    async def models(_: Principal) -> list[str]:
        return ["standin-chat"]

    app = Starlette(routes=identity.pages(models).routes())  # type: ignore[misc]
    return TestClient(app, base_url=url)


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost"])
def test_demo_sign_in_on_loopback(tmp_path: Path, host: str) -> None:
    assert is_loopback(host)
    with demo_client(tmp_path, host) as client:
        url = demo_url(host, 8080)
        info = client.get("/account/session").json()
        assert info == {"signed_in": False, "sign_in": None, "demo_sign_in": "/account/demo-sign-in"}
        response = client.post("/account/demo-sign-in", headers={"Origin": url}, follow_redirects=False)
        assert response.status_code == 303 and response.headers["location"] == "/"
        assert "SameSite=Strict" in response.headers["set-cookie"]
        info = client.get("/account/session").json()
        assert info["signed_in"] and info["user"] == "demo#demo" and len(info["csrf"]) >= 32


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.10", "::", "demo.example.org"])
def test_reject_demo_sign_in_off_loopback(tmp_path: Path, host: str) -> None:
    assert not is_loopback(host)
    with demo_client(tmp_path, host) as client:
        assert client.get("/account/session").json()["demo_sign_in"] is None
        response = client.post("/account/demo-sign-in", headers={"Origin": demo_url(host, 8080)})
        assert response.status_code in (404, 405)  # the route does not exist


def test_reject_demo_sign_in_from_another_origin(tmp_path: Path) -> None:
    with demo_client(tmp_path, "127.0.0.1") as client:
        for headers in (
            {"Origin": "http://127.0.0.1:9999"},
            {},
            {"Sec-Fetch-Site": "cross-site"},
            {"Origin": "null", "Sec-Fetch-Site": "same-site"},
        ):
            response = client.post("/account/demo-sign-in", headers=headers, follow_redirects=False)
            assert response.status_code == 403, headers
        assert client.get("/account/session").json()["signed_in"] is False


def test_session_info_is_json_and_never_cached(tmp_path: Path) -> None:
    with demo_client(tmp_path, "127.0.0.1") as client:
        response = client.get("/account/session")
        assert response.headers["content-type"] == "application/json"
        assert response.headers["cache-control"] == "no-store"
        json.loads(response.content)


class ProxyHeader:
    """Stands for the trusted-header authenticator: the proxy names the user."""

    async def authenticate(self, connection: HTTPConnection) -> Principal | None:
        user = connection.headers.get("x-remote-user")
        return Principal(user) if user else None


def test_trusted_header_mode_needs_the_token_once_the_page_has_one() -> None:
    db = open_database(":memory:")
    reader = SessionCookieReader(SECRET, secure=False, max_age=3600)
    auth = BrowserSessionAuthenticator(ProxyHeader(), reader, SessionStore(db, 3600), None, PUBLIC)
    cookie = reader.sign({"csrf": "token-123"})  # header mode: the cookie holds only the page's token
    body = {"content_type": "application/json", "x_remote_user": "bob"}
    assert run(_who(auth, connection(cookie, **body, x_sluice_csrf="token-123"))) == "bob"
    assert run(_who(auth, connection(cookie, **body))) is None
    assert run(_who(auth, connection(**body))) == "bob"  # API clients behind the proxy, as before
    # A browser request from another site is refused even without our cookie (the proxy adds the header).
    assert run(_who(auth, connection(**body, origin="http://evil.example", sec_fetch_site="cross-site"))) is None


def test_sign_out_from_a_no_referrer_page(tmp_path: Path) -> None:
    """Pages served with Referrer-Policy: no-referrer (the chat, the account pages) POST with
    ``Origin: null``; Sec-Fetch-Site says it is our own page.  Before, sign-out was refused."""
    with demo_client(tmp_path, "127.0.0.1") as client:
        client.post("/account/demo-sign-in", headers={"Origin": "http://127.0.0.1:8080"})
        csrf = client.get("/account/session").json()["csrf"]
        refused = client.post("/account/logout", data={"csrf": csrf}, headers={"Origin": "null"}, follow_redirects=False)
        assert refused.status_code == 403 and client.get("/account/session").json()["signed_in"]
        done = client.post(
            "/account/logout",
            data={"csrf": csrf},
            headers={"Origin": "null", "Sec-Fetch-Site": "same-origin"},
            follow_redirects=False,
        )
        assert done.status_code == 303 and done.headers["location"] == "/account/signed-out"
        assert client.get("/account/session").json()["signed_in"] is False
