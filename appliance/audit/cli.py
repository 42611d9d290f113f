"""``sluice audit`` (list and filter the trail) and ``sluice audit verify`` (check its chain).

    sluice audit --config /etc/sluice/appliance.toml --since 2026-01-01 --kind key_revoked
    sluice audit --database /var/lib/sluice/usage.db --json
    sluice audit verify --config /etc/sluice/appliance.toml --expect-head 1042:3f5a...
    sluice audit verify --file /etc/sluice-cluster/sealed-keys/audit.jsonl   # the cluster side's trail

Reading never changes the store.  ``verify`` exits 0 when the trail is
intact, 1 with one line per problem otherwise (see :mod:`policy.audit` for
what it can and cannot detect).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import sys
from pathlib import Path
from typing import IO

from policy.audit import KINDS, AuditRecord, Head, Problem, verify

from . import AuditStore, Query, open_store

__all__ = ["add_arguments", "run", "read_jsonl"]


def _time(text: str) -> float:
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date or time (YYYY-MM-DD[THH:MM])") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.timestamp()


def _kind(text: str) -> str:
    if text not in KINDS:
        raise argparse.ArgumentTypeError(f"unknown kind {text!r} (known: {', '.join(sorted(KINDS))})")
    return text


def _expected_head(text: str) -> Head:
    seq, _, digest = text.partition(":")
    if not seq.isdigit() or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise argparse.ArgumentTypeError("--expect-head is SEQ:HASH (a number and 64 hex digits)")
    return Head(int(seq), digest)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "action",
        nargs="?",
        choices=("list", "verify"),
        default="list",
        help="list and filter the trail (default), or verify its chain",
    )
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--config", help="the appliance's TOML configuration (its [accounting] table)")
    where.add_argument("--database", help="a SQLite accounting database, directly")
    where.add_argument("--file", help="a cluster side's audit file (JSON lines)")
    parser.add_argument("--key-file", help="the HMAC key the records are signed with (default: the configuration's)")
    parser.add_argument("--since", type=_time, help="list: from this UTC date or time (YYYY-MM-DD[THH:MM])")
    parser.add_argument("--until", type=_time, help="list: before this UTC date or time")
    parser.add_argument("--kind", type=_kind, action="append", default=[], help="list: only this kind (repeatable)")
    parser.add_argument("--actor", help="list: only events by this actor")
    parser.add_argument("--json", action="store_true", help="list: one JSON object per line")
    parser.add_argument(
        "--expect-head",
        type=_expected_head,
        help="verify: SEQ:HASH of the head as recorded elsewhere (a security log line, a copy)",
    )


def read_jsonl(path: Path) -> tuple[list[AuditRecord], Head | None]:
    """A cluster side's trail: records in ``path``, the head in ``path`` + ``.head``."""
    records = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if line.strip():
                try:
                    records.append(AuditRecord.from_json(json.loads(line)))
                except (ValueError, KeyError, TypeError):
                    raise ValueError(f"{path}:{number} is not an audit record") from None
    head_path = path.with_name(path.name + ".head")
    head = None
    if head_path.exists():
        data = json.loads(head_path.read_text(encoding="utf-8"))
        head = Head(int(data["seq"]), str(data["hash"]), data.get("sig"))
    return records, head


def _key(args: argparse.Namespace, configured: Path | None) -> bytes | None:
    path = args.key_file or configured
    if path is None:
        return None
    from ..auth.secret import read_secret_file

    return read_secret_file(Path(path), "audit key", min_length=16).reveal().encode()


def _store(args: argparse.Namespace) -> tuple[AuditStore, bytes | None]:
    if args.database is not None:
        return open_store("sqlite", path=args.database, read_only=True), _key(args, None)
    from ..settings import ConfigError, load_settings

    try:
        accounting = load_settings(args.config).metering.accounting
    except ConfigError as exc:
        raise ValueError(str(exc)) from None
    key = _key(args, accounting.audit_key_file)
    if accounting.backend == "sqlite" and accounting.path is not None:
        return open_store("sqlite", path=accounting.path, read_only=True), key
    if accounting.backend == "postgresql" and accounting.dsn_file is not None:
        from ..auth.secret import read_secret_file

        return open_store("postgresql", dsn=read_secret_file(accounting.dsn_file, "accounting.dsn_file")), key
    raise ValueError("the configuration has no [accounting] table")


async def _read(store: AuditStore, query: Query | None) -> tuple[list[AuditRecord], Head | None]:
    try:
        return await store.records(query), await store.head()
    finally:
        await store.aclose()


def _when(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def render(records: list[AuditRecord], as_json: bool, out: IO[str]) -> None:
    if as_json:
        for record in records:
            out.write(json.dumps(record.to_json(), sort_keys=True) + "\n")
        return
    rows = [["SEQ", "TIME", "KIND", "ACTOR", "SUBJECT", "DETAILS"]]
    rows += [
        [str(r.seq), _when(r.time), r.kind, r.actor, r.subject, " ".join(f"{k}={v}" for k, v in sorted(r.details.items()))]
        for r in records
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        out.write("  ".join([c.ljust(w) for c, w in zip(row, widths, strict=False)] + [row[-1]]).rstrip() + "\n")
    if not records:
        out.write("(no audit records match)\n")


def run(args: argparse.Namespace, out: IO[str] | None = None) -> int:
    out = out or sys.stdout
    command = args.action
    try:
        if args.file is not None:
            key = _key(args, None)
            records, head = read_jsonl(Path(args.file))
            if command == "list":
                query = Query(args.since, args.until, tuple(args.kind), args.actor)
                records = [r for r in records if _matches(r, query)]
        else:
            store, key = _store(args)
            wanted = Query(args.since, args.until, tuple(args.kind), args.actor) if command == "list" else None
            records, head = asyncio.run(_read(store, wanted))
    except (OSError, ValueError, RuntimeError) as exc:
        print(f"sluice audit: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 (the database driver's own errors: sqlite3, asyncpg)
        print(f"sluice audit: cannot read the audit trail: {type(exc).__name__}", file=sys.stderr)
        return 1
    if command == "list":
        render(records, args.json, out)
        return 0
    problems = verify(records, head, key)
    expected = args.expect_head
    if expected is not None and not _extends(records, expected):
        problems.append(Problem(0, f"the trail does not hold the expected head {expected.seq}:{expected.hash[:12]}..."))
    for problem in problems:
        print(f"sluice audit verify: {problem}", file=out)
    if problems:
        return 1
    signed = "signed, signatures checked" if key is not None else "unsigned (no key given)"
    print(
        f"audit trail intact: {len(records)} records, {signed}; head {head.seq if head else 0}:{head.hash if head else '-'}",
        file=out,
    )
    return 0


def _matches(record: AuditRecord, query: Query) -> bool:
    return (
        (query.since is None or record.time >= query.since)
        and (query.until is None or record.time < query.until)
        and (not query.kinds or record.kind in query.kinds)
        and (query.actor is None or record.actor == query.actor)
    )


def _extends(records: list[AuditRecord], expected: Head) -> bool:
    """Whether the trail still holds the record a copy of an earlier head names (it may have grown since)."""
    return any(r.seq == expected.seq and r.hash == expected.hash for r in records)
