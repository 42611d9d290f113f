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
max_connections = 1024       # open client connections at once, per worker; more get 503
workers = 1                  # appliance processes sharing the port (more than 1 needs quotas in Redis)
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

Quotas (``[quotas]``) are described in :mod:`appliance.quotas.config`,
``[accounting]`` in :mod:`appliance.accounting.config`, ``[metrics]`` in
:mod:`appliance.metrics_config` and ``[logging]`` in :mod:`appliance.logs_config`.
Every table is read with :mod:`policy.config`: a mistake raises its one
``ConfigError``, naming the file, the key and the fix.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from policy.config import ConfigError, Table, build, config_keys, setting

from .auth.config import IdentitySettings, parse_identity
from .quotas.config import SECTIONS as _METERING_SECTIONS
from .quotas.config import MeteringSettings, parse_metering
from .quotas.reservation import DEFAULT_MAX_OUTPUT_TOKENS, OutputCeilings

if TYPE_CHECKING:
    from .external import ExternalUpstream

__all__ = ["ConfigError", "ServerSettings", "LocalCluster", "SshCluster", "ApiKeyEntry", "Settings", "load_settings"]

# SSH connections, or local gate processes (mux sessions), per cluster.  One mux session carries
# up to transport.spread.MAX_SESSION_STREAMS (192) streams: 64 of them hold 12,288 at once.
MAX_CONNECTIONS: Final = 64

# Appliance worker processes at most: one per core is the point; past a few dozen, each worker's own
# SSH connections and gate sessions cost the cluster more than another core gains.
MAX_WORKERS: Final = 64

# The largest output ceiling a setting may name: policy/routes.toml's bound on max_tokens.
MAX_OUTPUT_CEILING: Final = 2**20


