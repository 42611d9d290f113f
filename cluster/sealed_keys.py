"""The gate's keys for sealed requests, on disk next to the cluster configuration.

``<config dir>/sealed-keys/`` holds one private key file per key id (mode
0600, written by :func:`sluice_sdk.keys.save_private_key`) and ``ring.json``,
which says which key is current and until when each retired key is still
accepted.  Rotation makes a new key current and keeps the old one accepted
for an overlap window, so that clients holding the old configuration keep
working while they fetch the new one; after the window its file is deleted
(forward secrecy for what was sealed to it): by the next rotation, and by
every gate that loads the ring (:func:`purge_expired`; a long-lived gate
reloads the ring when a retired key's window ends).

    sluice-cluster keys create  --config cluster.toml
    sluice-cluster keys rotate  --config cluster.toml [--overlap 86400]
    sluice-cluster keys list    --config cluster.toml
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

from policy.events import event_line
from sluice_sdk.errors import KeyConfigError
from sluice_sdk.keys import GatewayKey, KeyRing, generate_key, load_private_key, save_private_key

__all__ = ["keys_dir", "create", "rotate", "load_ring", "purge_expired", "ring_stamp", "describe", "DEFAULT_OVERLAP"]

# Clients refetch the key configuration at least daily; a day of overlap lets
# every client move to a new key without a failed request.
DEFAULT_OVERLAP: Final = 24 * 3600.0

_RING: Final = "ring.json"

log = logging.getLogger("sluice.gate")


def keys_dir(config_path: Path) -> Path:
    return config_path.resolve().parent / "sealed-keys"


def _key_file(directory: Path, key_id: int) -> Path:
    return directory / f"key-{key_id:03d}.json"


def _write_ring(directory: Path, current: int, retired: dict[int, float]) -> None:
    document = {"current": current, "retired": [{"key_id": k, "accepted_until": v} for k, v in sorted(retired.items())]}
    fd, temp = tempfile.mkstemp(prefix=".ring-", dir=directory)
    with os.fdopen(fd, "w") as handle:
        json.dump(document, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temp, directory / _RING)


def _read_ring(directory: Path) -> tuple[int, dict[int, float]]:
    try:
        document = json.loads((directory / _RING).read_text())
        current = document["current"]
        retired = {int(item["key_id"]): float(item["accepted_until"]) for item in document["retired"]}
    except (OSError, ValueError, KeyError, TypeError):
        raise KeyConfigError(f"{directory / _RING} is missing or malformed: run 'sluice-cluster keys create'") from None
    if type(current) is not int:
        raise KeyConfigError(f"{directory / _RING}: current must be a key id")
    return current, retired


def create(config_path: Path) -> GatewayKey:
    """The first key (refuses to replace an existing ring: use :func:`rotate`)."""
    directory = keys_dir(config_path)
    directory.mkdir(mode=0o700, exist_ok=True)
    if (directory / _RING).exists():
        raise KeyConfigError(f"{directory} already has keys: use 'sluice-cluster keys rotate'")
    key = generate_key(0)
    save_private_key(key, _key_file(directory, key.key_id))
    _write_ring(directory, key.key_id, {})
    return key


def ring_stamp(config_path: Path) -> tuple[int, int] | None:
    """Changes whenever the ring is rewritten (create, rotate); None where there is none."""
    try:
        stat = (keys_dir(config_path) / _RING).stat()
    except FileNotFoundError:
        return None
    return (stat.st_mtime_ns, stat.st_ino)


def _delete_expired(directory: Path, retired: dict[int, float], now: float) -> float:
    """Delete the files of retired keys whose window ended; the next window's end (inf: none)."""
    for key_id, until in retired.items():
        if until <= now:
            try:
                _key_file(directory, key_id).unlink(missing_ok=True)
            except OSError as exc:
                log.error(event_line("expired_key_not_deleted", key_id=key_id, error=type(exc).__name__))
    return min((until for until in retired.values() if until > now), default=math.inf)


def purge_expired(config_path: Path, clock: Callable[[], float] = time.time) -> float:
    """Delete the private key files of retired keys past their window (the ring
    keeps naming them as expired); returns when the next retired key expires."""
    directory = keys_dir(config_path)
    if not (directory / _RING).exists():
        return math.inf
    _, retired = _read_ring(directory)
    return _delete_expired(directory, retired, clock())


def load_ring(config_path: Path, clock: Callable[[], float] = time.time) -> KeyRing | None:
    """The key ring, or None where no keys were created (sealed requests are then refused).

    Retired keys past their window are not loaded, and their files are deleted."""
    directory = keys_dir(config_path)
    if not (directory / _RING).exists():
        return None
    current, retired = _read_ring(directory)
    now = clock()
    _delete_expired(directory, retired, now)
    live = [(load_private_key(_key_file(directory, k)), until) for k, until in retired.items() if until > now]
    return KeyRing(load_private_key(_key_file(directory, current)), retired=live, clock=clock)


def rotate(config_path: Path, overlap: float = DEFAULT_OVERLAP) -> GatewayKey:
    """A new current key; the old one stays accepted for ``overlap`` seconds; expired ones are deleted."""
    directory = keys_dir(config_path)
    ring = load_ring(config_path)
    if ring is None:
        raise KeyConfigError("no keys yet: run 'sluice-cluster keys create'")
    _, retired = _read_ring(directory)
    now = time.time()
    # Before the new key is written: its id may be an expired key's (the lowest free id).
    _delete_expired(directory, retired, now)
    new = generate_key(ring.next_key_id())
    save_private_key(new, _key_file(directory, new.key_id))
    kept = {k: until for k, until in retired.items() if until > now}
    kept[ring.current.key_id] = now + overlap
    _write_ring(directory, new.key_id, kept)
    return new


def describe(config_path: Path) -> list[dict[str, object]]:
    """Each key: id, fingerprint, current or accepted until when."""
    ring = load_ring(config_path)
    if ring is None:
        return []
    _, retired = _read_ring(keys_dir(config_path))
    rows: list[dict[str, object]] = [
        {"key_id": ring.current.key_id, "fingerprint": ring.current.config.fingerprint(), "state": "current"}
    ]
    for key_id, until in sorted(retired.items()):
        state = "retired, accepted until " + time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(until))
        if until <= time.time():
            state = "expired"
        rows.append({"key_id": key_id, "state": state})
    return rows
