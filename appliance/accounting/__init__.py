"""Accounting: one row per answered request, and never what anyone wrote.

A :class:`UsageRow` holds who (user, API key id), when, which model and
route, the status, the token counts the gate reported, the latency, and
whether the request was sealed.  Nothing else is ever passed here: the
interface has no field a prompt or an answer could go into.

:meth:`Accounting.record` returns once the row is committed, so that an
answer's row is on disk before the answer's last byte is sent: a crash right
after an answer cannot lose its row.  SQLite is the default
(:class:`SqliteAccounting`); PostgreSQL (:class:`PostgresAccounting`,
optional ``asyncpg``) serves several replicas, with a local journal for
the moments the database is away (see :mod:`._postgres`).
"""

from __future__ import annotations

from pathlib import Path

from ..auth.secret import Secret
from ._rows import Accounting, UsageRow
from ._sqlite import SqliteAccounting

__all__ = ["Accounting", "PostgresAccounting", "SqliteAccounting", "UsageRow", "open_accounting"]


def __getattr__(name: str) -> object:
    if name == "PostgresAccounting":
        from ._postgres import PostgresAccounting

        return PostgresAccounting
    raise AttributeError(name)


def open_accounting(
    backend: str,
    path: str | None = None,
    dsn: str | Secret | None = None,
    synchronous: str = "normal",
    journal: str | None = None,
) -> Accounting:
    """The configured accounting store (not yet started)."""
    if backend == "sqlite":
        if path is None:
            raise ValueError("accounting.path is required for the sqlite backend")
        return SqliteAccounting(path, synchronous=synchronous)
    if backend == "postgresql":
        if dsn is None:
            raise ValueError("accounting.dsn_file is required for the postgresql backend")
        from ._postgres import PostgresAccounting

        return PostgresAccounting(dsn, None if journal is None else Path(journal))
    raise ValueError(f"unknown accounting backend {backend!r}")
