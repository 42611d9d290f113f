"""The routing table: which ready instances serve each model.

The scheduler writes it (atomically: a new file, then ``os.replace``), and the
gate reads it.  A reader never sees a half-written table; a garbled table is
an error, never an empty one, so the gate keeps the last good copy.

:class:`Router` is the gate's view: static backends from the configuration
plus the table, reloaded when it changes, and least-outstanding-requests
selection among the ready instances of a model.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from policy.errors import NoBackend

from .config import ClusterConfig

__all__ = ["Instance", "TableError", "read_table", "write_table", "Router"]

TABLE_VERSION: Final = 1

# How often the gate looks at the table's mtime: often enough that a new
# instance is used within a second, rarely enough to cost nothing per request.
RELOAD_INTERVAL: Final = 0.5

# A table larger than this is not one our scheduler wrote.
MAX_TABLE_BYTES: Final = 4 * 1024 * 1024


class TableError(ValueError):
    """The routing table file exists but is not a valid table."""


@dataclass(frozen=True, slots=True)
class Instance:
    """One ready server of a model.  The token is the backend's bearer token."""

    id: str
    host: str
    port: int
    token: str | None = field(default=None, repr=False)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "host": self.host, "port": self.port, "token": self.token}

    @classmethod
    def from_json(cls, item: Any) -> Instance:
        if not isinstance(item, dict) or set(item) != {"id", "host", "port", "token"}:
            raise TableError("instance entry")
        ident, host, port, token = item["id"], item["host"], item["port"], item["token"]
        if not (isinstance(ident, str) and isinstance(host, str) and host and isinstance(port, int)):
            raise TableError("instance fields")
        if not 0 < port < 65536 or not (token is None or isinstance(token, str)):
            raise TableError("instance fields")
        return cls(ident, host, port, token)


def write_table(path: Path, models: Mapping[str, Iterable[Instance]]) -> None:
    """Replace the table at ``path`` atomically; readable by its owner only."""
    document = {
        "version": TABLE_VERSION,
        "models": {name: [i.to_json() for i in instances] for name, instances in sorted(models.items())},
    }
    data = json.dumps(document, separators=(",", ":"), sort_keys=True).encode()
    fd, temp = tempfile.mkstemp(prefix=".routing-", dir=path.parent)  # mode 0600
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def read_table(path: Path) -> dict[str, tuple[Instance, ...]]:
    """The table at ``path``; empty if there is none yet, :class:`TableError` if garbled."""
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_TABLE_BYTES + 1)
    except FileNotFoundError:
        return {}
    if len(data) > MAX_TABLE_BYTES:
        raise TableError("too large")
    try:
        document = json.loads(data)
    except ValueError:
        raise TableError("not JSON") from None
    if not isinstance(document, dict) or document.get("version") != TABLE_VERSION:
        raise TableError("version")
    models = document.get("models")
    if not isinstance(models, dict):
        raise TableError("models")
    table: dict[str, tuple[Instance, ...]] = {}
    for name, items in models.items():
        if not isinstance(items, list):
            raise TableError("instances")
        table[name] = tuple(Instance.from_json(item) for item in items)
    return table


class Router:
    """Picks an instance for a model: least outstanding requests first."""

    def __init__(self, config: ClusterConfig, clock: Any = time.monotonic) -> None:
        self._path = config.gate.routing_table
        self._clock = clock
        self._static: dict[str, tuple[Instance, ...]] = {}
        for backend in config.static:
            instance = Instance(f"static:{backend.model}", backend.host, backend.port, backend.token)
            self._static[backend.model] = (instance,)
        self.routes = config.model_routes()
        self._table: dict[str, tuple[Instance, ...]] = {}
        self._stamp: tuple[int, int] | None = None
        self._checked = float("-inf")
        self._outstanding: dict[str, int] = {}
        self.reload()

    def reload(self) -> None:
        """Read the table if it changed since the last read; keep the old one if it is garbled."""
        self._checked = self._clock()
        try:
            stat = os.stat(self._path)
        except FileNotFoundError:
            self._table, self._stamp = {}, None
            return
        stamp = (stat.st_mtime_ns, stat.st_ino)
        if stamp == self._stamp:
            return
        try:
            table = read_table(self._path)
        except (TableError, OSError):
            return  # keep serving from the last good table
        self._table = {name: table[name] for name in table if name in self.routes}
        self._stamp = stamp

    def _maybe_reload(self) -> None:
        if self._clock() - self._checked >= RELOAD_INTERVAL:
            self.reload()

    def instances(self, model: str) -> tuple[Instance, ...]:
        self._maybe_reload()
        return self._static.get(model) or self._table.get(model, ())

    def ready(self) -> dict[str, bool]:
        """Every configured model, and whether an instance of it is ready."""
        return {model: bool(self.instances(model)) for model in sorted(self.routes)}

    def acquire(self, model: str) -> Instance:
        """The ready instance of ``model`` with the fewest requests in flight."""
        candidates = self.instances(model)
        if not candidates:
            raise NoBackend()
        outstanding = self._outstanding
        best = min(candidates, key=lambda i: outstanding.get(i.id, 0))
        outstanding[best.id] = outstanding.get(best.id, 0) + 1
        return best

    def release(self, instance: Instance) -> None:
        left = self._outstanding.get(instance.id, 0) - 1
        if left > 0:
            self._outstanding[instance.id] = left
        else:
            self._outstanding.pop(instance.id, None)

    def in_flight(self) -> int:
        return sum(self._outstanding.values())
