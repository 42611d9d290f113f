"""Which groups may use which models: the group policy file, compiled once.

```toml
# access.toml
[groups.staff]
models = ["llama-3.1-70b-instruct", "qwen-*"]   # exact names, or a prefix followed by '*'

[groups."/research/nlp"]
models = ["*"]                                   # '*' alone: every model (say so on purpose)
```

The same file may name model aliases and deprecations (``[aliases]``,
``[deprecated]``: :mod:`appliance.auth.aliases`).

Default deny: a model no group of the caller lists is refused (and answered
like a model that does not exist); an empty or missing ``[groups]`` table
denies everything.  An API key's scope narrows further, never widens.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from policy.errors import InternalError

from .aliases import NO_NAMES, ModelNames, parse_model_names
from .base import Principal

__all__ = ["AccessPolicyError", "GroupPolicy", "load_access_policy", "parse_access_policy"]

_PATTERN_RE: Final = re.compile(r"(?:[A-Za-z0-9][A-Za-z0-9\-_.:/]{0,127}\*?|\*)", re.ASCII)
# Bounds on the policy itself: a typo should not make a million-entry table.
MAX_POLICY_GROUPS: Final = 10_000
MAX_PATTERNS_PER_GROUP: Final = 1_000


class AccessPolicyError(InternalError, ValueError):
    """The policy file is wrong; the message names the entry."""


@dataclass(frozen=True, slots=True)
class _Rule:
    exact: frozenset[str]
    prefixes: tuple[str, ...]

    def matches(self, model: str) -> bool:
        return model in self.exact or any(model.startswith(p) for p in self.prefixes)


class GroupPolicy:
    """An :class:`~appliance.auth.base.AccessPolicy` from group rules; default deny."""

    def __init__(self, rules: Mapping[str, _Rule], names: ModelNames = NO_NAMES) -> None:
        self._rules = dict(rules)
        self.names = names

    @property
    def groups(self) -> list[str]:
        return sorted(self._rules)

    def allows(self, principal: Principal, model: str) -> bool:
        if principal.scope is not None and model not in principal.scope:
            return False
        for group in principal.groups:
            rule = self._rules.get(group)
            if rule is not None and rule.matches(model):
                return True
        return False

    def visible(self, principal: Principal, models: Iterable[str]) -> list[str]:
        return sorted(m for m in models if self.allows(principal, m))


def parse_access_policy(data: Mapping[str, Any], where: str = "access policy") -> GroupPolicy:
    unknown = sorted(set(data) - {"groups", "aliases", "deprecated"})
    if unknown:
        raise AccessPolicyError(f"{where}: {unknown[0]!r} is not known ([groups.NAME], [aliases], [deprecated])")
    try:
        names = parse_model_names(data, where)
    except ValueError as exc:
        raise AccessPolicyError(str(exc)) from None
    groups = data.get("groups", {})
    if not isinstance(groups, dict) or len(groups) > MAX_POLICY_GROUPS:
        raise AccessPolicyError(f"{where}: [groups] must be a table of at most {MAX_POLICY_GROUPS} groups")
    rules: dict[str, _Rule] = {}
    for group, entry in groups.items():
        if not group or not group.isprintable():
            raise AccessPolicyError(f"{where}: group names must be printable")
        if not isinstance(entry, dict) or set(entry) != {"models"}:
            raise AccessPolicyError(f"{where}: groups.{group!r} must be a table with only 'models'")
        models = entry["models"]
        if not isinstance(models, list) or len(models) > MAX_PATTERNS_PER_GROUP:
            raise AccessPolicyError(f"{where}: groups.{group!r}.models must be a list")
        exact, prefixes = set(), []
        for pattern in models:
            if not isinstance(pattern, str) or not _PATTERN_RE.fullmatch(pattern):
                raise AccessPolicyError(f"{where}: groups.{group!r}.models: {pattern!r} is not a model name or 'prefix*'")
            if pattern.endswith("*"):
                prefixes.append(pattern[:-1])
            else:
                exact.add(pattern)
        rules[group] = _Rule(frozenset(exact), tuple(prefixes))
    return GroupPolicy(rules, names)


def load_access_policy(path: Path) -> GroupPolicy:
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise AccessPolicyError(f"cannot read the access policy {path}: {exc}") from None
    return parse_access_policy(data, str(path))
