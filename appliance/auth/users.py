"""Users' groups as last asserted by the provider, the proxy, or an operator.

API keys have no groups of their own: a key acts with its owner's *current*
groups, read from here on every use.  The groups are refreshed whenever the
owner signs in on the web, uses a Bearer JWT, or comes through the trusted
proxy.  The rule for keys of users who lost access:

* a model the owner's groups no longer allow is answered 404, like an
  unknown model, from the next request on (policy file or groups changed);
* groups asserted by the provider more than ``groups_max_age`` ago (default
  30 days) count as no groups at all, so keys of someone who left the
  institution, and so never signs in again, stop working by themselves;
* groups set by an operator (``sluice keys create --groups``, for service
  accounts) do not age;
* ``sluice keys revoke --user`` ends every key of a user at once.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from ..audit import audit_event, names
from ._db import Database
from .identity import Identity

__all__ = ["UserDirectory", "UserRecord"]

# A user seen again with unchanged claims is written back at most this often.
SEEN_WRITE_INTERVAL: Final = 300.0
# The in-memory memo of recent writes is bounded; past this it is cleared.
MAX_MEMO: Final = 100_000


@dataclass(frozen=True, slots=True)
class UserRecord:
    user: str
    email: str | None
    name: str | None
    groups: frozenset[str]
    source: str
    refreshed: float


class UserDirectory:
    def __init__(self, db: Database, groups_max_age: float, clock: Callable[[], float] = time.time) -> None:
        self._db = db
        self._max_age = groups_max_age
        self._clock = clock
        self._memo: dict[str, tuple[Identity, float]] = {}

    async def record(self, identity: Identity, source: str) -> None:
        """Store ``identity``'s profile and groups as asserted now."""
        now = self._clock()
        await self._audit_groups(identity.user, identity.groups, source)
        await self._db.execute(
            'INSERT INTO users ("user", email, name, "groups", source, refreshed) VALUES (?, ?, ?, ?, ?, ?) '
            'ON CONFLICT ("user") DO UPDATE SET email = excluded.email, name = excluded.name, '
            '"groups" = excluded."groups", source = excluded.source, refreshed = excluded.refreshed',
            identity.user,
            identity.email,
            identity.name,
            json.dumps(sorted(identity.groups)),
            source,
            now,
        )
        if len(self._memo) > MAX_MEMO:
            self._memo.clear()
        self._memo[identity.user] = (identity, now)

    async def seen(self, identity: Identity, source: str) -> None:
        """Like :meth:`record`, but skips the write when nothing changed recently (per-request use)."""
        memo = self._memo.get(identity.user)
        if memo is not None and memo[0] == identity and self._clock() - memo[1] < SEEN_WRITE_INTERVAL:
            return
        await self.record(identity, source)

    async def _audit_groups(self, user: str, groups: frozenset[str], source: str) -> None:
        """Record in the audit trail groups that differ from the ones stored for ``user``."""
        row = await self._db.fetchone('SELECT "groups" FROM users WHERE "user" = ?', user)
        before = frozenset(json.loads(row[0])) if row is not None else frozenset()
        if row is not None and before != groups or row is None and groups:
            audit_event("groups_changed", source, user[:256], added=names(groups - before), removed=names(before - groups))

    async def set_groups(self, user: str, groups: frozenset[str]) -> None:
        """An operator's assignment (service accounts): does not age, until the user signs in."""
        self._memo.pop(user, None)
        await self._audit_groups(user, groups, "admin")
        await self._db.execute(
            'INSERT INTO users ("user", email, name, "groups", source, refreshed) VALUES (?, NULL, NULL, ?, \'admin\', ?) '
            'ON CONFLICT ("user") DO UPDATE SET "groups" = excluded."groups", source = \'admin\', '
            "refreshed = excluded.refreshed",
            user,
            json.dumps(sorted(groups)),
            self._clock(),
        )

    async def get(self, user: str) -> UserRecord | None:
        row = await self._db.fetchone('SELECT "user", email, name, "groups", source, refreshed FROM users WHERE "user" = ?', user)
        if row is None:
            return None
        return UserRecord(row[0], row[1], row[2], frozenset(json.loads(row[3])), row[4], row[5])

    async def current_groups(self, user: str) -> frozenset[str]:
        """The groups ``user`` acts with now: none when unknown or stale (see the module doc)."""
        record = await self.get(user)
        if record is None:
            return frozenset()
        return self.groups_now(record.groups, record.source, record.refreshed)

    def groups_now(self, groups: frozenset[str], source: str, refreshed: float) -> frozenset[str]:
        """``groups`` as asserted by ``source`` at ``refreshed``, if they still count (see the module doc)."""
        if source != "admin" and self._clock() - refreshed > self._max_age:
            return frozenset()
        return groups
