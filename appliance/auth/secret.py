"""Secrets: read from files named in the configuration, never printed.

A :class:`Secret` prints as ``**********`` (in ``str``, ``repr``, f-strings and
tracebacks' locals); :meth:`Secret.reveal` is the one way to the value, so
every use of a secret can be found by searching for it.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path
from typing import Final

from policy.events import event_line

__all__ = ["Secret", "read_secret_file"]

log = logging.getLogger("sluice.auth")

_MASK: Final = "**********"

# A secret file larger than this is not a secret file (a key, a token, a password).
MAX_SECRET_FILE_BYTES: Final = 64 * 1024


class Secret:
    """A string that does not print."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __str__(self) -> str:
        return _MASK

    def __repr__(self) -> str:
        return f"Secret('{_MASK}')"

    def __eq__(self, other: object) -> bool:
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # unhashable, as __eq__ is overridden (typeshed wants a method)


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
