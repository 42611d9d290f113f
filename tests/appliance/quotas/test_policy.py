"""The quota policy file: parsing, validation, and which limits apply to whom."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from appliance.auth.base import Principal
from appliance.quotas.policy import (
    DEMO_POLICY,
    PolicyError,
    QuotaPolicy,
    load_policy,
    parse_policy,
)


def policy(text: str) -> QuotaPolicy:
    return parse_policy(tomllib.loads(text))


def limits_of(plan_limits: tuple) -> list[tuple[str, str, int]]:  # type: ignore[type-arg]
    return [(limit.name, limit.scope, limit.amount) for limit in plan_limits]


def test_packaged_default_policy_loads_and_limits_every_user() -> None:
    loaded = load_policy()
    plan = loaded.plan(Principal("alice", "alice-key"))
    assert [limit.name for limit in plan.requests] == ["requests_per_minute"]
    assert [limit.name for limit in plan.tokens] == ["tokens_per_minute", "tokens_per_day"]
    assert [limit.name for limit in plan.slots] == ["concurrent_requests"]
    assert {limit.scope for limit in (*plan.requests, *plan.tokens, *plan.slots)} == {"user"}
    assert loaded.reserve_tokens == 1024


def test_demo_policy_loads() -> None:
    assert policy(DEMO_POLICY).plan(Principal("demo")).requests[0].amount == 1_000_000


def test_empty_policy_limits_nothing() -> None:
    assert policy("").plan(Principal("alice", "k", frozenset({"g"}))).empty


def test_group_per_user_limits_replace_the_default_and_the_most_generous_group_wins() -> None:
    p = policy("""
        [user]
        requests_per_minute = 10
        tokens_per_day = 100
        [groups.students.user]
        requests_per_minute = 5
        [groups.staff.user]
        requests_per_minute = 50
        tokens_per_day = "unlimited"
        """)
    assert limits_of(p.plan(Principal("a")).requests) == [("requests_per_minute", "user", 10)]
    assert limits_of(p.plan(Principal("a", groups=frozenset({"students"}))).requests) == [("requests_per_minute", "user", 5)]
    both = p.plan(Principal("a", groups=frozenset({"students", "staff"})))
    assert limits_of(both.requests) == [("requests_per_minute", "user", 50)]
    assert both.tokens == ()  # unlimited beats any number
    assert limits_of(p.plan(Principal("a", groups=frozenset({"students"}))).tokens) == [("tokens_per_day", "user", 100)]


def test_user_and_key_overrides_and_group_totals() -> None:
    p = policy("""
        [user]
        requests_per_minute = 10
        concurrent_requests = 2
        [key]
        requests_per_minute = 4
        [users."https://idp.example.org/|alice"]
        requests_per_minute = 100
        concurrent_requests = "unlimited"
        [keys."ci"]
        requests_per_minute = 1
        [groups.physics.total]
        tokens_per_minute = 1000
        concurrent_requests = 8
        """)
    alice = p.plan(Principal("https://idp.example.org/|alice", "ci", frozenset({"physics", "other"})))
    assert limits_of(alice.requests) == [("requests_per_minute", "user", 100), ("requests_per_minute", "key", 1)]
    assert limits_of(alice.tokens) == [("tokens_per_minute", "group", 1000)]
    assert limits_of(alice.slots) == [("concurrent_requests", "group", 8)]
    bob = p.plan(Principal("bob", "laptop"))
    assert limits_of(bob.requests) == [("requests_per_minute", "user", 10), ("requests_per_minute", "key", 4)]
    assert limits_of(bob.slots) == [("concurrent_requests", "user", 2)]
    # Without an API key (a browser session), no key limits.
    assert limits_of(p.plan(Principal("bob")).requests) == [("requests_per_minute", "user", 10)]


def test_subjects_are_opaque_and_distinct() -> None:
    p = policy("[user]\nrequests_per_minute = 1\n[key]\nrequests_per_minute = 1\n[groups.x.total]\nrequests_per_minute = 1")
    plan = p.plan(Principal("alice@example.org", "alice@example.org", frozenset({"x"})))
    subjects = [limit.subject for limit in plan.requests]
    assert len(set(subjects)) == 3
    assert all("alice" not in s and "@" not in s and "/" not in s for s in subjects)
    assert [s[:2] for s in subjects] == ["u.", "k.", "g."]


def test_plans_are_cached_per_principal() -> None:
    p = policy("[user]\nrequests_per_minute = 1")
    assert p.plan(Principal("a", "k")) is p.plan(Principal("a", "k"))
    assert p.plan(Principal("a", "k")) is not p.plan(Principal("a", "other"))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[user]\nrequests_per_hour = 1", "user.requests_per_hour is not a known limit"),
        ("[user]\nrequests_per_minute = -1", "user.requests_per_minute must be a whole number"),
        ("[user]\nrequests_per_minute = 1.5", "user.requests_per_minute must be a whole number"),
        ('[user]\nrequests_per_minute = "lots"', "user.requests_per_minute must be a whole number"),
        ("[user]\nrequests_per_minute = true", "user.requests_per_minute must be a whole number"),
        ("[users.bob]\nbogus = 1", 'users."bob".bogus is not a known limit'),
        ("[groups.g]\nrequests_per_minute = 1", 'groups."g".requests_per_minute is not known'),
        ("reserve_tokens = 0", "reserve_tokens must be a whole number from 1"),
        ("[limits]\nx = 1", "limits is not a known setting"),
        ("user = 3", "user must be a table"),
    ],
)
def test_reject_bad_policy(text: str, message: str) -> None:
    with pytest.raises(PolicyError, match=message.replace(".", r"\.").replace('"', '"')):
        policy(text)


def test_reject_unreadable_policy_file(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot read quota policy"):
        load_policy(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[user]\nrequests_per_minute = -5\n")
    with pytest.raises(PolicyError, match="bad.toml: user.requests_per_minute"):
        load_policy(bad)
