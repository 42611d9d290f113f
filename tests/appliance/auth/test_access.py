"""The group policy: default deny, exact names and prefixes, key scopes."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.auth.access import (
    AccessPolicyError,
    load_access_policy,
    parse_access_policy,
)
from appliance.auth.base import Principal
from appliance.auth.config import DEFAULT_ACCESS_POLICY

POLICY = {
    "groups": {
        "staff": {"models": ["llama-3-70b", "qwen-*"]},
        "/research/nlp": {"models": ["*"]},
        "empty": {"models": []},
    }
}
MODELS = ["llama-3-70b", "llama-3-8b", "qwen-2-7b", "mistral"]


def who(*groups: str, scope: set[str] | None = None) -> Principal:
    return Principal("iss#u", groups=frozenset(groups), scope=None if scope is None else frozenset(scope))


def test_groups_allow_what_they_list() -> None:
    policy = parse_access_policy(POLICY)
    assert policy.visible(who("staff"), MODELS) == ["llama-3-70b", "qwen-2-7b"]
    assert policy.visible(who("/research/nlp"), MODELS) == sorted(MODELS)
    assert policy.visible(who("staff", "empty"), MODELS) == ["llama-3-70b", "qwen-2-7b"]
    assert not policy.allows(who("staff"), "llama-3-70b-instruct")  # exact means exact
    assert not policy.allows(who("staff"), "qwen")  # the prefix is "qwen-"


def test_default_deny() -> None:
    policy = parse_access_policy(POLICY)
    assert policy.visible(who(), MODELS) == []
    assert policy.visible(who("Staff", "staff "), MODELS) == []  # names compare exactly
    assert parse_access_policy({}).visible(who("staff"), MODELS) == []
    assert load_access_policy(DEFAULT_ACCESS_POLICY).visible(who("staff", "admins"), MODELS) == []


def test_scope_narrows_never_widens() -> None:
    policy = parse_access_policy(POLICY)
    assert policy.visible(who("staff", scope={"qwen-2-7b", "mistral"}), MODELS) == ["qwen-2-7b"]
    assert policy.visible(who(scope={"mistral"}), MODELS) == []


@pytest.mark.parametrize(
    "bad",
    [
        {"groups": {"g": {"models": ["*foo"]}}},
        {"groups": {"g": {"models": ["a*b"]}}},
        {"groups": {"g": {"models": ["has space"]}}},
        {"groups": {"g": {"models": "llama"}}},
        {"groups": {"g": {"models": [], "extra": 1}}},
        {"groups": {"g": ["llama"]}},
        {"users": {}},
    ],
)
def test_reject_malformed_policy(bad: dict[str, object]) -> None:
    with pytest.raises(AccessPolicyError):
        parse_access_policy(bad)


def test_reject_unreadable_policy(tmp_path: Path) -> None:
    with pytest.raises(AccessPolicyError):
        load_access_policy(tmp_path / "missing.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[groups\n")
    with pytest.raises(AccessPolicyError):
        load_access_policy(broken)
