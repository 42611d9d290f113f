"""Identity end to end: a real OpenID provider process, the appliance as deployed (`sluice serve`).

The provider (``oidc-provider-mock``) signs users in without a browser; the
appliance runs from a configuration file with OIDC sign-in, Bearer JWTs,
trusted-header mode, a group policy file, the key database, and an external
model pointed at a stand-in server.  The official ``openai`` client makes the
API calls.  The done-when of the identity issue is
``test_login_key_openai_and_losing_access``.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx2
import jwt
import openai
import pytest

from tests.conftest import ROOT, Cluster, Standin, free_port, start_standin, stop
from tests.services.oidc import OidcProvider, start_oidc_provider

pytestmark = pytest.mark.integration

WEB_CLIENT = "sluice-web"
API_AUDIENCE = "sluice-api"
PROXY_ISSUER = "https://proxy.example.org"
ALICE = {"sub": "alice", "email": "alice@example.org", "name": "Alice Example", "groups": ["staff"]}
BOB = {"sub": "bob", "email": "bob@example.org", "name": "Bob Guest", "groups": ["guests"]}
POLICY = """
[groups.staff]
models = ["standin-*", "ext-chat"]

[groups.embedders]
models = ["standin-embed"]
"""


@dataclass
class Running:
    url: str
    process: subprocess.Popen[bytes]
    provider: OidcProvider
    config: Path
    log: Path
    database: Path
    external: Standin

    def client(self, key: str, external: bool = False) -> openai.OpenAI:
        base = f"{self.url}/external/v1" if external else f"{self.url}/v1"
        return openai.OpenAI(base_url=base, api_key=key, max_retries=0, timeout=30)

    def events(self) -> list[dict[str, object]]:
        found = []
        for line in self.log.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    found.append(json.loads(line))
                except ValueError:
                    pass
        return found


def _config(directory: Path, port: int, cluster: Cluster, provider: OidcProvider, external: Standin, extra: str = "") -> Path:
    (directory / "session.key").write_text(base64.b64encode(bytes(range(48))).decode())
    (directory / "session.key").chmod(0o600)
    (directory / "external.key").write_text(external.token)
    (directory / "external.key").chmod(0o600)
    (directory / "access.toml").write_text(POLICY)
    (directory / "oidc-secret").write_text("client-secret-for-the-test-provider")
    (directory / "oidc-secret").chmod(0o600)
    gate = json.dumps(cluster.gate_argv())
    config = directory / "appliance.toml"
    config.write_text(
        f"""
[server]
port = {port}
keepalive_interval = 1
request_timeout = 30

[[clusters]]
name = "local"
transport = "local"
mode = "mux"
gate_command = {gate}

[auth]
database = "auth.sqlite3"
public_url = "http://127.0.0.1:{port}"
session_secret_file = "session.key"
cookie_secure = false
session_lifetime = 3600

[auth.trusted_header]
proxies = ["127.0.0.1/32"]
user_header = "X-Remote-User"
groups_header = "X-Remote-Groups"
issuer = "{PROXY_ISSUER}"

[oidc]
issuer = "{provider.issuer}"
client_id = "{WEB_CLIENT}"
client_secret_file = "oidc-secret"
scopes = ["openid", "email", "profile"]
leeway = 0
api_audience = "{API_AUDIENCE}"

[access]
policy = "access.toml"

