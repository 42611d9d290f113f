"""``sluice keys create|list|revoke``: operators manage API keys in the identity database.

The database is the one named by ``[auth].database`` (SQLite) or
``[auth].database_dsn_file`` (PostgreSQL) in the appliance's configuration
(``--config``), or a SQLite file given directly (``--database``).  A key made
here is printed once.  ``--groups`` records the owner's groups as an
operator's assignment (for service accounts that never sign in); without it
the key acts with whatever groups the owner last signed in with.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ._db import Database, PostgresDatabase, open_database
from .base import IdentityUnavailable
from .identity import clean_groups
from .keystore import KeyRequestError, KeyStore
from .secret import read_secret_file
from .sessions import SessionStore
from .users import UserDirectory

if TYPE_CHECKING:
    from ..audit import AuditTrail

__all__ = ["add_keys_arguments", "run_keys"]


def add_keys_arguments(parser: argparse.ArgumentParser) -> None:
    common = argparse.ArgumentParser(add_help=False)
    where = common.add_mutually_exclusive_group(required=True)
    where.add_argument("--config", help="the appliance's TOML configuration (its [auth].database)")
    where.add_argument("--database", help="the identity database file")
    actions = parser.add_subparsers(dest="keys_command", required=True)
    create = actions.add_parser("create", parents=[common], help="make a key (printed once)")
    create.add_argument("--user", required=True, help="the owner's user id (<issuer>#<subject>, or a service name)")
    create.add_argument("--name", required=True, help="a name for the key")
    create.add_argument("--models", help="comma-separated model names the key is limited to (default: all allowed)")
    create.add_argument("--expires-days", type=int, help="days until the key expires (default: never)")
    create.add_argument("--groups", help="comma-separated groups to record for the owner (an operator assignment)")
    listing = actions.add_parser("list", parents=[common], help="list keys (never the keys themselves)")
    listing.add_argument("--user", help="only this user's keys")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    revoke = actions.add_parser("revoke", parents=[common], help="revoke a key, or every key of a user")
    target = revoke.add_mutually_exclusive_group(required=True)
    target.add_argument("key_id", nargs="?", help="the key's id (the part after sk-sluice-)")
    target.add_argument("--user", help="revoke every key of this user")


async def _database(args: argparse.Namespace) -> Database:
    """The identity store named by ``--database`` (a SQLite file) or ``--config``, started."""
    if args.database:
        return open_database(Path(args.database))
    from ..settings import ConfigError, load_settings

    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        raise SystemExit(f"sluice: {exc}") from None
    auth = settings.identity.auth
    if auth.database_dsn_file is not None:
        db = PostgresDatabase(read_secret_file(auth.database_dsn_file, "auth.database_dsn_file"))
        await db.start()
        return db
    if auth.database is None:
        raise SystemExit(f"sluice: {args.config} has no [auth].database")
    return open_database(auth.database)


def _names(text: str | None) -> list[str] | None:
    if text is None:
        return None
    return [n.strip() for n in text.split(",") if n.strip()]


def _audit_trail(args: argparse.Namespace) -> AuditTrail | None:
    """With ``--config``, key actions go to the audit trail beside the accounting (with ``--database``, only to the log)."""
    if not args.config:
        return None
    from ..audit.startup import open_trail
    from ..settings import load_settings

    return open_trail(load_settings(args.config).metering.accounting)


def run_keys(args: argparse.Namespace) -> int:
    return asyncio.run(_run_keys(args))


async def _run_keys(args: argparse.Namespace) -> int:
    from ..audit.startup import close_trail

    try:
        db = await _database(args)
    except (OSError, ValueError, RuntimeError) as exc:
        print(f"sluice: cannot open the identity database: {exc}", file=sys.stderr)
        return 2
    try:
        trail = _audit_trail(args)
    except (OSError, ValueError, RuntimeError) as exc:
        await db.aclose()
        print(f"sluice: cannot open the audit trail: {exc}", file=sys.stderr)
        return 2
    try:
        users = UserDirectory(db, groups_max_age=float("inf"))
        keys = KeyStore(db, users)
        if args.keys_command == "create":
            if args.expires_days is not None and not 1 <= args.expires_days <= 36500:
                print("sluice: --expires-days must be between 1 and 36500", file=sys.stderr)
                return 2
            expires = None if args.expires_days is None else time.time() + args.expires_days * 86400
            try:
                if args.groups is not None:
                    await users.set_groups(args.user, clean_groups(_names(args.groups) or []))
                key, info = await keys.create(args.user, args.name, _names(args.models), expires, created_by="cli")
            except (KeyRequestError, ValueError) as exc:
                print(f"sluice: {exc}", file=sys.stderr)
                return 2
            print(f"key id:  {info.id}", file=sys.stderr)
            print(f"owner:   {info.owner}", file=sys.stderr)
            print("The key (shown once; only its hash is kept):", file=sys.stderr)
            print(key)
            return 0
        if args.keys_command == "list":
            now = time.time()
            for info in await keys.list_keys(args.user):
                row = {
                    "id": info.id,
                    "owner": info.owner,
                    "name": info.name,
                    "models": list(info.scope) if info.scope else None,
                    "created": int(info.created),
                    "expires": None if info.expires is None else int(info.expires),
                    "state": info.state(now),
                    "created_by": info.created_by,
                }
                if args.json:
                    print(json.dumps(row))
                else:
                    print("\t".join(str(row[k]) for k in ("id", "state", "owner", "name", "models", "expires")))
            return 0
        if args.keys_command == "revoke":
            if args.user is not None:
                count = await keys.revoke_user(args.user)
                await SessionStore(db, lifetime=0).delete_user(args.user)
                print(f"revoked {count} key(s) of {args.user}; ended their web sessions", file=sys.stderr)
                return 0
            if await keys.revoke(args.key_id):
                print(f"revoked {args.key_id}", file=sys.stderr)
                return 0
            print(f"sluice: no active key {args.key_id}", file=sys.stderr)
            return 1
        return 2
    except IdentityUnavailable:
        print("sluice: the identity database cannot be reached", file=sys.stderr)
        return 2
    finally:
        await db.aclose()
        close_trail(trail)
