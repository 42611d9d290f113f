"""A real OpenID Connect provider process (PyPI ``oidc-provider-mock``) on a loopback port.

It serves discovery, JWKS (RS256), the authorization and token endpoints,
userinfo and end-session, like a production provider.  Sign-in without a
browser: POST the authorization request's parameters with the form field
``sub``; it redirects to the client with ``code`` and ``state``.  Users'
claims (groups included) can be changed while it runs (``set_user``).

Limits to know (see ../shared/REAL_COMPONENTS.md): it does not enforce PKCE,
accepts any client id and redirect URI, signs every token with one RS256 key,
and names as issuer whatever host it was reached by -- which the tests use to
get a correctly signed token from the "wrong" issuer.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx2

from tests.conftest import ROOT, free_port, stop

__all__ = ["OidcProvider", "start_oidc_provider"]


@dataclass
class OidcProvider:
    port: int
    process: subprocess.Popen[bytes]

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def set_user(self, sub: str, claims: dict[str, Any]) -> None:
        """Replace the claims of ``sub`` (takes effect at its next sign-in)."""
        response = httpx2.put(f"{self.issuer}/users/{sub}", json=claims, timeout=10)
        if response.status_code != 204:
            raise RuntimeError(f"set_user: {response.status_code}")

    def authorize(self, client: httpx2.Client, authorize_url: str, sub: str) -> str:
        """Sign ``sub`` in at the provider for ``authorize_url``; the redirect back (with code and state)."""
        response = client.post(authorize_url, data={"sub": sub})
        if response.status_code != 302:
            raise RuntimeError(f"authorize: {response.status_code}")
        return response.headers["location"]

    def tokens(self, client_id: str, sub: str, host: str = "127.0.0.1", nonce: str | None = None) -> dict[str, Any]:
        """A whole code flow straight against the provider: its token response (with id_token)."""
        # Always connect to 127.0.0.1; the Host header picks the issuer the provider names.
        base = self.issuer
        headers = {"Host": f"{host}:{self.port}"}
        redirect_uri = "http://127.0.0.1:1/callback"
        params = {
            "response_type": "code",
            "client_id": client_id,
            "redirect_uri": redirect_uri,
            "scope": "openid email profile",
            "state": "s" * 16,
        }
        if nonce is not None:
            params["nonce"] = nonce
        with httpx2.Client(timeout=10, headers=headers) as client:
            location = self.authorize(client, f"{base}/oauth2/authorize?{urlencode(params)}", sub)
            code = parse_qs(urlsplit(location).query)["code"][0]
            response = client.post(
                f"{base}/oauth2/token",
                data={
                    "grant_type": "authorization_code",
                    "code": code,
                    "redirect_uri": redirect_uri,
                    "client_id": client_id,
                    "client_secret": "unused",
                },
            )
        if response.status_code != 200:
            raise RuntimeError(f"token: {response.status_code}")
        return response.json()

    def jwks(self) -> dict[str, Any]:
        return httpx2.get(f"{self.issuer}/jwks", timeout=10).json()

    def stop(self) -> None:
        stop(self.process)


def start_oidc_provider(*users: dict[str, Any], token_max_age: int = 3600) -> OidcProvider:
    """Start the provider with predefined ``users`` (claims with "sub"); wait until discovery answers."""
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "oidc_provider_mock",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--token-max-age",
        str(token_max_age),
    ]
    for user in users:
        argv += ["--user-claims", json.dumps(user)]
    process = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    provider = OidcProvider(port, process)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("oidc-provider-mock exited at start")
        try:
            if httpx2.get(f"{provider.issuer}/.well-known/openid-configuration", timeout=2).status_code == 200:
                return provider
        except httpx2.HTTPError:
            time.sleep(0.1)
    provider.stop()
    raise RuntimeError("oidc-provider-mock did not start")
