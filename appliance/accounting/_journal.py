"""A replica's own journal of usage rows that PostgreSQL could not take yet.

When an INSERT fails (the database is restarting, the network is down), the
row is appended to a local file and fsync'd before the request's answer
finishes, so it survives a crash of the replica; a background task writes
the journal into PostgreSQL once the database is back, and only then deletes
it.  Rows carry their request id and PostgreSQL keeps one row per id
(``INSERT ... ON CONFLICT (request_id) DO NOTHING``), so a journal replayed
twice (a crash between the INSERT and the delete) still adds each row once.

The file holds exactly what a usage row holds: user and key ids, model,
route, status, token counts and timings, never content; it is created
readable by its owner only.  One JSON array per line; a torn last line (the
replica died inside ``write``, so that request was never answered) is
skipped.

To replay without losing rows that arrive meanwhile, the journal is first
renamed to ``<name>.replaying``; new rows go to a fresh journal.  A lock
orders appends and renames within the process.  Each replica needs a journal
path of its own.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from pathlib import Path
from typing import Final

from ._rows import COLUMNS

__all__ = ["Journal"]

# A journal line longer than this is not one we wrote (a row is ~200 bytes).
MAX_LINE: Final = 64 * 1024

# The values of the columns added after the first release (audio_ms, model_revision,
# backend_version: accounting step 3), for a row that a journal of an older release holds.
_ADDED_DEFAULTS: Final = (0, None, None)


class Journal:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.replaying = path.with_name(path.name + ".replaying")
        self._lock = threading.Lock()

    def append(self, rows: list[tuple[object, ...]]) -> None:
        """Append ``rows`` and fsync; returns once they are on disk."""
        data = "".join(json.dumps(list(values), separators=(",", ":")) + "\n" for values in rows).encode()
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)

    def pending(self) -> bool:
        return self.replaying.exists() or (self.path.exists() and self.path.stat().st_size > 0)

    def take(self) -> Path | None:
        """The file to replay now (an unfinished earlier replay first), or None."""
        with self._lock:
            if self.replaying.exists():
                return self.replaying
            if not self.path.exists() or self.path.stat().st_size == 0:
                return None
            os.replace(self.path, self.replaying)
            _sync_directory(self.path.parent)
            return self.replaying

    @staticmethod
    def read(path: Path) -> list[tuple[object, ...]]:
        rows = []
        with path.open("rb") as handle:
            for line in handle:
                if not line.endswith(b"\n") or len(line) > MAX_LINE:
                    continue  # torn by a crash mid-write: that request was never answered
                with contextlib.suppress(ValueError):
                    values = json.loads(line)
                    missing = len(COLUMNS) - len(values) if isinstance(values, list) else -1
                    if 0 <= missing <= len(_ADDED_DEFAULTS):
                        rows.append(tuple(values) + _ADDED_DEFAULTS[len(_ADDED_DEFAULTS) - missing :])
        return rows

    def done(self, path: Path) -> None:
        with self._lock:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            _sync_directory(self.path.parent)


def _sync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
