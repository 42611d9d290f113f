"""Who a user is: issuer plus subject, and the profile claims beside them.

A user id is ``<issuer>#<subject>``.  OpenID Connect issuers are URLs without
a fragment, so the first ``#`` splits an id unambiguously.  The trusted-header
mode uses its configured issuer string the same way.

Email, display name and groups come from claims whose names are configured;
values are bounded and anything of the wrong type is ignored (a missing
groups claim means no groups, so nothing is allowed: fail closed).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

__all__ = ["MAX_GROUPS", "ClaimNames", "Identity", "clean_groups", "identity_from_claims", "user_id"]

# Bounds on what an identity provider (or a proxy header) may hand us.
MAX_SUBJECT_CHARS: Final = 255  # OpenID Connect Core 2: sub is at most 255 ASCII characters
MAX_CLAIM_CHARS: Final = 256  # email, name, each group name
MAX_GROUPS: Final = 256  # more groups than this is a misconfigured mapper, not a user


@dataclass(frozen=True, slots=True)
class ClaimNames:
    """The claim names (configurable per provider) that carry the profile."""

    email: str = "email"
    name: str = "name"
    groups: str = "groups"


@dataclass(frozen=True, slots=True)
class Identity:
    user: str
    email: str | None
    name: str | None
    groups: frozenset[str]


def _printable(value: str) -> bool:
    return value.isprintable() and "\n" not in value


def user_id(issuer: str, subject: str) -> str:
    """The stable id of ``subject`` at ``issuer``; raises ValueError for an unusable subject."""
    if not subject or len(subject) > MAX_SUBJECT_CHARS or not _printable(subject):
        raise ValueError("bad subject")
    return f"{issuer}#{subject}"


def _text(value: Any) -> str | None:
    if isinstance(value, str) and 0 < len(value) <= MAX_CLAIM_CHARS and _printable(value):
        return value
    return None


def clean_groups(values: Iterable[Any]) -> frozenset[str]:
    """Bounded, printable group names; others are dropped; more than MAX_GROUPS is an error."""
    groups = set()
    for value in values:
        text = _text(value.strip() if isinstance(value, str) else value)
        if text is not None:
            groups.add(text)
        if len(groups) > MAX_GROUPS:
            raise ValueError("too many groups")
    return frozenset(groups)


def identity_from_claims(issuer: str, claims: Mapping[str, Any], names: ClaimNames) -> Identity:
    """The identity in verified ``claims``; raises ValueError when ``sub`` is unusable."""
    subject = claims.get("sub")
    if not isinstance(subject, str):
        raise ValueError("no subject")
    raw = claims.get(names.groups)
    if isinstance(raw, str):
        raw = [raw]
    groups = clean_groups(raw) if isinstance(raw, list) else frozenset()
    return Identity(user_id(issuer, subject), _text(claims.get(names.email)), _text(claims.get(names.name)), groups)
