"""The appliance configuration: one TOML file, validated once at start.

Every error names the key and the fix.  Secrets (API key hashes, the SSH
client key) are referred to by path; the file itself holds none.

```toml
[server]
host = "0.0.0.0"
port = 8080
request_timeout = 300        # seconds, per request, to the first byte of the answer
header_timeout = 10          # seconds a connection may take to send a request head, or stay idle
body_timeout = 60            # seconds a request may take to send its whole body
max_connections = 1024       # open client connections at once; more get 503
max_output_tokens = 4096     # ceiling set as max_tokens on a request that names none (and reserved for it)
model_max_output_tokens = { "llama-3.1-70b-instruct" = 8192 }   # per model, overriding the above
sealed_keys_ttl = 60         # seconds the gates' sealed key configuration is cached (well below the rotation overlap)

[[clusters]]
name = "hpc"
transport = "ssh"            # or "local" (the gate as a child process)
mode = "mux"                 # or "exec" (one gate process per request)
host = "login.hpc.example.org"
port = 22
user = "sluice"
client_key = "/etc/sluice/id_ed25519"
known_hosts = "/etc/sluice/known_hosts"   # pinned host keys; there is no way to skip this
connections = 2
keepalive_interval = 5
ping_timeout = 15            # a session that does not answer a ping this fast is wedged: closed and replaced

[[api_keys]]                 # operator-provisioned keys, as SHA-256 hex digests
user = "alice"
key_id = "alice-laptop"
sha256 = "..."
groups = ["staff"]           # for the [access] policy (default deny: a key in no allowed group may use nothing)
```

Sign-in, groups and API keys (``[auth]``, ``[auth.trusted_header]``, ``[oidc]``,
``[access]``) are described in :mod:`appliance.auth.config`; external models
(``[[external]]``) in :mod:`appliance.external`.

Quotas, accounting, metrics and logs (``[quotas]``, ``[accounting]``,
``[metrics]``, ``[logging]``) are described in :mod:`appliance.quotas.config`.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

# --- identity and external models (appliance/auth, appliance/external.py) ---
from .auth.config import ConfigError, IdentitySettings, parse_identity

if TYPE_CHECKING:
    from .external import ExternalUpstream
# --- end identity ---
# --- quotas, accounting, metrics, logging (appliance/quotas/config.py) ---
from .quotas.config import SECTIONS as _METERING_SECTIONS
from .quotas.config import MeteringConfigError, MeteringSettings, parse_metering
from .quotas.reservation import DEFAULT_MAX_OUTPUT_TOKENS, OutputCeilings

# --- end quotas ---

__all__ = ["SettingsError", "ServerSettings", "LocalCluster", "SshCluster", "ApiKeyEntry", "Settings", "load_settings"]

MAX_CONNECTIONS: Final = 32

# The largest output ceiling a setting may name: policy/routes.toml's bound on max_tokens.
MAX_OUTPUT_CEILING: Final = 2**20


class SettingsError(ValueError):
    """The configuration is wrong; the message names the key."""


@dataclass(frozen=True, slots=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    request_timeout: float = 300.0
    keepalive_interval: float = 5.0
    # Seconds a connection may take to send a whole request head, and may stay idle between requests.
    header_timeout: float = 10.0
    # Seconds a request may take to send its whole body (a 4 MiB body at 70 KiB/s).
    body_timeout: float = 60.0
    # Client connections open at once; each costs buffers and a task, so a flood must not grow without bound.
    max_connections: int = 1024
    # Output tokens per choice for a request that names no limit (set on the forwarded body), and per model.
    max_output_tokens: int = DEFAULT_MAX_OUTPUT_TOKENS
    model_max_output_tokens: Mapping[str, int] = field(default_factory=dict)
    # Seconds GET /v1/sealed/keys answers from its cache (keep it well below the gates' key rotation overlap).
    sealed_keys_ttl: float = 60.0

    @property
    def output_ceilings(self) -> OutputCeilings:
        return OutputCeilings(self.max_output_tokens, dict(self.model_max_output_tokens))


@dataclass(frozen=True, slots=True)
class LocalCluster:
    name: str
    mode: str
    gate_command: tuple[str, ...]
    sessions: int = 1


@dataclass(frozen=True, slots=True)
class SshCluster:
    name: str
    mode: str
    host: str
    port: int
    user: str
    client_key: Path
    known_hosts: Path
    connections: int = 2
    keepalive_interval: float = 5.0
    connect_timeout: float = 10.0
    # Seconds a session may take to answer a ping before it counts as wedged and is replaced.
    ping_timeout: float = 15.0


@dataclass(frozen=True, slots=True)
class ApiKeyEntry:
    user: str
    key_id: str
    sha256: bytes
    groups: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Settings:
    server: ServerSettings
    clusters: tuple[LocalCluster | SshCluster, ...]
    api_keys: tuple[ApiKeyEntry, ...] = ()
    # --- identity and external models: [auth], [oidc], [access], [[external]] ---
    identity: IdentitySettings = IdentitySettings()
    external: tuple[ExternalUpstream, ...] = ()
    # --- quotas, accounting, metrics, logging: [quotas], [accounting], [metrics], [logging] ---
    metering: MeteringSettings = MeteringSettings()


class _Table:
    """Typed access to one TOML table, with errors that name the key."""

    def __init__(self, data: Any, where: str, allowed: set[str]) -> None:
        if not isinstance(data, dict):
            raise SettingsError(f"{where} must be a table")
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise SettingsError(f"{where}.{unknown[0]} is not a known setting (known: {', '.join(sorted(allowed))})")
        self.data, self.where = data, where

    def get(self, key: str, kind: type, default: Any = ...) -> Any:
        if key not in self.data:
            if default is ...:
                raise SettingsError(f"{self.where}.{key} is required")
            return default
        value = self.data[key]
        if kind is float and type(value) is int:
            value = float(value)
        if type(value) is not kind:
            raise SettingsError(f"{self.where}.{key} must be a {kind.__name__}")
        return value

    def number(self, key: str, kind: type, low: float, high: float, default: Any) -> Any:
        value = self.get(key, kind, default)
        if not low <= value <= high:
            raise SettingsError(f"{self.where}.{key} must be between {low} and {high}")
        return value


def _server(data: Any) -> ServerSettings:
    table = _Table(data, "server", {"host", "port", "request_timeout", "keepalive_interval", "header_timeout",
                                    "body_timeout", "max_connections", "max_output_tokens", "model_max_output_tokens",
                                    "sealed_keys_ttl"})
    models = table.get("model_max_output_tokens", dict, {})
    for model, ceiling in models.items():
        if type(ceiling) is not int or not 1 <= ceiling <= MAX_OUTPUT_CEILING:
            raise SettingsError(f"server.model_max_output_tokens.{model} must be a whole number from 1 to {MAX_OUTPUT_CEILING}")
    return ServerSettings(
        table.get("host", str, "127.0.0.1"),
        table.number("port", int, 1, 65535, 8080),
        table.number("request_timeout", float, 1, 3600, 300.0),
        table.number("keepalive_interval", float, 1, 60, 5.0),
        table.number("header_timeout", float, 1, 300, 10.0),
        table.number("body_timeout", float, 1, 3600, 60.0),
        table.number("max_connections", int, 16, 100_000, 1024),
        table.number("max_output_tokens", int, 1, MAX_OUTPUT_CEILING, DEFAULT_MAX_OUTPUT_TOKENS),
        models,
        table.number("sealed_keys_ttl", float, 0.5, 3600, 60.0),
    )


def _cluster(data: Any, where: str, base: Path) -> LocalCluster | SshCluster:
    kind = data.get("transport") if isinstance(data, dict) else None
    common = {"name", "transport", "mode"}
    if kind == "local":
        table = _Table(data, where, common | {"gate_command", "sessions"})
        command = table.get("gate_command", list)
        if not command or not all(isinstance(a, str) for a in command) or "--local-pipe" not in command:
            raise SettingsError(f"{where}.gate_command must be a list of strings that includes --local-pipe")
        return LocalCluster(_name(table), _mode(table), tuple(command), table.number("sessions", int, 1, MAX_CONNECTIONS, 1))
    if kind == "ssh":
        table = _Table(
            data, where,
            common | {"host", "port", "user", "client_key", "known_hosts", "connections", "keepalive_interval",
                      "connect_timeout", "ping_timeout"},
        )
        known_hosts = base / table.get("known_hosts", str)
        client_key = base / table.get("client_key", str)
        for key, path in (("known_hosts", known_hosts), ("client_key", client_key)):
            if not path.is_file():
                raise SettingsError(f"{where}.{key}: {path} does not exist")
        return SshCluster(
            _name(table), _mode(table), table.get("host", str), table.number("port", int, 1, 65535, 22),
            table.get("user", str), client_key, known_hosts,
            table.number("connections", int, 1, MAX_CONNECTIONS, 2),
            table.number("keepalive_interval", float, 1, 60, 5.0),
            table.number("connect_timeout", float, 1, 120, 10.0),
            table.number("ping_timeout", float, 1, 300, 15.0),
        )
    raise SettingsError(f"{where}.transport must be 'ssh' or 'local'")


def _name(table: _Table) -> str:
    name: str = table.get("name", str)
    if not name.replace("-", "").replace("_", "").isalnum():
        raise SettingsError(f"{table.where}.name must be letters, digits, '-' and '_'")
    return name


def _mode(table: _Table) -> str:
    mode: str = table.get("mode", str, "mux")
    if mode not in ("mux", "exec"):
        raise SettingsError(f"{table.where}.mode must be 'mux' or 'exec'")
    return mode


def _api_key(data: Any, where: str) -> ApiKeyEntry:
    table = _Table(data, where, {"user", "key_id", "sha256", "groups"})
    groups = table.get("groups", list, [])
    if not all(isinstance(g, str) and g and g.isprintable() for g in groups):
        raise SettingsError(f"{where}.groups must be a list of group names")
    digest = table.get("sha256", str)
    try:
        raw = bytes.fromhex(digest)
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise SettingsError(f"{where}.sha256 must be 64 hex digits (sha256 of the key)")
    return ApiKeyEntry(table.get("user", str), table.get("key_id", str), raw, frozenset(groups))


def parse_settings(data: dict[str, Any], base: Path) -> Settings:
    _Table(data, "config", {"server", "clusters", "api_keys", "auth", "oidc", "access", "external", *_METERING_SECTIONS})
    clusters_data = data.get("clusters")
    if not isinstance(clusters_data, list) or not clusters_data:
        raise SettingsError("config: at least one [[clusters]] entry is required")
    clusters = tuple(_cluster(c, f"clusters[{i}]", base) for i, c in enumerate(clusters_data))
    names = [c.name for c in clusters]
    if len(set(names)) != len(names):
        raise SettingsError("clusters: names must be distinct")
    keys = tuple(_api_key(k, f"api_keys[{i}]") for i, k in enumerate(data.get("api_keys", [])))
    # --- identity and external models ---
    from .external import parse_external

    try:
        identity = parse_identity(data, base)
        external = parse_external(data.get("external", []), base)
    except ConfigError as exc:
        raise SettingsError(str(exc)) from None
    # --- end identity ---
    # --- quotas, accounting, metrics, logging ---
    try:
        metering = parse_metering(data, base)
    except MeteringConfigError as exc:
        raise SettingsError(str(exc)) from None
    # --- end quotas ---
    return Settings(_server(data.get("server", {})), clusters, keys, identity, external, metering)


def load_settings(path: str | Path) -> Settings:
    path = Path(path)
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise SettingsError(f"cannot read {path}: {exc}") from None
    return parse_settings(data, path.parent)
