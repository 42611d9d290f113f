"""The cluster side's audit trail: a local file with the appliance's record format and chain.

The cluster side cannot reach the appliance's store, so its own security and
admin events (sealed keys created and rotated) go to ``audit.jsonl`` in the
sealed-keys directory (``<config dir>/sealed-keys/``, the functional
account's own, mode 0700): one record per line in :mod:`policy.audit`'s format,
chained the same way, with the head in ``audit.jsonl.head`` beside it.
``sluice audit verify --file .../audit.jsonl`` checks it like the appliance's.

Appends take an exclusive lock on the head file, append and fsync the record,
then replace the head: two commands run at once cannot fork the chain.
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import json
import os
from pathlib import Path
from typing import Final

from policy.audit import AuditEvent, AuditRecord, Detail, Head, chain, head_of

from .scheduler.state import atomic_write

__all__ = ["AUDIT_FILE", "append_event", "operator"]

AUDIT_FILE: Final = "audit.jsonl"


def operator() -> str:
    """Who ran this command: the account's name (the functional account for the gate)."""
    with contextlib.suppress(Exception):
        return getpass.getuser()
    return f"uid:{os.getuid()}"


def _head(path: Path) -> Head | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return Head(int(data["seq"]), str(data["hash"]), data.get("sig"))
    except FileNotFoundError:
        return None


def append_event(directory: Path, kind: str, subject: str = "", key: bytes | None = None, **details: Detail) -> AuditRecord:
    """Chain and write one record of ``kind`` done by this account to ``subject``."""
    directory.mkdir(mode=0o700, exist_ok=True)
    path = directory / AUDIT_FILE
    head_path = directory / (AUDIT_FILE + ".head")
    event = AuditEvent(kind, operator(), subject, details)
    fd = os.open(directory / (AUDIT_FILE + ".lock"), os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        record = chain(_head(head_path), event, key)
        line = json.dumps(record.to_json(), sort_keys=True, separators=(",", ":")) + "\n"
        out = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o600)
        try:
            os.write(out, line.encode())
            os.fsync(out)
        finally:
            os.close(out)
        head = head_of(record, key)
        atomic_write(head_path, json.dumps({"seq": head.seq, "hash": head.hash, "sig": head.sig}).encode())
    finally:
        os.close(fd)
    return record