[[external]]
name = "partner"
base_url = "{external.url}/v1"
api_key_file = "external.key"
models = ["ext-chat"]
groups = ["staff"]
routes = ["chat"]
requests_per_minute = 4
max_tokens = 40
"""
        + extra
    )
    return config


@pytest.fixture(scope="module")
def running(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    with run_identity_appliance(cluster, tmp_path_factory.mktemp("identity")) as found:
        yield found


@contextlib.contextmanager
def run_identity_appliance(cluster: Cluster, directory: Path, extra_toml: str = "") -> Iterator[Running]:
    """`sluice serve` with OIDC, trusted headers, JWTs and an external model; ``extra_toml`` is appended."""
    provider = start_oidc_provider(ALICE, BOB)
    external = start_standin("ext-chat", "chat")
    port = free_port()
    config = _config(directory, port, cluster, provider, external, extra_toml)
    log = directory / "appliance.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "appliance.cli", "serve", "--config", str(config)],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=sink,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx2.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx2.HTTPError:
                pass
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(f"sluice serve did not start: {log.read_text()}")
            time.sleep(0.1)
        yield Running(url, process, provider, config, log, directory / "auth.sqlite3", external)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        provider.stop()
        stop(external.process)


# -- helpers ------------------------------------------------------------------------------


def sign_in(running: Running, sub: str) -> httpx2.Client:
    """A browser-like client signed in as ``sub`` through the provider."""
    client = httpx2.Client(base_url=running.url, timeout=30)
    response = client.get("/account/")
    assert response.status_code == 302 and response.headers["location"] == "/account/login"
    response = client.get("/account/login")
    assert response.status_code == 302
    authorize = response.headers["location"]
    assert authorize.startswith(f"{running.provider.issuer}/oauth2/authorize?")
    with httpx2.Client(timeout=30) as browser_at_provider:
        callback = running.provider.authorize(browser_at_provider, authorize, sub)
    assert callback.startswith(f"{running.url}/account/callback?")
    response = client.get(callback)
    assert response.status_code == 303 and response.headers["location"] == "/account/", response.text
    return client


def csrf(page: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', page)
    assert match, page
    return match.group(1)


def create_key(client: httpx2.Client, name: str, models: list[str] | None = None, days: int = 30) -> str:
    page = client.get("/account/")
    assert page.status_code == 200
    data: dict[str, object] = {"csrf": csrf(page.text), "name": name, "expires_days": str(days)}
    if models:
        data["model"] = models
    response = client.post("/account/keys", data=data)
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    match = re.search(r'<code id="new-key">(sk-sluice-[a-z2-7]{12}-[A-Za-z0-9_-]{43})</code>', response.text)
    assert match, response.text
    return match.group(1)


def key_id(key: str) -> str:
    return key.split("-")[2]


def chat(client: openai.OpenAI, model: str = "standin-chat") -> str:
    answer = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=3)
    return answer.choices[0].message.content or ""


# -- the done-when --------------------------------------------------------------------------


def test_login_key_openai_and_losing_access(running: Running) -> None:
    browser = sign_in(running, "alice")
    page = browser.get("/account/").text
    assert "Alice Example" in page and "staff" in page
    assert re.search(r'<ul id="models"><li>ext-chat</li><li>standin-chat</li><li>standin-embed</li></ul>', page)

    # A key made in the session works with the official client, for what alice's groups allow.
    key = create_key(browser, "laptop")
    client = running.client(key)
    assert {m.id for m in client.models.list()} == {"standin-chat", "standin-embed"}
    assert chat(client)
    assert len(client.embeddings.create(model="standin-embed", input="x").data) == 1

    # Revoked from the session: refused at once.
    page = browser.get("/account/").text
    response = browser.post(f"/account/keys/{key_id(key)}/revoke", data={"csrf": csrf(page)})
    assert response.status_code == 303
    with pytest.raises(openai.AuthenticationError):
        chat(client)
    assert re.search(rf'<tr id="key-{key_id(key)}">.*<td>revoked</td>', browser.get("/account/").text)

    # The provider moves alice out of "staff": at her next sign-in her keys follow.
    second = create_key(browser, "second")
    assert chat(running.client(second))
    running.provider.set_user("alice", {**ALICE, "groups": ["embedders"]})
    try:
        sign_in(running, "alice").close()
        client = running.client(second)
        assert [m.id for m in client.models.list()] == ["standin-embed"]
        with pytest.raises(openai.NotFoundError):
            chat(client)
        assert len(client.embeddings.create(model="standin-embed", input="x").data) == 1
    finally:
        running.provider.set_user("alice", ALICE)
        sign_in(running, "alice").close()
    assert chat(running.client(second))
    browser.close()


# -- sign-in, session and keys ------------------------------------------------------------------


def test_session_cookie_flags_and_logout(running: Running) -> None:
    client = httpx2.Client(base_url=running.url, timeout=30)
    response = client.get("/account/login")
    cookie = response.headers["set-cookie"]
    assert cookie.startswith("sluice-session=")
    for flag in ("HttpOnly", "SameSite=Lax", "Path=/", "Max-Age=3600"):
        assert flag in cookie
    params = httpx2.URL(response.headers["location"]).params
    assert params["code_challenge_method"] == "S256" and len(params["code_challenge"]) == 43
    assert params["state"] and params["nonce"] and params["response_type"] == "code"
    client.close()

    browser = sign_in(running, "alice")
    stolen = dict(browser.cookies)
    page = browser.get("/account/")
    assert page.headers["cache-control"] == "no-store"
    assert "default-src 'none'" in page.headers["content-security-policy"]
    response = browser.post("/account/logout", data={"csrf": csrf(page.text)})
    assert response.status_code == 303
    end_session = httpx2.URL(response.headers["location"])
    assert str(end_session).startswith(f"{running.provider.issuer}/oauth2/end_session?")
    assert end_session.params["post_logout_redirect_uri"] == f"{running.url}/account/signed-out"
    assert jwt.decode(end_session.params["id_token_hint"], options={"verify_signature": False})["sub"] == "alice"
    assert browser.get("/account/").status_code == 302
    # The copied cookie died with the session on the server.
    with httpx2.Client(base_url=running.url, timeout=30, cookies=stolen) as replay:
        assert replay.get("/account/").status_code == 302
    browser.close()


def test_reject_forged_callback_and_csrf(running: Running) -> None:
    with httpx2.Client(base_url=running.url, timeout=30) as client:
        response = client.get("/account/login")
        authorize = response.headers["location"]
        with httpx2.Client(timeout=30) as at_provider:
            callback = httpx2.URL(running.provider.authorize(at_provider, authorize, "alice"))
        forged = callback.copy_set_param("state", "x" * 43)
        assert client.get(str(forged)).status_code == 400
        # The pending sign-in is consumed: the genuine callback now fails too.
        assert client.get(str(callback)).status_code == 400
    # Another browser cannot complete alice's sign-in (state bound to the session cookie).
    with httpx2.Client(base_url=running.url, timeout=30) as first, httpx2.Client(base_url=running.url, timeout=30) as other:
        authorize = first.get("/account/login").headers["location"]
        with httpx2.Client(timeout=30) as at_provider:
            callback = running.provider.authorize(at_provider, authorize, "alice")
        assert other.get(callback).status_code == 400
    assert any(e.get("event") == "oidc_login_failed" for e in running.events())

    browser = sign_in(running, "alice")
    assert browser.post("/account/keys", data={"csrf": "wrong", "name": "x", "expires_days": "1"}).status_code == 403
    page = browser.get("/account/").text
    assert (
        browser.post(
            "/account/keys",
            data={"csrf": csrf(page), "name": "x", "expires_days": "1"},
            headers={"Origin": "https://evil.example"},
        ).status_code
        == 403
    )
    browser.close()


def test_scoped_key_and_expiry_bounds(running: Running) -> None:
    browser = sign_in(running, "alice")
    key = create_key(browser, "embed-only", ["standin-embed"])
    client = running.client(key)
    assert [m.id for m in client.models.list()] == ["standin-embed"]
    with pytest.raises(openai.NotFoundError):
        chat(client)
    page = browser.get("/account/").text
    too_long = browser.post("/account/keys", data={"csrf": csrf(page), "name": "x", "expires_days": "4000"})
    assert too_long.status_code == 400
    not_allowed = browser.post(
        "/account/keys", data={"csrf": csrf(page), "name": "x", "expires_days": "1", "model": "secret-model"}
    )
    assert not_allowed.status_code == 400
    browser.close()


def test_user_without_groups_sees_nothing(running: Running) -> None:
    browser = sign_in(running, "bob")
    client = running.client(create_key(browser, "bob"))
    assert client.models.list().data == []
    with pytest.raises(openai.NotFoundError):
        chat(client)
    browser.close()


def test_admin_cli_create_list_revoke(running: Running) -> None:
    cli = [sys.executable, "-m", "appliance.cli", "keys"]
    made = subprocess.run(
        [*cli, "create", "--config", str(running.config), "--user", "svc-batch", "--name", "batch", "--groups", "embedders"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    key = made.stdout.strip()
    client = running.client(key)
    assert [m.id for m in client.models.list()] == ["standin-embed"]
    listing = subprocess.run(
        [*cli, "list", "--config", str(running.config), "--user", "svc-batch", "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    rows = [json.loads(line) for line in listing.stdout.splitlines()]
    assert [r["id"] for r in rows] == [key_id(key)] and key not in listing.stdout
    subprocess.run(
        [*cli, "revoke", "--config", str(running.config), "--user", "svc-batch"], cwd=ROOT, check=True, capture_output=True
    )
    with pytest.raises(openai.AuthenticationError):
        client.models.list()
    client.close()


# -- Bearer JWT access tokens from the provider ------------------------------------------------


def test_bearer_jwt_from_the_provider(running: Running) -> None:
    token = running.provider.tokens(API_AUDIENCE, "alice")["id_token"]
    client = running.client(token)
    assert {m.id for m in client.models.list()} == {"standin-chat", "standin-embed"}
    assert chat(client)


def _forge(header: dict[str, object], claims: dict[str, object], signature: bytes = b"") -> str:
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    return ".".join([b64(json.dumps(header).encode()), b64(json.dumps(claims).encode()), b64(signature)])


def test_reject_bad_bearer_tokens(running: Running) -> None:
    provider = running.provider
    good = provider.tokens(API_AUDIENCE, "alice")["id_token"]
    claims = jwt.decode(good, options={"verify_signature": False})
    wrong_audience = provider.tokens("some-other-client", "alice")["id_token"]
    wrong_issuer = provider.tokens(API_AUDIENCE, "alice", host="localhost")["id_token"]
    head, _, signature = good.split(".")
    tampered_claims = {**claims, "groups": ["staff", "admins"]}
    tampered = ".".join([head, _forge({}, tampered_claims).split(".")[1], signature])
    none_alg = _forge({"alg": "none", "typ": "JWT"}, claims)
    # Key confusion: HS256 "signed" with the provider's RSA public key as the HMAC secret.
    public_pem = jwt.PyJWK(provider.jwks()["keys"][0]).key.public_bytes(  # type: ignore[union-attr]
        __import__("cryptography.hazmat.primitives.serialization", fromlist=["Encoding"]).Encoding.PEM,
        __import__("cryptography.hazmat.primitives.serialization", fromlist=["PublicFormat"]).PublicFormat.SubjectPublicKeyInfo,
    )
    import hashlib
    import hmac

    unsigned = _forge({"alg": "HS256", "typ": "JWT"}, claims).rsplit(".", 1)[0]
    confusion = (
        unsigned
        + "."
        + base64.urlsafe_b64encode(hmac.new(public_pem, unsigned.encode(), hashlib.sha256).digest()).rstrip(b"=").decode()
    )
    for name, token in [
        ("wrong audience", wrong_audience),
        ("wrong issuer", wrong_issuer),
        ("tampered", tampered),
        ("alg none", none_alg),
        ("HS256 confusion", confusion),
    ]:
        response = httpx2.get(f"{running.url}/v1/models", headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert response.status_code == 401, name
    reasons = {e.get("reason") for e in running.events() if e.get("event") == "bearer_jwt_rejected"}
    assert {"wrong_audience", "wrong_issuer", "bad_signature", "algorithm_not_allowed"} <= reasons


# -- trusted-header mode ------------------------------------------------------------------------


def test_trusted_header_from_the_proxy(running: Running) -> None:
    headers = {"X-Remote-User": "carol", "X-Remote-Groups": "embedders, other"}
    response = httpx2.get(f"{running.url}/v1/models", headers=headers, timeout=10)
    assert response.status_code == 200 and [m["id"] for m in response.json()["data"]] == ["standin-embed"]
    page = httpx2.get(f"{running.url}/account/", headers=headers, timeout=10)
    assert page.status_code == 200 and f"{PROXY_ISSUER}#carol" in page.text


def test_reject_trusted_header_spoofed_from_elsewhere(running: Running) -> None:
    spoofer = httpx2.Client(transport=httpx2.HTTPTransport(local_address="127.0.0.2"), timeout=10)
    headers = {"X-Remote-User": "alice", "X-Remote-Groups": "staff"}
    with spoofer:
        assert spoofer.get(f"{running.url}/v1/models", headers=headers).status_code == 401
        assert spoofer.get(f"{running.url}/account/", headers=headers).status_code == 401
        # Even with a valid key beside it: the spoofed header is refused outright.
        token = running.provider.tokens(API_AUDIENCE, "alice")["id_token"]
        both = {**headers, "Authorization": f"Bearer {token}"}
        assert spoofer.get(f"{running.url}/v1/models", headers=both).status_code == 401
        # Without the header, the same peer is an ordinary API client.
        assert spoofer.get(f"{running.url}/v1/models", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    spoofs = [e for e in running.events() if e.get("event") == "trusted_header_spoofed"]
    assert spoofs and all(e["peer"] == "127.0.0.2" for e in spoofs)
    assert "alice" not in json.dumps(spoofs)  # the refused value is not logged


# -- external models -----------------------------------------------------------------------------


def test_external_model_route(running: Running) -> None:
    browser = sign_in(running, "alice")
    key = create_key(browser, "external")
    browser.close()
    served_before = running.external.stats()["served"]
    external = running.client(key, external=True)
    assert [m.id for m in external.models.list()] == ["ext-chat"]
    assert chat(external, "ext-chat")
    pieces = [
        c.choices[0].delta.content or ""
        for c in external.chat.completions.create(
            model="ext-chat", messages=[{"role": "user", "content": "hi"}], max_tokens=3, stream=True
        )
        if c.choices
    ]
    assert "".join(pieces).strip()
    # Never through the gate: unknown on /v1, and cluster models are unknown on the external route.
    with pytest.raises(openai.NotFoundError):
        chat(running.client(key), "ext-chat")
    with pytest.raises(openai.NotFoundError):
        chat(external, "standin-chat")
    # Its own limits: max_tokens ceiling, then requests per minute (4; two used above).
    with pytest.raises(openai.UnprocessableEntityError):
        external.chat.completions.create(model="ext-chat", messages=[{"role": "user", "content": "x"}], max_tokens=41)
    # Every field that sets output length counts: a larger max_tokens beside a small max_completion_tokens,
    # and n choices of an allowed length (2 x 30 > 40).
    with pytest.raises(openai.UnprocessableEntityError):
        external.chat.completions.create(
            model="ext-chat", messages=[{"role": "user", "content": "x"}], max_tokens=41, max_completion_tokens=10
        )
    with pytest.raises(openai.UnprocessableEntityError):
        external.chat.completions.create(model="ext-chat", messages=[{"role": "user", "content": "x"}], max_tokens=30, n=2)
    assert chat(external, "ext-chat")
    assert chat(external, "ext-chat")
    with pytest.raises(openai.RateLimitError):
        chat(external, "ext-chat")
    assert running.external.stats()["served"] - served_before == 4
    # Route policy first: a body outside routes.toml never reaches the upstream.
    response = httpx2.post(
        f"{running.url}/external/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={"model": "ext-chat", "messages": [], "evil": 1},
        timeout=10,
    )
    assert response.status_code == 422


def test_external_model_needs_the_group(running: Running) -> None:
    browser = sign_in(running, "bob")
    external = running.client(create_key(browser, "bob-external"), external=True)
    browser.close()
    assert external.models.list().data == []
    with pytest.raises(openai.NotFoundError):
        chat(external, "ext-chat")


def test_reject_logout_reading_a_body_without_a_session(running: Running) -> None:
    """POST /account/logout without a session is refused before any body is read (or waited for)."""
    import socket

    port = int(running.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(
            b"POST /account/logout HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 1000000\r\n\r\ncsrf="
        )
        head = sock.recv(65536)  # no more body is coming: an answer now means none was waited for
    assert head.startswith(b"HTTP/1.1 401 "), head[:100]
