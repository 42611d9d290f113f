"""The quota policy: which limits apply to a principal, loaded once from TOML.

``policy/quotas.toml`` documents the format.  :func:`load_policy` validates a
file into a frozen :class:`QuotaPolicy`; :meth:`QuotaPolicy.plan` resolves,
for one principal, the concrete limits to check: each with the *subject* it
counts for (a user, an API key or a group), as an opaque hashed identity so
that neither names nor anything else the caller chose ends up in storage keys.
"""

from __future__ import annotations

import hashlib
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Final

from policy.errors import InternalError

from ..auth.base import Principal

__all__ = [
    "LIMIT_NAMES",
    "Limit",
    "Limits",
    "Plan",
    "PolicyError",
    "QuotaPolicy",
    "default_policy_path",
    "load_policy",
    "parse_policy",
    "subject",
]

# The four limits, and the window each counts in (seconds; 0: not a window).
WINDOWS: Final = {
    "requests_per_minute": 60,
    "tokens_per_minute": 60,
    "tokens_per_day": 86_400,
    "concurrent_requests": 0,
}
LIMIT_NAMES: Final = tuple(WINDOWS)

# Any single limit above this is a typo, not a policy (and keeps counters far from overflow).
MAX_LIMIT: Final = 10**12

# Plans are cached per principal; past this many the cache starts over (bounded memory).
MAX_CACHED_PLANS: Final = 10_000

UNLIMITED: Final = "unlimited"


class PolicyError(InternalError, ValueError):
    """The quota policy is wrong; the message names the key."""


# None: not set here (inherit); -1: explicitly unlimited; >= 0: the limit.
_Value = int | None


@dataclass(frozen=True, slots=True)
class Limits:
    """One table's values, by limit name (see ``_Value``)."""

    values: tuple[_Value, ...] = (None, None, None, None)

    def over(self, base: Limits) -> Limits:
        """These values where set, ``base``'s elsewhere."""
        return Limits(tuple(b if v is None else v for v, b in zip(self.values, base.values, strict=True)))

    @staticmethod
    def most_generous(tables: list[Limits]) -> Limits:
        """Per limit, the most generous value any table sets (unlimited beats any number)."""
        merged: list[_Value] = []
        for index in range(len(LIMIT_NAMES)):
            set_values = [t.values[index] for t in tables if t.values[index] is not None]
            if not set_values:
                merged.append(None)
            elif -1 in set_values:
                merged.append(-1)
            else:
                merged.append(max(v for v in set_values if v is not None))
        return Limits(tuple(merged))


@dataclass(frozen=True, slots=True, eq=False)  # identity hashing: plans are cached, limits reused
class Limit:
    """One concrete limit to check: ``amount`` per ``window`` seconds for ``subject``."""

    name: str  # one of LIMIT_NAMES
    scope: str  # "user", "key" or "group"
    subject: str  # hashed identity, e.g. "u.3f2a..."
    amount: int
    window: int  # seconds; 0 for concurrent_requests


@dataclass(frozen=True, slots=True)
class Plan:
    """Everything one principal's request is checked against."""

    requests: tuple[Limit, ...]
    tokens: tuple[Limit, ...]
    slots: tuple[Limit, ...]

    @property
    def empty(self) -> bool:
        return not (self.requests or self.tokens or self.slots)


@dataclass(frozen=True, slots=True)
class QuotaPolicy:
    reserve_tokens: int = 1024
    user: Limits = field(default_factory=Limits)
    key: Limits = field(default_factory=Limits)
    group_user: Mapping[str, Limits] = field(default_factory=dict)
    group_total: Mapping[str, Limits] = field(default_factory=dict)
    users: Mapping[str, Limits] = field(default_factory=dict)
    keys: Mapping[str, Limits] = field(default_factory=dict)
    _cache: dict[tuple[str, str | None, frozenset[str]], Plan] = field(default_factory=dict, compare=False, repr=False)

    def plan(self, principal: Principal) -> Plan:
        """The limits that apply to ``principal`` (cached)."""
        cache_key = (principal.user, principal.key_id, principal.groups)
        found = self._cache.get(cache_key)
        if found is None:
            if len(self._cache) >= MAX_CACHED_PLANS:
                self._cache.clear()
            found = self._cache[cache_key] = self._resolve(principal)
        return found

    def _resolve(self, principal: Principal) -> Plan:
        per_user = self.user
        member_of = [self.group_user[g] for g in sorted(principal.groups) if g in self.group_user]
        if member_of:
            per_user = Limits.most_generous(member_of).over(per_user)
        if principal.user in self.users:
            per_user = self.users[principal.user].over(per_user)
        subjects: list[tuple[str, str, Limits]] = [("user", subject("u", principal.user), per_user)]
        if principal.key_id is not None:
            per_key = self.key
            if principal.key_id in self.keys:
                per_key = self.keys[principal.key_id].over(per_key)
            subjects.append(("key", subject("k", principal.key_id), per_key))
        for group in sorted(principal.groups):
            if group in self.group_total:
                subjects.append(("group", subject("g", group), self.group_total[group]))
        found: dict[str, list[Limit]] = {name: [] for name in LIMIT_NAMES}
        for scope, who, limits in subjects:
            for name, value in zip(LIMIT_NAMES, limits.values, strict=True):
                if value is not None and value >= 0:
                    found[name].append(Limit(name, scope, who, value, WINDOWS[name]))
        return Plan(
            tuple(found["requests_per_minute"]),
            tuple(found["tokens_per_minute"] + found["tokens_per_day"]),
            tuple(found["concurrent_requests"]),
        )


