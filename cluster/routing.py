"""The routing table: which ready instances serve each model.

The scheduler writes it (atomically: a new file, then ``os.replace``), and the
gate reads it.  A reader never sees a half-written table; a garbled table is
an error, never an empty one, so the gate keeps the last good copy.  Writers
(the Slurm passes and a local-process scheduler may share one table) merge
their models in under a lock (:func:`update_table`).

:class:`Router` is the gate's view: static backends from the configuration
plus the table, reloaded when it changes, and least-outstanding-requests
selection among the ready instances of a model, counted over every gate
process on the host (:mod:`.inflight`).  A request for a scheduled
model with no ready instance is held (:meth:`Router.wait_acquire`): a bounded
number per model, for a bounded time, while the scheduler starts one.  The
router also counts what it serves and holds, per model and per instance, for
the scheduler's load measurement (:class:`~cluster.scheduler.load.LoadMeter`).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from policy.errors import InternalError, NoBackend

from .config import ClusterConfig, Service
from .inflight import SharedInFlight
from .scheduler.load import LoadMeter
from .scheduler.paths import load_dir
from .scheduler.plan import effective_limits
from .tls import valid_pin

__all__ = ["Instance", "TableError", "read_table", "write_table", "update_table", "Router"]

TABLE_VERSION: Final = 1

# How often the gate looks at the table's mtime: often enough that a new
# instance is used within a second, rarely enough to cost nothing per request.
RELOAD_INTERVAL: Final = 0.5

# A table larger than this is not one our scheduler wrote.
MAX_TABLE_BYTES: Final = 4 * 1024 * 1024

# How often a held request looks for a ready instance (seconds).
HOLD_POLL: Final = 0.25

# An instance that refused a connection is skipped for this long (seconds),
# unless the table is rewritten first: it has most likely just ended, and the
# next scheduler pass takes it out of the table.
QUARANTINE: Final = 5.0


class TableError(InternalError, ValueError):
    """The routing table file exists but is not a valid table."""


@dataclass(frozen=True, slots=True)
class Instance:
    """One ready server of a model.  The token is the backend's bearer token; the pin,
    the SHA-256 of its TLS certificate (None: plain HTTP, see :mod:`cluster.tls`)."""

    id: str
    host: str
    port: int
    token: str | None = field(default=None, repr=False)
    pin: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "host": self.host, "port": self.port, "token": self.token, "pin": self.pin}

    @classmethod
    def from_json(cls, item: Any) -> Instance:
        # "pin" may be missing: a table written before TLS (plain HTTP)
        if not isinstance(item, dict) or not _REQUIRED <= set(item) <= _REQUIRED | {"pin"}:
            raise TableError("instance entry")
        ident, host, port, token, pin = item["id"], item["host"], item["port"], item["token"], item.get("pin")
        if not (isinstance(ident, str) and isinstance(host, str) and host and isinstance(port, int)):
            raise TableError("instance fields")
        if not 0 < port < 65536 or not (token is None or isinstance(token, str)):
            raise TableError("instance fields")
        if pin is not None and not valid_pin(pin):
            raise TableError("instance pin")
        return cls(ident, host, port, token, pin)


_REQUIRED: Final = frozenset({"id", "host", "port", "token"})


def write_table(path: Path, models: Mapping[str, Iterable[Instance]], mode: int = 0o600) -> None:
    """Replace the table at ``path`` atomically; readable by its owner only, or also by
    its group with ``mode`` 0o640 (two accounts: the gate reads what the scheduler writes)."""
    document = {
        "version": TABLE_VERSION,
        "models": {name: [i.to_json() for i in instances] for name, instances in sorted(models.items())},
    }
    data = json.dumps(document, separators=(",", ":"), sort_keys=True).encode()
    fd, temp = tempfile.mkstemp(prefix=".routing-", dir=path.parent)  # mode 0600
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def _table_lock(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the file releases the lock


def update_table(path: Path, models: Mapping[str, Iterable[Instance]], known: set[str], lock: Path, mode: int = 0o600) -> bool:
    """Set the entries of ``models``, drop models not in ``known``, keep the others.

    Several writers may share a table (each owns its models); the merge runs
    under ``lock``.  The file is rewritten only when something changed, so
    the gates' change check (mtime) stays quiet.  Returns whether it was.
    """
    wanted = {name: tuple(instances) for name, instances in models.items()}
    with _table_lock(lock):
        try:
            current = read_table(path)
        except TableError:
            current = {}  # replaced by a good one now
        merged = {name: items for name, items in current.items() if name in known and name not in wanted}
        merged.update(wanted)
        if merged == current and path.exists():
            return False
        write_table(path, merged, mode)
        return True


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

    def __init__(self, config: ClusterConfig, clock: Any = time.monotonic, shared: bool = True) -> None:
        self._path = config.gate.routing_table
        self._clock = clock
        self._static: dict[str, tuple[Instance, ...]] = {}
        for backend in config.static:
            instance = Instance(f"static:{backend.model}", backend.host, backend.port, backend.token, backend.pin)
            self._static[backend.model] = (instance,)
        self.routes = config.model_routes()
        self._services: dict[str, Service] = {s.model: s for s in config.services}
        self._table: dict[str, tuple[Instance, ...]] = {}
        self._stamp: tuple[int, int] | None = None
        self._checked = float("-inf")
        self._outstanding: dict[str, int] = {}
        self._model_of: dict[str, str] = {}
        self._held: dict[str, int] = {}
        self._quarantined: dict[str, float] = {}
        self._meter: LoadMeter | None = None
        # Counts of every gate process on this host, so that they balance together.
        # (Scheduled models only: a static backend is one instance, with nothing to choose.)
        self._shared: SharedInFlight | None = None
        if shared and self._services:
            self._shared = SharedInFlight(config.gate.state)
        if self._services:
            self._meter = LoadMeter(load_dir(config), shared=config.split_accounts)
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
        self._quarantined.clear()

    def _maybe_reload(self) -> None:
        if self._clock() - self._checked >= RELOAD_INTERVAL:
            self.reload()

    def instances(self, model: str) -> tuple[Instance, ...]:
        self._maybe_reload()
        return self._static.get(model) or self._table.get(model, ())

    def ready(self) -> dict[str, bool]:
        """Every configured model, and whether an instance of it is ready."""
        return {model: bool(self.instances(model)) for model in sorted(self.routes)}

    def try_acquire(self, model: str) -> Instance | None:
        """The ready instance of ``model`` with the fewest requests in flight, or None."""
        candidates = self.instances(model)
        if self._quarantined and candidates:
            now = self._clock()
            candidates = tuple(i for i in candidates if self._quarantined.get(i.id, 0.0) <= now)
        if not candidates:
            return None
        outstanding = self._outstanding
        if self._shared is not None and self.scheduled(model):
            chosen = self._shared.acquire([i.id for i in candidates], outstanding)
            best = next(i for i in candidates if i.id == chosen)
        else:
            best = min(candidates, key=lambda i: outstanding.get(i.id, 0))
        outstanding[best.id] = outstanding.get(best.id, 0) + 1
        if self._meter is not None and model in self._services:
            self._model_of[best.id] = model
            self._meter.change(model, in_flight=1, instance=best.id)
        return best

    def acquire(self, model: str) -> Instance:
        """The ready instance of ``model`` with the fewest requests in flight."""
        instance = self.try_acquire(model)
        if instance is None:
            raise NoBackend()
        return instance

    def scheduled(self, model: str) -> bool:
        """Whether the scheduler runs ``model`` (its instances come and go)."""
        return model in self._services and model not in self._static

    def can_hold(self, model: str) -> bool:
        """Whether a request for ``model`` may wait for an instance to start."""
        service = self._services.get(model)
        if service is None or service.hold_queue == 0 or service.hold_timeout <= 0:
            return False
        return effective_limits(service, time.time()).max_instances > 0

    async def wait_acquire(self, model: str) -> Instance:
        """Hold until an instance of ``model`` is ready; :class:`NoBackend` past the bounds.

        At most ``hold_queue`` requests per model wait at once, each at most
        ``hold_timeout`` seconds; a model that may not run now (its schedule
        allows no instance) is refused at once.
        """
        instance = self.try_acquire(model)
        if instance is not None:
            return instance
        service = self._services.get(model)
        if service is None or not self.can_hold(model) or self._held.get(model, 0) >= service.hold_queue:
            raise NoBackend()
        self._held[model] = self._held.get(model, 0) + 1
        if self._meter is not None:
            self._meter.change(model, held=1)
        try:
            deadline = self._clock() + service.hold_timeout
            while True:
                left = deadline - self._clock()
                if left <= 0:
                    raise NoBackend()
                await asyncio.sleep(min(HOLD_POLL, left))
                self.reload()
                instance = self.try_acquire(model)
                if instance is not None:
                    return instance
        finally:
            self._held[model] -= 1
            if self._meter is not None:
                self._meter.change(model, held=-1)

    def held(self, model: str) -> int:
        return self._held.get(model, 0)

    def quarantine(self, instance: Instance) -> None:
        """Skip ``instance`` for a few seconds: it refused a connection."""
        self._quarantined[instance.id] = self._clock() + QUARANTINE

    def release(self, instance: Instance) -> None:
        if self._shared is not None and not instance.id.startswith("static:"):
            self._shared.release(instance.id)
        left = self._outstanding.get(instance.id, 0) - 1
        if left > 0:
            self._outstanding[instance.id] = left
        else:
            self._outstanding.pop(instance.id, None)
        model = self._model_of.get(instance.id)
        if model is not None and self._meter is not None:
            self._meter.change(model, in_flight=-1, instance=instance.id)
            if left <= 0:
                self._model_of.pop(instance.id, None)

    def in_flight(self) -> int:
        return sum(self._outstanding.values())
