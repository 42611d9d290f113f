"""A filter on the audit trail (time range, event kinds, actor), as SQL for either store."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Query"]


@dataclass(frozen=True, slots=True)
class Query:
    since: float | None = None
    until: float | None = None
    kinds: tuple[str, ...] = ()
    actor: str | None = None

    def sql(self, mark: str) -> tuple[str, list[object]]:
        """`` WHERE ...`` with placeholders made by ``mark`` (``?``, or ``$`` for numbered ones), and the values."""
        clauses: list[str] = []
        params: list[object] = []

        def placeholder(value: object) -> str:
            params.append(value)
            return f"${len(params)}" if mark == "$" else "?"

        if self.since is not None:
            clauses.append(f"time >= {placeholder(self.since)}")
        if self.until is not None:
            clauses.append(f"time < {placeholder(self.until)}")
        if self.kinds:
            clauses.append("kind IN (" + ", ".join(placeholder(k) for k in self.kinds) + ")")
        if self.actor is not None:
            clauses.append(f"actor = {placeholder(self.actor)}")
        return (" WHERE " + " AND ".join(clauses) if clauses else ""), params