def subject(kind: str, name: str) -> str:
    """An opaque, fixed-length storage identity for a user, key or group name."""
    digest = hashlib.blake2b(name.encode("utf-8", "surrogatepass"), digest_size=12, person=b"sluice-quota").hexdigest()
    return f"{kind}.{digest}"


def _limits(data: Any, where: str) -> Limits:
    if not isinstance(data, dict):
        raise PolicyError(f"{where} must be a table")
    unknown = sorted(set(data) - set(LIMIT_NAMES))
    if unknown:
        raise PolicyError(f"{where}.{unknown[0]} is not a known limit (known: {', '.join(LIMIT_NAMES)})")
    values: list[_Value] = []
    for name in LIMIT_NAMES:
        value = data.get(name)
        if value is None:
            values.append(None)
        elif value == UNLIMITED:
            values.append(-1)
        elif type(value) is int and 0 <= value <= MAX_LIMIT:
            values.append(value)
        else:
            raise PolicyError(f'{where}.{name} must be a whole number from 0 to {MAX_LIMIT}, or "{UNLIMITED}"')
    return Limits(tuple(values))


def _named(data: Any, where: str) -> dict[str, Limits]:
    if not isinstance(data, dict):
        raise PolicyError(f"{where} must be a table of tables")
    return {name: _limits(table, f'{where}."{name}"') for name, table in data.items()}


def parse_policy(data: dict[str, Any]) -> QuotaPolicy:
    known = {"reserve_tokens", "user", "key", "groups", "users", "keys"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise PolicyError(f"quota policy: {unknown[0]} is not a known setting (known: {', '.join(sorted(known))})")
    reserve = data.get("reserve_tokens", 1024)
    if type(reserve) is not int or not 1 <= reserve <= MAX_LIMIT:
        raise PolicyError(f"reserve_tokens must be a whole number from 1 to {MAX_LIMIT}")
    groups = data.get("groups", {})
    if not isinstance(groups, dict):
        raise PolicyError("groups must be a table of tables")
    group_user: dict[str, Limits] = {}
    group_total: dict[str, Limits] = {}
    for name, table in groups.items():
        where = f'groups."{name}"'
        if not isinstance(table, dict):
            raise PolicyError(f"{where} must be a table")
        extra = sorted(set(table) - {"user", "total"})
        if extra:
            raise PolicyError(f"{where}.{extra[0]} is not known: a group has a [user] and a [total] table")
        if "user" in table:
            group_user[name] = _limits(table["user"], f"{where}.user")
        if "total" in table:
            group_total[name] = _limits(table["total"], f"{where}.total")
    return QuotaPolicy(
        reserve,
        _limits(data.get("user", {}), "user"),
        _limits(data.get("key", {}), "key"),
        group_user,
        group_total,
        _named(data.get("users", {}), "users"),
        _named(data.get("keys", {}), "keys"),
    )


def default_policy_path() -> Path:
    """The packaged default, ``policy/quotas.toml``."""
    return Path(str(resources.files("policy").joinpath("quotas.toml")))


def load_policy(path: str | Path | None = None) -> QuotaPolicy:
    path = default_policy_path() if path is None else Path(path)
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise PolicyError(f"cannot read quota policy {path}: {exc}") from None
    try:
        return parse_policy(data)
    except PolicyError as exc:
        raise PolicyError(f"{path}: {exc}") from None


# The demo's policy (``sluice demo``): limits high enough for benchmarks on one machine,
# so that the x-ratelimit-* headers are there to see without getting in the way.
DEMO_POLICY: Final = """\
reserve_tokens = 1024

[user]
requests_per_minute = 1_000_000
tokens_per_minute = 100_000_000
tokens_per_day = 10_000_000_000
concurrent_requests = 512
"""
