"""Trusted-header mode: believed from the proxies' addresses only; spoofing is refused and logged."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging

import pytest
from starlette.requests import HTTPConnection

from appliance.auth.api_keys import ApiKeyStore
from appliance.auth.chain import ChainAuthenticator
from appliance.auth.config import TrustedHeaderSettings
from appliance.auth.trusted_header import HeaderSpoofed, TrustedHeaderAuthenticator

SETTINGS = TrustedHeaderSettings(
    (ipaddress.ip_network("10.0.0.5/32"), ipaddress.ip_network("fd00::/64")),
    "x-remote-user",
    "x-remote-groups",
    ",",
    "x-remote-email",
    None,
    "https://sso.example.org",
)


def connection(peer: str | None, **headers: str) -> HTTPConnection:
    raw = [(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()]
    scope = {
        "type": "http",
        "headers": raw,
        "client": None if peer is None else (peer, 40000),
        "path": "/v1/models",
        "scheme": "http",
        "server": ("127.0.0.1", 8080),
        "query_string": b"",
    }
    return HTTPConnection(scope)


def test_header_from_a_trusted_proxy() -> None:
    auth = TrustedHeaderAuthenticator(SETTINGS)
    for peer in ("10.0.0.5", "::ffff:10.0.0.5", "fd00::1"):
        principal = asyncio.run(auth.principal(connection(peer, x_remote_user="alice", x_remote_groups="staff, nlp,,")))
        assert principal is not None and principal.user == "https://sso.example.org#alice"
        assert principal.groups == frozenset({"staff", "nlp"})
    assert asyncio.run(auth.principal(connection("10.0.0.5"))) is None  # no header: not this authenticator's business


@pytest.mark.parametrize("peer", ["10.0.0.6", "127.0.0.1", "fd01::1", None, "not-an-address"])
def test_reject_spoofed_header(peer: str | None, caplog: pytest.LogCaptureFixture) -> None:
    auth = TrustedHeaderAuthenticator(SETTINGS)
    with caplog.at_level(logging.WARNING, "sluice.security"), pytest.raises(HeaderSpoofed):
        asyncio.run(auth.principal(connection(peer, x_remote_user="alice", x_forwarded_for="10.0.0.5")))
    event = json.loads(caplog.records[-1].getMessage())
    assert event["event"] == "trusted_header_spoofed" and event["header"] == "x-remote-user"
    assert "alice" not in caplog.text
    # Any identity header counts, not only the user's.
    with pytest.raises(HeaderSpoofed):
        asyncio.run(auth.principal(connection(peer, x_remote_groups="admins")))


def test_spoofed_header_wins_over_a_valid_key() -> None:
    keys = ApiKeyStore()
    keys.add("k" * 32, "svc", "svc")
    chain = ChainAuthenticator(keys, header=TrustedHeaderAuthenticator(SETTINGS))
    assert asyncio.run(chain.authenticate(connection("10.0.0.9", authorization="Bearer " + "k" * 32))) is not None
    assert (
        asyncio.run(chain.authenticate(connection("10.0.0.9", authorization="Bearer " + "k" * 32, x_remote_user="alice"))) is None
    )


def test_reject_unusable_values() -> None:
    auth = TrustedHeaderAuthenticator(SETTINGS)
    assert asyncio.run(auth.principal(connection("10.0.0.5", x_remote_user="   "))) is None
    assert asyncio.run(auth.principal(connection("10.0.0.5", x_remote_user="a" * 300))) is None
    assert (
        asyncio.run(
            auth.principal(connection("10.0.0.5", x_remote_user="a", x_remote_groups=",".join(f"g{i}" for i in range(300))))
        )
        is None
    )
