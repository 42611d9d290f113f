"""The audit trail's record format and hash chain, shared by the appliance and the cluster side.

An audit record says that a security or administrative event happened: who
(``actor``), to what (``subject``), which ``kind`` of event, when, and a few
short details (key ids, group names, setting names).  Never content, never a
secret: the appliance and the cluster side build records only from ids and
names they already log.

Each record is chained to the one before it::

    hash = SHA-256( canonical(seq, time, kind, actor, subject, details, prev) )

where ``canonical`` is JSON with sorted keys, no spaces and ASCII escapes
(one byte string per record, whatever wrote it), ``prev`` is the previous
record's hash (64 zeros before the first), and ``seq`` counts from 1 without
gaps.  With a key configured, each record also carries
``sig = HMAC-SHA256(key, hash)``.

The *head* (the last record's seq and hash, signed the same way) is stored
beside the records.  :func:`verify` then finds:

- an edited record (its hash no longer matches; or, re-hashed, the next
  record's ``prev`` no longer does),
- a deleted record (a gap in ``seq`` and a broken link),
- reordered records (``seq`` and the links are part of what is hashed),
- a truncated tail (fewer records than the head says).

What it cannot find without a key: someone with write access who rewrites
every record from the edit on *and* the head consistently.  The HMAC key
(kept outside the store) closes that; so does comparing the head with a copy
kept elsewhere (every appended record's seq and hash also go to the
security log, and ``sluice audit verify --expect-head SEQ:HASH`` checks the
head against such a copy).  Deleting the whole trail including the head is
visible only against such a copy.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

__all__ = [
    "GENESIS",
    "KINDS",
    "MAX_FIELD",
    "AuditEvent",
    "AuditRecord",
    "Detail",
    "Head",
    "Problem",
    "canonical",
    "chain",
    "head_of",
    "verify",
]

# The ``prev`` of the first record.
GENESIS: Final = "0" * 64

# The events the trail records: a closed set, so that a typo is an error, not a new kind.
KINDS: Final = frozenset(
    {
        "sign_in",
        "sign_out",
        "groups_changed",
        "key_created",
        "key_scoped",
        "key_revoked",
        "key_expired",
        "config_loaded",
        "unsafe_mode",
        "sealed_keys_created",
        "sealed_keys_rotated",
        "sealed_keys_retired",
    }
)

# Bounds on what a record carries: ids and names, never text of any length.
MAX_FIELD: Final = 256
MAX_DETAILS: Final = 16

Detail = str | int | bool | None


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """What happened, before it is numbered and chained."""

    kind: str
    actor: str
    subject: str = ""
    details: Mapping[str, Detail] = field(default_factory=dict)
    time: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown audit event kind {self.kind!r}")
        if len(self.actor) > MAX_FIELD or len(self.subject) > MAX_FIELD or len(self.details) > MAX_DETAILS:
            raise ValueError("audit event fields too long")
        for name, value in self.details.items():
            if not isinstance(value, (str, int, bool, type(None))) or (isinstance(value, str) and len(value) > MAX_FIELD):
                raise ValueError(f"audit detail {name!r} is not a short scalar")


@dataclass(frozen=True, slots=True)
class AuditRecord:
    seq: int
    time: float
    kind: str
    actor: str
    subject: str
    details: Mapping[str, Detail]
    prev: str
    hash: str
    sig: str | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "seq": self.seq,
            "time": self.time,
            "kind": self.kind,
            "actor": self.actor,
            "subject": self.subject,
            "details": dict(self.details),
            "prev": self.prev,
            "hash": self.hash,
            "sig": self.sig,
        }

    @classmethod
    def from_json(cls, item: Mapping[str, object]) -> AuditRecord:
        details = item["details"]
        if not isinstance(details, Mapping):
            raise ValueError("details")
        sig = item.get("sig")
        # int() and float() of whatever the JSON holds: a wrong type raises, which is the check.
        return cls(
            int(item["seq"]),  # type: ignore[call-overload]  # a wrong type raises: the check
            float(item["time"]),  # type: ignore[arg-type]  # likewise
            str(item["kind"]),
            str(item["actor"]),
            str(item["subject"]),
            dict(details),
            str(item["prev"]),
            str(item["hash"]),
            None if sig is None else str(sig),
        )


@dataclass(frozen=True, slots=True)
class Head:
    """The last record's number and hash, stored apart from the records: the anchor against truncation."""

    seq: int
    hash: str
    sig: str | None = None


