"""The ``[accounting]`` table of the appliance configuration.

```toml
[accounting]                        # absent: no usage rows (logged at start)
backend = "sqlite"                  # or "postgresql"
path = "/var/lib/sluice/usage.db"   # sqlite
synchronous = "normal"              # sqlite: "normal" survives an appliance crash, "full" a power loss too
dsn_file = "/etc/sluice/usage.dsn"  # postgresql: a libpq DSN (with its password) in a file
journal = "/var/lib/sluice/usage.journal"  # postgresql: this replica's own file for rows written
                                    # while the database is away (replayed when it returns)
audit_key_file = "/etc/sluice/audit.key"  # optional: HMAC-SHA256 key signing the audit trail (sluice audit verify)
```
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from policy.config import ConfigError, Table, config_keys, default

__all__ = ["AccountingSettings", "parse_accounting"]

_BACKENDS: Final = ("sqlite", "postgresql")


@dataclass(frozen=True, slots=True)
class AccountingSettings:
    backend: str | None = None  # None: no accounting; in the file, "sqlite" unless named
    path: Path | None = None
    synchronous: str = "normal"  # or "full"
    dsn_file: Path | None = None
    journal: Path | None = None  # postgresql: rows waiting for the database, on this replica's disk
    audit_key_file: Path | None = None  # HMAC key signing the audit trail's records (optional)


def parse_accounting(data: Any, base: Path) -> AccountingSettings:
    """The ``[accounting]`` table ``data``; raises ConfigError naming the key."""
    table = Table(data, "accounting", config_keys(AccountingSettings))
    backend = table.choice("backend", _BACKENDS, _BACKENDS[0])
    audit_key_file = table.path("audit_key_file", base, None, must_exist=True)
    if backend == "sqlite":
        path = table.path("path", base, None)
        if path is None:
            raise table.error("path", "is required with the sqlite backend")
        if not path.parent.is_dir():
            raise table.error("path", f": the directory {path.parent} does not exist; create it or name another")
        if "dsn_file" in table or "journal" in table:
            raise ConfigError("accounting.dsn_file and accounting.journal are for the postgresql backend", key="accounting")
        synchronous = table.choice("synchronous", ("normal", "full"), default(AccountingSettings, "synchronous"))
        return AccountingSettings("sqlite", path, synchronous, audit_key_file=audit_key_file)
    dsn_file = table.path("dsn_file", base, None, must_exist=True)
    if dsn_file is None:
        raise table.error("dsn_file", "is required with the postgresql backend")
    if "path" in table or "synchronous" in table:
        raise ConfigError("accounting.path and accounting.synchronous are for the sqlite backend", key="accounting")
    journal = table.path("journal", base, None)
    if journal is None:
        raise table.error(
            "journal",
            "is required with the postgresql backend: a file on this replica's own disk "
            "where usage rows wait while the database is away",
        )
    if not journal.parent.is_dir():
        raise table.error("journal", f": the directory {journal.parent} does not exist; create it or name another")
    return AccountingSettings("postgresql", dsn_file=dsn_file, journal=journal, audit_key_file=audit_key_file)
