"""The configuration of quotas, accounting, metrics and logs: four tables of the appliance's TOML.

```toml
[quotas]
enabled = true                      # default true: the packaged policy/quotas.toml, in memory
policy = "quotas.toml"              # relative to this file; default: the packaged policy
storage = "memory://"               # or "async+redis://redis.internal:6379/0" for several replicas
storage_password_file = "/etc/sluice/redis.password"   # optional
on_storage_error = "deny"           # or "unsafe-allow": admit unmetered while Redis is unreachable
storage_timeout = 0.5               # seconds for the quota checks of one request
lease_ttl = 30                      # seconds a dead replica's concurrency slots stay taken

[accounting]                        # absent: no usage rows (logged at start)
backend = "sqlite"                  # or "postgresql"
path = "/var/lib/sluice/usage.db"   # sqlite
synchronous = "normal"              # sqlite: "normal" survives an appliance crash, "full" a power loss too
dsn_file = "/etc/sluice/usage.dsn"  # postgresql: a libpq DSN (with its password) in a file
journal = "/var/lib/sluice/usage.journal"  # postgresql: this replica's own file for rows written
                                    # while the database is away (replayed when it returns)
audit_key_file = "/etc/sluice/audit.key"  # optional: HMAC-SHA256 key signing the audit trail (sluice audit verify)

[metrics]                           # absent: /metrics is closed
token_file = "/etc/sluice/metrics.token"   # /metrics needs Authorization: Bearer <token>
admin_bind = "127.0.0.1:9100"              # and/or: /metrics served only on this address

[logging]
level = "info"                      # debug, info, warning, error
requests = true                     # one JSON line per HTTP request
```

Relative paths are relative to the configuration file.  Secrets (the Redis
password, the PostgreSQL DSN, the metrics token) are read from files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

__all__ = [
    "SECTIONS",
    "AccountingSettings",
    "LoggingSettings",
    "MeteringConfigError",
    "MeteringSettings",
    "MetricsSettings",
    "QuotaSettings",
    "parse_metering",
]

SECTIONS: Final = ("quotas", "accounting", "metrics", "logging")

_STORAGE_SCHEMES: Final = ("memory://", "async+redis://", "async+rediss://", "async+redis+unix://")
_LEVELS: Final = ("debug", "info", "warning", "error")


class MeteringConfigError(ValueError):
    """A setting in [quotas], [accounting], [metrics] or [logging] is wrong; the message names it."""


@dataclass(frozen=True, slots=True)
class QuotaSettings:
    enabled: bool = True
    policy: Path | None = None  # None: the packaged default
    storage: str = "memory://"
    storage_password_file: Path | None = None
    fail_open: bool = False
    storage_timeout: float = 0.5
    lease_ttl: float = 30.0


@dataclass(frozen=True, slots=True)
class AccountingSettings:
    backend: str | None = None  # None: no accounting
    path: Path | None = None
    synchronous: str = "normal"
    dsn_file: Path | None = None
    journal: Path | None = None  # postgresql: rows waiting for the database, on this replica's disk
    audit_key_file: Path | None = None  # HMAC key signing the audit trail's records (optional)


@dataclass(frozen=True, slots=True)
class MetricsSettings:
    token_file: Path | None = None
    admin_bind: tuple[str, int] | None = None


@dataclass(frozen=True, slots=True)
class LoggingSettings:
    level: str = "info"
    requests: bool = True


@dataclass(frozen=True, slots=True)
class MeteringSettings:
    quotas: QuotaSettings = field(default_factory=QuotaSettings)
    accounting: AccountingSettings = field(default_factory=AccountingSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)


class _Table:
    def __init__(self, data: Any, where: str, allowed: set[str]) -> None:
        if not isinstance(data, dict):
            raise MeteringConfigError(f"{where} must be a table")
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise MeteringConfigError(f"{where}.{unknown[0]} is not a known setting (known: {', '.join(sorted(allowed))})")
        self.data, self.where = data, where

    def get(self, key: str, kind: type, default: Any) -> Any:
        if key not in self.data:
            return default
        value = self.data[key]
        if kind is float and type(value) is int:
            value = float(value)
        if type(value) is not kind:
            raise MeteringConfigError(f"{self.where}.{key} must be a {kind.__name__}")
        return value

    def number(self, key: str, low: float, high: float, default: float) -> float:
        value = self.get(key, float, default)
        if not low <= value <= high:
            raise MeteringConfigError(f"{self.where}.{key} must be between {low} and {high}")
        return float(value)

    def choice(self, key: str, choices: tuple[str, ...], default: str) -> str:
        value = self.get(key, str, default)
        if value not in choices:
            raise MeteringConfigError(f"{self.where}.{key} must be one of: {', '.join(choices)}")
        return str(value)

    def path(self, key: str, base: Path, must_exist: bool = False) -> Path | None:
        value: str | None = self.get(key, str, None)
        if value is None:
            return None
        path = base / value
        if must_exist and not path.is_file():
            raise MeteringConfigError(f"{self.where}.{key}: {path} does not exist")
        return path


def _quotas(data: Any, base: Path) -> QuotaSettings:
    table = _Table(data, "quotas", {"enabled", "policy", "storage", "storage_password_file", "on_storage_error",
                                    "storage_timeout", "lease_ttl"})
    storage = table.get("storage", str, "memory://")
    if not storage.startswith(_STORAGE_SCHEMES):
        raise MeteringConfigError(
            'quotas.storage must be "memory://" or a Redis URL ("async+redis://host:port/db"); '
            "put a password in storage_password_file, not in the URL")
    if "@" in storage:
        raise MeteringConfigError("quotas.storage must not hold a password: use quotas.storage_password_file")
    policy = table.path("policy", base, must_exist=True)
    if policy is not None:
        from .policy import PolicyError, load_policy

        try:
            load_policy(policy)
        except PolicyError as exc:
            raise MeteringConfigError(f"quotas.policy: {exc}") from None
    return QuotaSettings(
        table.get("enabled", bool, True),
        policy,
        storage,
        table.path("storage_password_file", base, must_exist=True),
        table.choice("on_storage_error", ("deny", "unsafe-allow"), "deny") == "unsafe-allow",
        table.number("storage_timeout", 0.05, 30, 0.5),
        table.number("lease_ttl", 3, 3600, 30.0),
    )


def _accounting(data: Any, base: Path) -> AccountingSettings:
    table = _Table(data, "accounting", {"backend", "path", "synchronous", "dsn_file", "journal", "audit_key_file"})
    backend = table.choice("backend", ("sqlite", "postgresql"), "sqlite")
    audit_key_file = table.path("audit_key_file", base, must_exist=True)
    if backend == "sqlite":
        path = table.path("path", base)
        if path is None:
            raise MeteringConfigError("accounting.path is required with the sqlite backend")
        if not path.parent.is_dir():
            raise MeteringConfigError(f"accounting.path: the directory {path.parent} does not exist")
        if "dsn_file" in table.data or "journal" in table.data:
            raise MeteringConfigError("accounting.dsn_file and accounting.journal are for the postgresql backend")
        return AccountingSettings("sqlite", path, table.choice("synchronous", ("normal", "full"), "normal"),
                                  audit_key_file=audit_key_file)
    dsn_file = table.path("dsn_file", base, must_exist=True)
    if dsn_file is None:
        raise MeteringConfigError("accounting.dsn_file is required with the postgresql backend")
    if "path" in table.data or "synchronous" in table.data:
        raise MeteringConfigError("accounting.path and accounting.synchronous are for the sqlite backend")
    journal = table.path("journal", base)
    if journal is None:
        raise MeteringConfigError(
            "accounting.journal is required with the postgresql backend: a file on this replica's own disk "
            "where usage rows wait while the database is away")
    if not journal.parent.is_dir():
        raise MeteringConfigError(f"accounting.journal: the directory {journal.parent} does not exist")
    return AccountingSettings("postgresql", dsn_file=dsn_file, journal=journal, audit_key_file=audit_key_file)


def _bind(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise MeteringConfigError('metrics.admin_bind must be "host:port", e.g. "127.0.0.1:9100"')
    return host.strip("[]"), int(port)


def _metrics(data: Any, base: Path) -> MetricsSettings:
    table = _Table(data, "metrics", {"token_file", "admin_bind"})
    bind = table.get("admin_bind", str, None)
    return MetricsSettings(table.path("token_file", base, must_exist=True), _bind(bind) if bind is not None else None)


def _logging(data: Any) -> LoggingSettings:
    table = _Table(data, "logging", {"level", "requests"})
    return LoggingSettings(table.choice("level", _LEVELS, "info"), table.get("requests", bool, True))


def parse_metering(data: dict[str, Any], base: Path) -> MeteringSettings:
    """The four tables of the whole configuration ``data`` (others are ignored here)."""
    return MeteringSettings(
        _quotas(data.get("quotas", {}), base),
        _accounting(data["accounting"], base) if "accounting" in data else AccountingSettings(),
        _metrics(data.get("metrics", {}), base),
        _logging(data.get("logging", {})),
    )
