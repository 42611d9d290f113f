"""The [auth], [oidc], [access] and [[external]] settings: validated once, errors name the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from appliance.auth.secret import Secret, read_secret_file
from appliance.settings import parse_settings
from policy.config import ConfigError

CLUSTER = {"clusters": [{"name": "local", "transport": "local", "gate_command": ["gate", "--local-pipe"]}]}


@pytest.fixture
def base(tmp_path: Path) -> Path:
    (tmp_path / "session.key").write_text("s" * 40)
    (tmp_path / "policy.toml").write_text("[groups.staff]\nmodels = ['*']\n")
    (tmp_path / "ext.key").write_text("upstream-key")
    return tmp_path


def full(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        **CLUSTER,
        "auth": {
            "database": "auth.sqlite3",
            "public_url": "https://llm.example.org",
            "session_secret_file": "session.key",
            "trusted_header": {"proxies": ["10.0.0.5"], "groups_header": "X-Remote-Groups"},
        },
        "oidc": {
            "issuer": "https://sso.example.org/realms/r",
            "client_id": "sluice",
            "api_audience": "sluice-api",
            "claims": {"groups": "memberOf"},
        },
        "access": {"policy": "policy.toml"},
        "external": [
            {
                "name": "openai",
                "base_url": "https://api.openai.com/v1",
                "api_key_file": "ext.key",
                "models": ["gpt-4o-mini"],
                "groups": ["staff"],
            }
        ],
    }
    for dotted, value in changes.items():
        *path, last = dotted.split("__")
        target = data
        for part in path:
            target = target[part] if not part.isdigit() else target[int(part)]
        if value is None:
            target.pop(last, None)
        else:
            target[last] = value
    return data


def test_full_configuration(base: Path) -> None:
    settings = parse_settings(full(), base)
    identity = settings.identity
    assert identity.oidc is not None and identity.oidc.claims.groups == "memberOf"
    assert identity.oidc.algorithms == ("RS256", "ES256") and identity.auth.cookie_secure
    assert identity.auth.trusted_header is not None and identity.auth.trusted_header.groups_header == "x-remote-groups"
    assert identity.access_policy == base / "policy.toml"
    assert settings.external[0].models == ("gpt-4o-mini",) and settings.external[0].requests_per_minute == 10


def test_no_identity_sections_is_the_old_appliance(base: Path) -> None:
    settings = parse_settings(dict(CLUSTER), base)
    assert not settings.identity.users_sign_in and settings.external == ()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"oidc__algorithms": ["HS256"]}, "oidc.algorithms: 'HS256' is not allowed"),
        ({"oidc__algorithms": ["none"]}, "oidc.algorithms: 'none' is not allowed"),
        ({"oidc__issuer": "http://sso.example.org"}, "oidc.issuer must be https"),
        ({"oidc__scopes": ["email"]}, "oidc.scopes must include 'openid'"),
        ({"oidc__client_secret": "inline"}, "oidc.client_secret is not a known setting"),
        ({"auth__cookie_secure": False}, "auth.cookie_secure = false is only for a loopback http public_url"),
        ({"auth__cookie_samesite": "none"}, "auth.cookie_samesite"),
        ({"auth__public_url": "https://llm.example.org/prefix"}, "auth.public_url must be an origin only"),
        ({"auth__public_url": None}, "auth.public_url is required"),
        ({"auth__session_secret_file": "missing.key"}, "auth.session_secret_file"),
        ({"auth__database": "no/such/dir/db"}, "auth.database"),
        ({"auth__trusted_header__proxies": ["0.0.0.0/0"]}, "trusts every address"),
        ({"auth__trusted_header__proxies": ["proxy.example.org"]}, "is not an address"),
        ({"auth__trusted_header__user_header": "X Remote"}, "user_header must be a header name"),
        ({"access__policy": "missing.toml"}, "access.policy"),
        ({"external__0__base_url": "http://api.example.org/v1"}, "external[0].base_url must be https"),
        ({"external__0__groups": []}, "external[0].groups"),
        ({"external__0__routes": ["images"]}, "external[0].routes"),
        ({"external__0__api_key_file": "missing.key"}, "external[0].api_key_file"),
    ],
)
def test_reject_bad_settings(base: Path, changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_settings(full(**changes), base)
    assert message in str(info.value)


def test_insecure_cookies_only_for_loopback_http(base: Path) -> None:
    settings = parse_settings(full(auth__cookie_secure=False, auth__public_url="http://127.0.0.1:8080"), base)
    assert settings.identity.auth.cookie_secure is False


def test_secrets_do_not_print(base: Path) -> None:
    secret = read_secret_file(base / "session.key", "auth.session_secret_file", 32)
    assert secret.reveal() == "s" * 40
    assert "s" * 40 not in f"{secret} {secret!r} {[secret]}"
    assert str(Secret("x")) == "**********"
    with pytest.raises(ValueError, match="at least 32"):
        read_secret_file(base / "ext.key", "x", 32)


def test_reject_unusable_files_at_load(base: Path) -> None:
    (base / "short.key").write_text("too short")
    (base / "bad.toml").write_text("[groups.g]\nmodels = ['a b']\n")
    (base / "empty.key").write_text("\n")
    for changes, message in [
        ({"auth__session_secret_file": "short.key"}, "auth.session_secret_file"),
        ({"access__policy": "bad.toml"}, "access.policy"),
        ({"external__0__api_key_file": "empty.key"}, "external[0].api_key_file"),
    ]:
        with pytest.raises(ConfigError) as info:
            parse_settings(full(**changes), base)
        assert message in str(info.value)
