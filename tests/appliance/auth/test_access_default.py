"""Default deny: no configuration allows every model unless it says so, by an unsafe name, logged at start."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import pytest

from appliance.auth.api_keys import ApiKeyStore
from appliance.auth.base import Principal
from appliance.auth.build import build_identity
from appliance.auth.config import ConfigError, parse_identity
from appliance.settings import parse_settings

KEY = "sk-default-deny-" + "d" * 20


def _operator_keys(groups: frozenset[str] = frozenset()) -> ApiKeyStore:
    keys = ApiKeyStore()
    keys.add_digest(hashlib.sha256(KEY.encode()).digest(), "op", "op-key", groups)
    return keys


def test_reject_allow_all_by_default(tmp_path: Path) -> None:
    """Only operator [[api_keys]]: their keys may use nothing until a policy (or the unsafe switch) says so."""
    identity = build_identity(parse_identity({}, tmp_path), _operator_keys())
    principal = _operator_keys().verify(KEY)
    assert principal is not None
    assert not identity.access.allows(principal, "any-model")
    assert identity.access.visible(principal, ["a", "b"]) == []


def test_operator_keys_carry_groups_for_the_policy(tmp_path: Path) -> None:
    (tmp_path / "access.toml").write_text('[groups.staff]\nmodels = ["chat-*"]\n')
    identity = build_identity(
        parse_identity({"access": {"policy": "access.toml"}}, tmp_path), _operator_keys(frozenset({"staff"}))
    )
    principal = _operator_keys(frozenset({"staff"})).verify(KEY)
    assert principal is not None and principal.groups == frozenset({"staff"})
    assert identity.access.allows(principal, "chat-small") and not identity.access.allows(principal, "embed")


def test_unsafe_allow_all_is_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="sluice.auth"):
        identity = build_identity(parse_identity({"access": {"unsafe_allow_all": True}}, tmp_path), _operator_keys())
    assert identity.access.allows(Principal("op"), "any-model")
    assert any("unsafe_allow_all" in record.getMessage() for record in caplog.records)


def test_reject_policy_and_unsafe_allow_all_together(tmp_path: Path) -> None:
    (tmp_path / "access.toml").write_text("")
    with pytest.raises(ConfigError):
        parse_identity({"access": {"policy": "access.toml", "unsafe_allow_all": True}}, tmp_path)


def test_reject_bad_key_groups(tmp_path: Path) -> None:
    data = {
        "clusters": [{"name": "c", "transport": "local", "gate_command": ["gate", "--local-pipe"]}],
        "api_keys": [{"user": "u", "key_id": "k", "sha256": "00" * 32, "groups": ["", 3]}],
    }
    with pytest.raises(ConfigError):
        parse_settings(data, tmp_path)
