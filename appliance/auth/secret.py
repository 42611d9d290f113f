"""Secrets: read from files named in the configuration, never printed.

:class:`Secret` is the SDK's (``sluice_sdk/secret.py``, one class for both): it
prints as ``**********`` and :meth:`Secret.reveal` is the one way to the value.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path
from typing import Final

from policy.events import event_line
from sluice_sdk.secret import Secret

__all__ = ["Secret", "carried", "read_secret_file"]

log = logging.getLogger("sluice.auth")

# A secret file larger than this is not a secret file (a key, a token, a password).
MAX_SECRET_FILE_BYTES: Final = 64 * 1024


def carried(value: str | Secret) -> Secret:
    """``value`` as a Secret, to be revealed only where it is used (a str is wrapped)."""
    return value if isinstance(value, Secret) else Secret(value)


def read_secret_file(path: Path, what: str, min_length: int = 1) -> Secret:
    """The stripped text of ``path``; raises ValueError naming ``what`` when unusable.

    A file that others may read is accepted but logged: on a shared host it
    is a leak waiting to happen.
    """
    try:
        info = path.stat()
        if info.st_size > MAX_SECRET_FILE_BYTES:
            raise ValueError(f"{what}: {path} is larger than {MAX_SECRET_FILE_BYTES} bytes")
        text = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ValueError(f"{what}: cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{what}: {path} is not UTF-8 text") from None
    if len(text) < min_length:
        raise ValueError(f"{what}: {path} must hold at least {min_length} characters")
    if os.name == "posix" and info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning(event_line("secret_file_readable_by_others", setting=what))
    return Secret(text)
