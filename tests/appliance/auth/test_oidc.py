"""The relying party's side of the code flow: PKCE, state, nonce and the ID token checks.

The test provider process does not enforce PKCE, so these tests play the
provider themselves (an httpx2 transport): they record the challenge of the
authorization request and refuse a token request whose verifier does not
match it, as a strict provider would.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
from typing import Any
from urllib.parse import parse_qs

import httpx2
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from appliance.auth.config import OidcSettings
from appliance.auth.identity import ClaimNames
from appliance.auth.oidc import LOGIN_TIMEOUT, LoginFailed, OidcClient, PendingLogin
from appliance.auth.provider import Provider, ProviderError
from appliance.auth.secret import Secret
from appliance.auth.tokens import TokenVerifier

ISSUER = "https://idp.example.org"
CLIENT = "sluice-web"
REDIRECT = "https://llm.example.org/account/callback"
KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


class FakeProvider:
    """A strict provider: PKCE S256 enforced, one use per code."""

    def __init__(self) -> None:
        self.codes: dict[str, dict[str, str]] = {}
        self.token_requests: list[dict[str, str]] = []
        self.claims: dict[str, Any] = {"sub": "alice", "email": "a@example.org", "groups": ["staff"]}
        self.id_token_overrides: dict[str, Any] = {}
        self.omit_id_token = False
        self.discovery_issuer = ISSUER
        self.userinfo: dict[str, Any] | None = None

    def authorize(self, url: str) -> dict[str, str]:
        """What the provider does with the browser's authorization request: the callback parameters."""
        query = {k: v[0] for k, v in parse_qs(httpx2.URL(url).query.decode()).items()}
        code = f"code-{len(self.codes)}"
        self.codes[code] = query
        return {"code": code, "state": query["state"]}

    def handler(self, request: httpx2.Request) -> httpx2.Response:
        path = request.url.path
        if path == "/.well-known/openid-configuration":
            return httpx2.Response(
                200,
                json={
                    "issuer": self.discovery_issuer,
                    "authorization_endpoint": f"{ISSUER}/authorize",
                    "token_endpoint": f"{ISSUER}/token",
                    "jwks_uri": f"{ISSUER}/jwks",
                    "userinfo_endpoint": f"{ISSUER}/userinfo",
                    "end_session_endpoint": f"{ISSUER}/logout",
                },
            )
        if path == "/jwks":
            key = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(KEY.public_key()))
            return httpx2.Response(200, json={"keys": [{**key, "kid": "k1", "use": "sig"}]})
        if path == "/userinfo":
            return httpx2.Response(200, json=self.userinfo or {})
        if path == "/token":
            form = {k: v[0] for k, v in parse_qs(request.content.decode()).items()}
            self.token_requests.append(form)
            authorization = self.codes.pop(form.get("code", ""), None)
            if authorization is None:
                return httpx2.Response(400, json={"error": "invalid_grant"})
            verifier = form.get("code_verifier", "")
            challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
            if authorization.get("code_challenge_method") != "S256" or challenge != authorization.get("code_challenge"):
                return httpx2.Response(400, json={"error": "invalid_grant", "error_description": "PKCE"})
            if form.get("redirect_uri") != authorization["redirect_uri"]:
                return httpx2.Response(400, json={"error": "invalid_grant"})
            now = int(time.time())
            claims = {
                "iss": ISSUER,
                "aud": CLIENT,
                "iat": now,
                "exp": now + 300,
                "nonce": authorization.get("nonce"),
                **self.claims,
                **self.id_token_overrides,
            }
            body: dict[str, Any] = {"access_token": "opaque", "token_type": "Bearer", "expires_in": 300}
            if not self.omit_id_token:
                body["id_token"] = jwt.encode(
                    {k: v for k, v in claims.items() if v is not None}, KEY, "RS256", headers={"kid": "k1"}
                )
            return httpx2.Response(200, json=body)
        return httpx2.Response(404)


def make_client(fake: FakeProvider, now: float | None = None, **settings: Any) -> OidcClient:
    transport = httpx2.MockTransport(fake.handler)
    http = httpx2.AsyncClient(transport=transport)
    provider = Provider(ISSUER, http)
    verifier = TokenVerifier(ISSUER, provider.jwks, ("RS256",), leeway=5)
    config = OidcSettings(ISSUER, CLIENT, None, **settings)
    clock = (lambda: now) if now is not None else time.time
    return OidcClient(config, provider, verifier, REDIRECT, Secret("s3cret"), transport, clock=clock)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def login(fake: FakeProvider, client: OidcClient, tamper: Any = None) -> Any:
    async def flow() -> Any:
        url, pending = await client.begin()
        params = fake.authorize(url)
        if tamper is not None:
            pending, params = tamper(pending, params)
        return await client.finish(pending, params)

    return run(flow())


