"""The audit trail at start-up: open it beside the accounting, record the configuration and unsafe modes."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

from . import AuditTrail, audit_event, install, open_store

if TYPE_CHECKING:
    from ..accounting.config import AccountingSettings
    from ..settings import Settings

__all__ = ["open_trail", "record_start", "unsafe_modes", "close_trail"]


def unsafe_modes(settings: Settings) -> list[str]:
    """Every setting in force that weakens a control (each is also logged where it acts)."""
    modes = []
    if not settings.identity.auth.cookie_secure:
        modes.append("auth.cookie_secure=false")
    if settings.metering.quotas.enabled and settings.metering.quotas.fail_open:
        modes.append("quotas.on_storage_error=unsafe-allow")
    return modes


def open_trail(accounting: AccountingSettings) -> AuditTrail | None:
    """The trail in the accounting's store, installed for :func:`audit_event`; None without accounting."""
    from ..auth.secret import read_secret_file

    key = None
    if accounting.audit_key_file is not None:
        key = read_secret_file(accounting.audit_key_file, "accounting.audit_key_file", min_length=16).reveal().encode()
    if accounting.backend == "sqlite" and accounting.path is not None:
        store = open_store("sqlite", path=accounting.path, key=key)
    elif accounting.backend == "postgresql" and accounting.dsn_file is not None:
        dsn = read_secret_file(accounting.dsn_file, "accounting.dsn_file")
        store = open_store("postgresql", dsn=dsn, key=key)
    else:
        return None
    trail = AuditTrail(store)
    install(trail)
    return trail


def record_start(settings: Settings, config_path: Path | None, actor: str = "sluice serve") -> None:
    """``config_loaded`` (with the file's SHA-256: a changed configuration shows), then each unsafe mode."""
    digest = hashlib.sha256(config_path.read_bytes()).hexdigest() if config_path is not None else None
    audit_event(
        "config_loaded",
        actor,
        str(config_path or "")[:256],
        sha256=digest,
        clusters=len(settings.clusters),
        sign_in=settings.identity.users_sign_in,
    )
    for mode in unsafe_modes(settings):
        audit_event("unsafe_mode", actor, mode)


def close_trail(trail: AuditTrail | None) -> None:
    if trail is not None:
        install(None)
        trail.close()
