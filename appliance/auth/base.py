"""Who is calling, and what they may use: the interfaces the API depends on.

An :class:`Authenticator` turns a request into a :class:`Principal` (or
None: 401).  An :class:`AccessPolicy` says which models a principal may use;
a model it may not use is answered exactly like a model that does not exist.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from starlette.requests import HTTPConnection

from policy.errors import LocalError

__all__ = ["Principal", "Authenticator", "AccessPolicy", "DenyAll", "UnsafeAllowAll", "IdentityUnavailable"]


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller.

    ``user`` is stable and unique (for OIDC: issuer plus subject); ``key_id``
    names the API key used, if any; ``groups`` drive access and quota policy.
    """

    user: str
    key_id: str | None = None
    groups: frozenset[str] = field(default_factory=frozenset)
    # Models this credential is limited to (an API key's scope); None: no limit beyond the groups'.
    scope: frozenset[str] | None = None


class Authenticator(Protocol):
    async def authenticate(self, connection: HTTPConnection) -> Principal | None: ...


class AccessPolicy(Protocol):
    def allows(self, principal: Principal, model: str) -> bool: ...

    def visible(self, principal: Principal, models: Iterable[str]) -> list[str]: ...


class DenyAll:
    """No principal may use any model: the policy when none is configured."""

    def allows(self, principal: Principal, model: str) -> bool:
        return False

    def visible(self, principal: Principal, models: Iterable[str]) -> list[str]:
        return []


class UnsafeAllowAll:
    """**Unsafe**: every authenticated principal may use every model, within its key's scope.

    Only by explicit choice (``[access] unsafe_allow_all = true``, or the demo);
    whoever builds it logs ``unsafe_allow_all`` at every start."""

    def allows(self, principal: Principal, model: str) -> bool:
        return principal.scope is None or model in principal.scope

    def visible(self, principal: Principal, models: Iterable[str]) -> list[str]:
        return sorted(m for m in models if self.allows(principal, m))


class IdentityUnavailable(LocalError):
    """The identity store cannot be reached: the request is refused (503), never let through."""

    code = "identity_unavailable"
    status = 503
