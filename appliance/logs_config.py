"""The ``[logging]`` table of the appliance configuration.

```toml
[logging]
level = "info"                      # debug, info, warning, error
requests = true                     # one JSON line per HTTP request
```
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from policy.config import Table, build, config_keys, setting

__all__ = ["LoggingSettings", "parse_logging"]


@dataclass(frozen=True, slots=True)
class LoggingSettings:
    level: str = setting("info", choices=("debug", "info", "warning", "error"))
    requests: bool = True


def parse_logging(data: Any) -> LoggingSettings:
    """The ``[logging]`` table ``data``; raises ConfigError naming the key."""
    settings: LoggingSettings = build(LoggingSettings, Table(data, "logging", config_keys(LoggingSettings)))
    return settings