def test_authorization_request_has_pkce_state_nonce() -> None:
    fake = FakeProvider()
    url, pending = run(make_client(fake).begin())
    query = {k: v[0] for k, v in parse_qs(httpx2.URL(url).query.decode()).items()}
    assert url.startswith(f"{ISSUER}/authorize?")
    assert query["response_type"] == "code" and query["client_id"] == CLIENT and query["redirect_uri"] == REDIRECT
    assert query["scope"] == "openid email profile"
    assert query["state"] == pending.state and query["nonce"] == pending.nonce
    assert query["code_challenge_method"] == "S256"
    expected = base64.urlsafe_b64encode(hashlib.sha256(pending.verifier.encode()).digest()).rstrip(b"=").decode()
    assert query["code_challenge"] == expected
    assert 43 <= len(pending.verifier) <= 128 and pending.verifier not in url
    assert len(pending.state) >= 43 and len(pending.nonce) >= 43
    # Fresh values every time.
    _, again = run(make_client(fake).begin())
    assert {again.state, again.nonce, again.verifier}.isdisjoint({pending.state, pending.nonce, pending.verifier})


def test_token_request_sends_the_verifier_and_signs_in() -> None:
    fake = FakeProvider()
    sign_in = login(fake, make_client(fake))
    assert sign_in.identity.user == f"{ISSUER}#alice"
    assert sign_in.identity.groups == frozenset({"staff"}) and sign_in.identity.email == "a@example.org"
    request = fake.token_requests[-1]
    assert request["grant_type"] == "authorization_code" and request["redirect_uri"] == REDIRECT
    assert len(request["code_verifier"]) >= 43


def test_reject_wrong_verifier() -> None:
    """A code stolen on its way back is useless without this browser's verifier."""
    fake = FakeProvider()
    with pytest.raises(LoginFailed) as info:
        login(fake, make_client(fake), lambda p, q: (PendingLogin(p.state, p.nonce, "x" * 86, p.started), q))
    assert info.value.reason == "token_request_failed"


def test_reject_state_mismatch_missing_and_expired() -> None:
    fake = FakeProvider()
    client = make_client(fake)
    for tamper, reason in [
        (lambda p, q: (p, {**q, "state": "forged"}), "state_mismatch"),
        (lambda p, q: (p, {k: v for k, v in q.items() if k != "state"}), "state_mismatch"),
        (lambda p, q: (None, q), "no_login_in_progress"),
        (lambda p, q: (PendingLogin(p.state, p.nonce, p.verifier, p.started - LOGIN_TIMEOUT - 1), q), "login_expired"),
        (lambda p, q: (p, {**q, "error": "access_denied"}), "provider_refused"),
        (lambda p, q: (p, {**q, "iss": "https://evil.example.org"}), "wrong_issuer"),
        (lambda p, q: (p, {"state": q["state"]}), "no_code"),
    ]:
        with pytest.raises(LoginFailed) as info:
            login(fake, client, tamper)
        assert info.value.reason == reason
    assert fake.token_requests == []  # none of these reached the token endpoint


def test_reject_bad_id_tokens() -> None:
    for overrides, reason in [
        ({"nonce": "replayed"}, "id_token_wrong_nonce"),
        ({"aud": "another-client"}, "id_token_wrong_audience"),
        ({"iss": "https://evil.example.org"}, "id_token_wrong_issuer"),
        ({"exp": int(time.time()) - 60}, "id_token_expired"),
        ({"aud": [CLIENT, "other"]}, "id_token_wrong_azp"),
        ({"aud": [CLIENT, "other"], "azp": "other"}, "id_token_wrong_azp"),
    ]:
        fake = FakeProvider()
        fake.id_token_overrides = overrides
        with pytest.raises(LoginFailed) as info:
            login(fake, make_client(fake))
        assert info.value.reason == reason, overrides
    fake = FakeProvider()
    fake.omit_id_token = True
    with pytest.raises(LoginFailed) as info:
        login(fake, make_client(fake))
    assert info.value.reason == "no_id_token"


def test_discovery_must_name_the_configured_issuer() -> None:
    fake = FakeProvider()
    fake.discovery_issuer = "https://other.example.org"
    with pytest.raises(ProviderError):
        run(make_client(fake).begin())


def test_configurable_claims_and_userinfo() -> None:
    fake = FakeProvider()
    fake.claims = {"sub": "alice", "mail": "alice@uni.example", "memberOf": ["a", "b"]}
    client = make_client(fake, claims=ClaimNames(email="mail", name="display", groups="memberOf"))
    identity = login(fake, client).identity
    assert identity.email == "alice@uni.example" and identity.groups == frozenset({"a", "b"})
    # Groups only in userinfo: fetched, for the same subject only.
    fake = FakeProvider()
    fake.claims = {"sub": "alice"}
    fake.userinfo = {"sub": "alice", "groups": ["from-userinfo"]}
    assert login(fake, make_client(fake)).identity.groups == frozenset({"from-userinfo"})
    fake.userinfo = {"sub": "mallory", "groups": ["admins"]}
    with pytest.raises(LoginFailed):
        login(fake, make_client(fake))


def test_rp_initiated_logout_url() -> None:
    fake = FakeProvider()
    url = run(make_client(fake).logout_url("the.id.token", "https://llm.example.org/account/signed-out"))
    parsed = httpx2.URL(url)
    assert str(parsed).startswith(f"{ISSUER}/logout?")
    assert parsed.params["id_token_hint"] == "the.id.token" and parsed.params["client_id"] == CLIENT
    assert run(make_client(fake, rp_logout=False).logout_url("t", "https://x.example.org/")) is None
