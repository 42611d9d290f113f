"""Model aliases and deprecations: the ``[aliases]`` and ``[deprecated]`` tables of the access policy.

```toml
[aliases]
default = "llama-3.1-8b-instruct"     # a client may say "default"; the call names the real model
coder = "qwen2.5-coder-32b"

[deprecated."llama-3.1-8b-instruct"]
deprecation = 2026-12-01              # from this day the model is deprecated (RFC 9745)
sunset = 2027-03-01                   # and after this one it goes away (RFC 8594)
```

An alias is resolved before anything else looks at the model: group access,
quotas, accounting and the gate all see the real model, so an alias grants
nothing its target does not, and the answer names the real model (the model
server's own ``model`` field).  Answers of a deprecated model carry
``Deprecation: @<unix time>`` and ``Sunset: <HTTP date>``.  Aliases apply to
requests in the clear: a sealed request's body is opened only by the gate, so
a sealed client names the real model (``/v1/models`` lists each alias with its
target).
"""

from __future__ import annotations

import datetime
import email.utils
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

__all__ = ["ModelNames", "NO_NAMES", "parse_model_names", "MAX_ALIASES"]

# Bounds on the policy itself.
MAX_ALIASES: Final = 1_000
_NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9\-_.:/]{0,127}", re.ASCII)


@dataclass(frozen=True, slots=True)
class ModelNames:
    """Aliases (alias -> model) and deprecation headers (model -> headers)."""

    aliases: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    deprecations: Mapping[str, Mapping[str, str]] = field(default_factory=lambda: MappingProxyType({}))

    def resolve(self, model: str) -> str:
        """The real model ``model`` names (itself when it is no alias)."""
        return self.aliases.get(model, model)

    def headers(self, model: str) -> dict[str, str]:
        """``Deprecation`` and ``Sunset`` for a deprecated model; empty otherwise."""
        return dict(self.deprecations.get(model, {}))


NO_NAMES: Final = ModelNames()


def _day(value: Any, where: str) -> datetime.datetime:
    if type(value) is not datetime.date:
        raise ValueError(f"{where} must be a TOML date (YYYY-MM-DD)")
    return datetime.datetime(value.year, value.month, value.day, tzinfo=datetime.UTC)


def parse_model_names(data: Mapping[str, Any], where: str) -> ModelNames:
    """The ``[aliases]`` and ``[deprecated]`` tables; ``ValueError`` naming the entry."""
    aliases = data.get("aliases", {})
    if not isinstance(aliases, dict) or len(aliases) > MAX_ALIASES:
        raise ValueError(f"{where}: [aliases] must be a table of at most {MAX_ALIASES} names")
    for alias, model in aliases.items():
        if not _NAME_RE.fullmatch(alias) or not isinstance(model, str) or not _NAME_RE.fullmatch(model):
            raise ValueError(f"{where}: aliases.{alias!r} must map a model name to a model name")
        if model in aliases:
            raise ValueError(f"{where}: aliases.{alias!r} points at another alias; name the model itself")
    deprecated = data.get("deprecated", {})
    if not isinstance(deprecated, dict) or len(deprecated) > MAX_ALIASES:
        raise ValueError(f"{where}: [deprecated] must be a table of at most {MAX_ALIASES} models")
    deprecations: dict[str, Mapping[str, str]] = {}
    for model, entry in deprecated.items():
        if not _NAME_RE.fullmatch(model) or not isinstance(entry, dict) or not set(entry) <= {"deprecation", "sunset"}:
            raise ValueError(f"{where}: deprecated.{model!r} must be a table of 'deprecation' and 'sunset' dates")
        if model in aliases:
            raise ValueError(f"{where}: deprecated.{model!r} is an alias; deprecate the model it names")
        headers: dict[str, str] = {}
        if "deprecation" in entry:
            since = _day(entry["deprecation"], f"{where}: deprecated.{model!r}.deprecation")
            headers["Deprecation"] = f"@{int(since.timestamp())}"
        if "sunset" in entry:
            sunset = _day(entry["sunset"], f"{where}: deprecated.{model!r}.sunset")
            headers["Sunset"] = email.utils.format_datetime(sunset, usegmt=True)
        if not headers:
            raise ValueError(f"{where}: deprecated.{model!r} needs a deprecation or a sunset date")
        deprecations[model] = MappingProxyType(headers)
    return ModelNames(MappingProxyType(dict(aliases)), MappingProxyType(deprecations))
