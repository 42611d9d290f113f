"""The cluster configuration: one TOML file owned by the operator.

It names the routing table the scheduler keeps, the static backends (model
servers the operator runs by other means), and the services the scheduler
keeps running.  It is read once at start and validated there; every error
names the key and the fix.  Request data never reaches this module.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from policy.grammar import ROUTE_IDS, Call

__all__ = ["ConfigError", "StaticBackend", "Service", "GateSettings", "ClusterConfig", "load_config"]

# Generous upper bound on one request's backend time: a long generation on a
# large model can take minutes; anything beyond this is a stuck backend.
MAX_REQUEST_TIMEOUT: Final = 3600.0


class ConfigError(ValueError):
    """The configuration file is wrong; the message names the key."""


@dataclass(frozen=True, slots=True)
class StaticBackend:
    """A model server that the operator runs: ``model`` is served at ``host:port``."""

    model: str
    host: str
    port: int
    routes: tuple[str, ...]
    token: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class Service:
    """A model the scheduler keeps running (see :mod:`cluster.scheduler`)."""

    model: str
    routes: tuple[str, ...]
    backend: str  # "local" or "slurm"
    command: tuple[str, ...]  # local: argv of the server; {port} is replaced
    min_instances: int
    max_instances: int
    warmup_timeout: float


@dataclass(frozen=True, slots=True)
class GateSettings:
    routing_table: Path
    request_timeout: float = 300.0
    connect_timeout: float = 5.0


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    gate: GateSettings
    static: tuple[StaticBackend, ...]
    services: tuple[Service, ...]

    def model_routes(self) -> dict[str, tuple[str, ...]]:
        """Every configured model and the route ids it serves."""
        routes: dict[str, tuple[str, ...]] = {}
        for backend in self.static:
            routes[backend.model] = backend.routes
        for service in self.services:
            routes[service.model] = service.routes
        return routes


def _get(table: dict[str, Any], key: str, kind: type, where: str, default: Any = ...) -> Any:
    if key not in table:
        if default is ...:
            raise ConfigError(f"{where}.{key} is required")
        return default
    value = table[key]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"{where}.{key} must be a {kind.__name__}")
    return value


def _check_keys(table: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r} (allowed: {', '.join(sorted(allowed))})")


def _model(name: Any, where: str) -> str:
    if not isinstance(name, str):
        raise ConfigError(f"{where}.model must be a string")
    try:
        Call("chat", name, 0)  # the grammar's model-name rule, applied once at start
    except Exception:
        raise ConfigError(f"{where}.model {name!r} is not a valid model-name (see policy/request.abnf)") from None
    return name


def _routes(table: dict[str, Any], where: str) -> tuple[str, ...]:
    routes = _get(table, "routes", list, where)
    if not routes or any(r not in ROUTE_IDS for r in routes):
        raise ConfigError(f"{where}.routes must be a non-empty list of {', '.join(ROUTE_IDS)}")
    return tuple(routes)


def _static(table: dict[str, Any], where: str, base: Path) -> StaticBackend:
    _check_keys(table, {"model", "url", "routes", "token_file"}, where)
    url = urlsplit(_get(table, "url", str, where))
    if url.scheme != "http" or not url.hostname or url.path not in ("", "/") or url.query or url.username:
        raise ConfigError(f"{where}.url must be http://HOST:PORT (no path, query or credentials)")
    token = None
    token_file = _get(table, "token_file", str, where, None)
    if token_file is not None:
        token = (base / token_file).read_text(encoding="ascii").strip()
        if not token or not token.isprintable() or " " in token:
            raise ConfigError(f"{where}.token_file must hold one printable token")
    return StaticBackend(_model(table.get("model"), where), url.hostname, url.port or 80, _routes(table, where), token)


def _service(name: str, table: dict[str, Any], where: str) -> Service:
    _check_keys(table, {"routes", "backend", "command", "min_instances", "max_instances", "warmup_timeout"}, where)
    backend = _get(table, "backend", str, where)
    if backend not in ("local", "slurm"):
        raise ConfigError(f"{where}.backend must be 'local' or 'slurm'")
    command = _get(table, "command", list, where)
    if not command or not all(isinstance(a, str) for a in command):
        raise ConfigError(f"{where}.command must be a non-empty list of strings")
    low = _get(table, "min_instances", int, where, 1)
    high = _get(table, "max_instances", int, where, max(low, 1))
    if not 0 <= low <= high <= 64:
        raise ConfigError(f"{where}: need 0 <= min_instances <= max_instances <= 64")
    warmup = _get(table, "warmup_timeout", float, where, 600.0)
    return Service(_model(name, where), _routes(table, where), backend, tuple(command), low, high, warmup)


def load_config(path: str | Path) -> ClusterConfig:
    """Read and validate the cluster configuration at ``path``."""
    path = Path(path)
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read cluster config {path}: {exc}") from None
    _check_keys(data, {"gate", "backends", "services"}, "config")
    gate_table = _get(data, "gate", dict, "config")
    _check_keys(gate_table, {"routing_table", "request_timeout", "connect_timeout"}, "gate")
    timeout = _get(gate_table, "request_timeout", float, "gate", 300.0)
    connect = _get(gate_table, "connect_timeout", float, "gate", 5.0)
    if not 0 < timeout <= MAX_REQUEST_TIMEOUT or not 0 < connect <= 60:
        raise ConfigError("gate.request_timeout must be in (0, 3600] and gate.connect_timeout in (0, 60]")
    gate = GateSettings(path.parent / _get(gate_table, "routing_table", str, "gate"), timeout, connect)
    static = tuple(
        _static(entry, f"backends[{i}]", path.parent) for i, entry in enumerate(_get(data, "backends", list, "config", []))
    )
    services = tuple(
        _service(name, table, f"services.{name}") for name, table in _get(data, "services", dict, "config", {}).items()
    )
    models = [b.model for b in static] + [s.model for s in services]
    if len(models) != len(set(models)):
        raise ConfigError("a model is configured twice (backends and services must name distinct models)")
    return ClusterConfig(gate, static, services)
