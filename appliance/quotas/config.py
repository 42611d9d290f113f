"""The ``[quotas]`` table of the appliance's TOML, and the four metering tables together.

```toml
[quotas]
enabled = true                      # default true: the packaged policy/quotas.toml, in memory
policy = "quotas.toml"              # relative to this file; default: the packaged policy
storage = "memory://"               # or "async+redis://redis.internal:6379/0" for several replicas
storage_password_file = "/etc/sluice/redis.password"   # optional
on_storage_error = "deny"           # or "unsafe-allow": admit unmetered while Redis is unreachable
storage_timeout = 0.5               # seconds for the quota checks of one request
lease_ttl = 30                      # seconds a dead replica's concurrency slots stay taken
```

``[accounting]``, ``[metrics]`` and ``[logging]`` are read by their own
modules: :mod:`appliance.accounting.config`, :mod:`appliance.metrics_config`,
:mod:`appliance.logs_config`.  Relative paths are relative to the
configuration file.  Secrets (the Redis password, the PostgreSQL DSN, the
metrics token) are read from files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from policy.config import Table, build, config_keys, setting

from ..accounting.config import AccountingSettings, parse_accounting
from ..logs_config import LoggingSettings, parse_logging
from ..metrics_config import MetricsSettings, parse_metrics

__all__ = [
    "SECTIONS",
    "AccountingSettings",
    "LoggingSettings",
    "MeteringSettings",
    "MetricsSettings",
    "QuotaSettings",
    "parse_metering",
    "parse_quotas",
]

SECTIONS: Final = ("quotas", "accounting", "metrics", "logging")

_STORAGE_SCHEMES: Final = ("memory://", "async+redis://", "async+rediss://", "async+redis+unix://")


@dataclass(frozen=True, slots=True)
class QuotaSettings:
    enabled: bool = True
    policy: Path | None = setting(None, must_exist=True)  # None: the packaged default
    storage: str = "memory://"
    storage_password_file: Path | None = setting(None, must_exist=True)
    fail_open: bool = setting(False, read=False)  # on_storage_error = "unsafe-allow"
    storage_timeout: float = setting(0.5, low=0.05, high=30)
    lease_ttl: float = setting(30.0, low=3, high=3600)


@dataclass(frozen=True, slots=True)
class MeteringSettings:
    quotas: QuotaSettings = field(default_factory=QuotaSettings)
    accounting: AccountingSettings = field(default_factory=AccountingSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)


def parse_quotas(data: Any, base: Path) -> QuotaSettings:
    """The ``[quotas]`` table ``data``; raises ConfigError naming the key."""
    table = Table(data, "quotas", config_keys(QuotaSettings, "on_storage_error"))
    fail_open = table.choice("on_storage_error", ("deny", "unsafe-allow"), "deny") == "unsafe-allow"
    settings: QuotaSettings = build(QuotaSettings, table, base, fail_open=fail_open)
    if not settings.storage.startswith(_STORAGE_SCHEMES):
        raise table.error(
            "storage",
            'must be "memory://" or a Redis URL ("async+redis://host:port/db"); '
            "put a password in storage_password_file, not in the URL",
        )
    if "@" in settings.storage:
        raise table.error("storage", "must not hold a password: use quotas.storage_password_file")
    if settings.policy is not None:
        from .policy import PolicyError, load_policy

        try:
            load_policy(settings.policy)
        except PolicyError as exc:
            raise table.error("policy", f": {exc}") from None
    return settings


def parse_metering(data: dict[str, Any], base: Path) -> MeteringSettings:
    """The four tables of the whole configuration ``data`` (others are ignored here)."""
    return MeteringSettings(
        parse_quotas(data.get("quotas", {}), base),
        parse_accounting(data["accounting"], base) if "accounting" in data else AccountingSettings(),
        parse_metrics(data.get("metrics", {}), base),
        parse_logging(data.get("logging", {})),
    )
