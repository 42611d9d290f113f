"""``sluice db upgrade|status --config FILE``: the schema of the appliance's stores.

``upgrade`` applies every missing step (:mod:`appliance.migrations`) to the
identity store (``[auth].database`` or ``[auth].database_dsn_file``) and the
accounting store (``[accounting]``), SQLite or PostgreSQL; it is safe to run
again, and from several machines at once (PostgreSQL: an advisory lock).
Run it once before starting replicas of a new release on PostgreSQL: they
refuse to start until it has run.  ``status`` only reports.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import sys
from dataclasses import dataclass
from pathlib import Path

from .migrations import SchemaError, latest, postgres_upgrade, postgres_version, sqlite_upgrade, sqlite_version

__all__ = ["add_arguments", "run"]


@dataclass(frozen=True, slots=True)
class _Target:
    store: str
    sqlite: Path | None = None
    dsn: str | None = None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="db_command", required=True)
    for name, text in (("upgrade", "apply the missing schema steps"), ("status", "show each store's schema version")):
        action = actions.add_parser(name, help=text)
        action.add_argument("--config", required=True, help="the appliance's TOML configuration")


def _targets(config: str) -> list[_Target]:
    from .auth.secret import read_secret_file
    from .settings import load_settings

    settings = load_settings(config)
    targets = []
    auth = settings.identity.auth
    if auth.database_dsn_file is not None:
        targets.append(_Target("identity", dsn=read_secret_file(auth.database_dsn_file, "auth.database_dsn_file").reveal()))
    elif auth.database is not None:
        targets.append(_Target("identity", sqlite=auth.database))
    accounting = settings.metering.accounting
    if accounting.backend == "postgresql" and accounting.dsn_file is not None:
        targets.append(_Target("accounting", dsn=read_secret_file(accounting.dsn_file, "accounting.dsn_file").reveal()))
    elif accounting.backend == "sqlite" and accounting.path is not None:
        targets.append(_Target("accounting", sqlite=accounting.path))
    return targets


async def _postgres(target: _Target, apply: bool) -> tuple[int, list[int]]:
    from .auth._db import postgres_driver

    connection = await postgres_driver().connect(target.dsn, timeout=10)
    try:
        applied = await postgres_upgrade(connection, target.store, "postgresql") if apply else []
        return await postgres_version(connection, target.store), applied
    finally:
        await connection.close()


def _sqlite(target: _Target, apply: bool) -> tuple[int, list[int]]:
    path = target.sqlite
    if path is None:
        return 0, []
    if not apply and not path.exists():
        return 0, []
    connection = sqlite3.connect(str(path), isolation_level=None)
    try:
        connection.execute("PRAGMA busy_timeout = 5000")
        applied = sqlite_upgrade(connection, target.store, str(path)) if apply else []
        return sqlite_version(connection, target.store), applied
    finally:
        connection.close()


def run(args: argparse.Namespace) -> int:
    from .settings import ConfigError

    apply = args.db_command == "upgrade"
    try:
        targets = _targets(args.config)
    except (ConfigError, ValueError) as exc:
        print(f"sluice: {exc}", file=sys.stderr)
        return 2
    if not targets:
        print("sluice db: the configuration names no database ([auth].database, [accounting])", file=sys.stderr)
        return 2
    status = 0
    for target in targets:
        where = "postgresql" if target.dsn is not None else str(target.sqlite)
        try:
            if target.dsn is not None:
                version, applied = asyncio.run(_postgres(target, apply))
            else:
                version, applied = _sqlite(target, apply)
        except SchemaError as exc:
            print(f"sluice: {exc}", file=sys.stderr)
            status = 1
            continue
        except Exception as exc:  # noqa: BLE001 (the drivers' own errors: sqlite3, asyncpg, OSError)
            print(f"sluice: {target.store} ({where}): {type(exc).__name__}: {exc}", file=sys.stderr)
            status = 1
            continue
        state = "current" if version == latest(target.store) else f"needs {latest(target.store)}"
        done = f"; applied {', '.join(map(str, applied))}" if applied else ""
        print(f"{target.store}\t{where}\tversion {version} ({state}){done}")
    return status