@dataclass(frozen=True, slots=True)
class Problem:
    seq: int  # the record where it shows (0: the trail as a whole)
    what: str  # a short code: altered, broken_link, missing, out_of_order, bad_signature, truncated, ...

    def __str__(self) -> str:
        return f"record {self.seq}: {self.what}" if self.seq else self.what


def canonical(seq: int, when: float, kind: str, actor: str, subject: str, details: Mapping[str, Detail], prev: str) -> bytes:
    """The bytes a record's hash covers (the same whoever writes them)."""
    document = {
        "seq": seq,
        "time": repr(float(when)),
        "kind": kind,
        "actor": actor,
        "subject": subject,
        "details": dict(details),
        "prev": prev,
    }
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _sign(key: bytes | None, message: str) -> str | None:
    return None if key is None else hmac.new(key, message.encode(), hashlib.sha256).hexdigest()


def _record_hash(seq: int, when: float, kind: str, actor: str, subject: str, details: Mapping[str, Detail], prev: str) -> str:
    return hashlib.sha256(canonical(seq, when, kind, actor, subject, details, prev)).hexdigest()


def chain(previous: Head | None, event: AuditEvent, key: bytes | None = None) -> AuditRecord:
    """``event`` as the record after ``previous`` (None: the first record)."""
    seq = 1 if previous is None else previous.seq + 1
    prev = GENESIS if previous is None else previous.hash
    digest = _record_hash(seq, event.time, event.kind, event.actor, event.subject, event.details, prev)
    return AuditRecord(
        seq, event.time, event.kind, event.actor, event.subject, dict(event.details), prev, digest, _sign(key, digest)
    )


def head_of(record: AuditRecord, key: bytes | None = None) -> Head:
    """The head after ``record``, signed over ``seq:hash`` when there is a key."""
    return Head(record.seq, record.hash, _sign(key, f"{record.seq}:{record.hash}"))


def _same(expected: str | None, found: str | None) -> bool:
    return expected is not None and found is not None and hmac.compare_digest(expected, found)


def verify(records: Iterable[AuditRecord], head: Head | None, key: bytes | None = None) -> list[Problem]:
    """Every problem found in ``records`` (in stored order) against ``head``; empty when intact."""
    problems: list[Problem] = []
    expected_seq, prev = 1, GENESIS
    last: AuditRecord | None = None
    for record in records:
        if record.seq != expected_seq:
            problems.append(Problem(record.seq, "missing_before" if record.seq > expected_seq else "out_of_order"))
        digest = _record_hash(record.seq, record.time, record.kind, record.actor, record.subject, record.details, record.prev)
        if not hmac.compare_digest(digest, record.hash):
            problems.append(Problem(record.seq, "altered"))
        if not hmac.compare_digest(record.prev, prev):
            problems.append(Problem(record.seq, "broken_link"))
        if key is not None and not _same(_sign(key, record.hash), record.sig):
            problems.append(Problem(record.seq, "bad_signature"))
        expected_seq, prev, last = record.seq + 1, record.hash, record
    if head is None or (head.seq == 0 and last is None):
        if last is not None:
            problems.append(Problem(0, "no_head"))
        return problems
    if key is not None and not _same(_sign(key, f"{head.seq}:{head.hash}"), head.sig):
        problems.append(Problem(0, "bad_head_signature"))
    if last is None or last.seq < head.seq:
        problems.append(Problem(0, f"truncated: the head says {head.seq} records, {0 if last is None else last.seq} remain"))
    elif last.seq > head.seq or not hmac.compare_digest(last.hash, head.hash):
        problems.append(Problem(0, "head_mismatch"))
    return problems