@dataclass(frozen=True, slots=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = setting(8080, low=1, high=65535)
    request_timeout: float = setting(300.0, low=1, high=3600)
    keepalive_interval: float = setting(5.0, low=1, high=60)
    # Seconds a connection may take to send a whole request head, and may stay idle between requests.
    header_timeout: float = setting(10.0, low=1, high=300)
    # Seconds a request may take to send its whole body (a 4 MiB body at 70 KiB/s).
    body_timeout: float = setting(60.0, low=1, high=3600)
    # Client connections open at once; each costs buffers and a task, so a flood must not grow without bound.
    max_connections: int = setting(1024, low=16, high=100_000)
    # Output tokens per choice for a request that names no limit (set on the forwarded body), and per model.
    max_output_tokens: int = setting(DEFAULT_MAX_OUTPUT_TOKENS, low=1, high=MAX_OUTPUT_CEILING)
    model_max_output_tokens: Mapping[str, int] = field(default_factory=dict)
    # Seconds GET /v1/sealed/keys answers from its cache (keep it well below the gates' key rotation overlap).
    sealed_keys_ttl: float = setting(60.0, low=0.5, high=3600)
    # Worker processes sharing the listening socket, each with its own event loop and gate connections.
    workers: int = setting(1, low=1, high=MAX_WORKERS)

    @property
    def output_ceilings(self) -> OutputCeilings:
        return OutputCeilings(self.max_output_tokens, dict(self.model_max_output_tokens))


@dataclass(frozen=True, slots=True)
class LocalCluster:
    name: str
    mode: str
    gate_command: tuple[str, ...]
    sessions: int = setting(1, low=1, high=MAX_CONNECTIONS)


@dataclass(frozen=True, slots=True)
class SshCluster:
    name: str
    mode: str
    host: str
    port: int
    user: str
    client_key: Path
    known_hosts: Path
    connections: int = setting(2, low=1, high=MAX_CONNECTIONS)
    keepalive_interval: float = setting(5.0, low=1, high=60)
    connect_timeout: float = setting(10.0, low=1, high=120)
    # Seconds a session may take to answer a ping before it counts as wedged and is replaced.
    ping_timeout: float = setting(15.0, low=1, high=300)


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
    # [auth], [oidc], [access] (appliance/auth/config.py), [[external]] (appliance/external.py)
    identity: IdentitySettings = IdentitySettings()
    external: tuple[ExternalUpstream, ...] = ()
    # [quotas], [accounting], [metrics], [logging] (appliance/quotas/config.py and the modules it names)
    metering: MeteringSettings = MeteringSettings()


def _server(data: Any) -> ServerSettings:
    table = Table(data, "server", config_keys(ServerSettings))
    models = table.get("model_max_output_tokens", dict, {})
    for model, ceiling in models.items():
        if type(ceiling) is not int or not 1 <= ceiling <= MAX_OUTPUT_CEILING:
            raise table.error(f"model_max_output_tokens.{model}", f"must be a whole number from 1 to {MAX_OUTPUT_CEILING}")
    settings: ServerSettings = build(ServerSettings, table, model_max_output_tokens=models)
    return settings


def _cluster(data: Any, where: str, base: Path) -> LocalCluster | SshCluster:
    kind = data.get("transport") if isinstance(data, dict) else None
    if kind == "local":
        table = Table(data, where, config_keys(LocalCluster, "transport"))
        command = table.get("gate_command", list)
        if not command or not all(isinstance(a, str) for a in command) or "--local-pipe" not in command:
            raise table.error("gate_command", "must be a list of strings that includes --local-pipe")
        local: LocalCluster = build(LocalCluster, table, name=_name(table), mode=_mode(table), gate_command=tuple(command))
        return local
    if kind == "ssh":
        table = Table(data, where, config_keys(SshCluster, "transport"))
        ssh: SshCluster = build(
            SshCluster, table, base, name=_name(table), mode=_mode(table),
            port=table.number("port", int, 1, 65535, 22),
            known_hosts=table.path("known_hosts", base, must_exist=True),
            client_key=table.path("client_key", base, must_exist=True),
        )  # fmt: skip
        return ssh
    raise ConfigError(f"{where}.transport must be 'ssh' or 'local'", key=f"{where}.transport")


def _name(table: Table) -> str:
    name: str = table.get("name", str)
    if not name.replace("-", "").replace("_", "").isalnum():
        raise table.error("name", "must be letters, digits, '-' and '_'")
    return name


def _mode(table: Table) -> str:
    mode: str = table.choice("mode", ("mux", "exec"), "mux")
    return mode


def _api_key(data: Any, where: str) -> ApiKeyEntry:
    table = Table(data, where, {"user", "key_id", "sha256", "groups"})
    groups = table.get("groups", list, [])
    if not all(isinstance(g, str) and g and g.isprintable() for g in groups):
        raise table.error("groups", "must be a list of group names")
    digest = table.get("sha256", str)
    try:
        raw = bytes.fromhex(digest)
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise table.error("sha256", "must be 64 hex digits (sha256 of the key)")
    return ApiKeyEntry(table.get("user", str), table.get("key_id", str), raw, frozenset(groups))


def parse_settings(data: dict[str, Any], base: Path) -> Settings:
    """The settings in the parsed TOML ``data``; paths are relative to ``base``.  Raises ConfigError."""
    top = Table(data, "", {"server", "clusters", "api_keys", "auth", "oidc", "access", "external", *_METERING_SECTIONS})
    clusters_data = top.get("clusters", list, [])
    if not clusters_data:
        raise top.error("clusters", "needs at least one [[clusters]] entry")
    clusters = tuple(_cluster(c, f"clusters[{i}]", base) for i, c in enumerate(clusters_data))
    names = [c.name for c in clusters]
    if len(set(names)) != len(names):
        raise ConfigError("clusters: names must be distinct", key="clusters")
    keys = tuple(_api_key(k, f"api_keys[{i}]") for i, k in enumerate(top.get("api_keys", list, [])))
    from .external import parse_external

    identity = parse_identity(data, base)
    external = parse_external(data.get("external", []), base)
    metering = parse_metering(data, base)
    server = _server(data.get("server", {}))
    _check_workers(server, metering)
    return Settings(server, clusters, keys, identity, external, metering)


def _check_workers(server: ServerSettings, metering: MeteringSettings) -> None:
    """Several workers share only what lives outside them: refuse state that one process keeps alone."""
    quotas = metering.quotas
    if server.workers > 1 and quotas.enabled and quotas.storage.startswith("memory://"):
        raise ConfigError(
            f"server.workers = {server.workers} with quotas in memory would give each user {server.workers} times "
            'every limit (each worker counts alone): set quotas.storage to Redis ("async+redis://host:6379/0"), '
            "shared by the workers, or keep server.workers = 1",
            key="server.workers",
        )


def load_settings(path: str | Path) -> Settings:
    """Read and validate the appliance configuration at ``path``; a mistake raises ConfigError naming it."""
    path = Path(path)
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read it: {exc}; give a readable TOML file", file=path) from None
    try:
        return parse_settings(data, path.parent)
    except ConfigError as exc:
        raise exc.in_file(path) from None
