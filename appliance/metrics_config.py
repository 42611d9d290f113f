"""The ``[metrics]`` table of the appliance configuration.

```toml
[metrics]                           # absent: /metrics is closed
token_file = "/etc/sluice/metrics.token"   # /metrics needs Authorization: Bearer <token>
admin_bind = "127.0.0.1:9100"              # and/or: /metrics served only on this address
```
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from policy.config import Table, build, config_keys, setting

__all__ = ["MetricsSettings", "parse_metrics"]


@dataclass(frozen=True, slots=True)
class MetricsSettings:
    token_file: Path | None = setting(None, must_exist=True)
    admin_bind: tuple[str, int] | None = None  # in the file: "host:port"


def parse_metrics(data: Any, base: Path) -> MetricsSettings:
    """The ``[metrics]`` table ``data``; raises ConfigError naming the key."""
    table = Table(data, "metrics", config_keys(MetricsSettings))
    bind = table.get("admin_bind", str, None)
    address = None
    if bind is not None:
        host, sep, port = bind.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise table.error("admin_bind", 'must be "host:port", e.g. "127.0.0.1:9100"')
        address = (host.strip("[]"), int(port))
    settings: MetricsSettings = build(MetricsSettings, table, base, admin_bind=address)
    return settings
