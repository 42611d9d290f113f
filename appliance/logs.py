"""Structured logs: one JSON object per line, each with its request's id, never any content.

:func:`configure_logging` sends every logger through :class:`JsonFormatter`.
A message that is itself a JSON object (the appliance's habit:
``log.warning('{"event":"..."}')``) is merged into the line; any other
message is kept as ``message``.  Exceptions are logged as their type and
where they were raised, never their text (an exception's text can quote what
a request carried).

Each line carries the id of the request it was written for (:data:`CURRENT`,
set by ``appliance/middleware/request_log.py``).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import traceback
from typing import IO, Any, Final

import orjson

from .middleware.request_log import CURRENT

__all__ = ["JsonFormatter", "configure_logging"]

# Frames of a traceback kept in a log line (innermost last).
MAX_FRAMES: Final = 8

# Libraries whose INFO lines are noise for an operator (and may name peers): warnings and up only.
_QUIET: Final = ("asyncssh", "hypercorn.access")


class JsonFormatter(logging.Formatter):
    _second = -1
    _prefix = ""

    def _timestamp(self, created: float) -> str:
        """ISO 8601, UTC, milliseconds (the date part is formatted once per second)."""
        second = int(created)
        if second != self._second:
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        return f"{self._prefix}.{int((created - second) * 1000):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": self._timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        request = CURRENT.get()
        if request is not None:
            line["request_id"] = request.id
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            line.update(fields)
        else:
            try:
                message = record.getMessage()
            except (TypeError, ValueError):
                message = str(record.msg)
            parsed: object = None
            if message.startswith("{"):
                try:
                    parsed = json.loads(message)
                except ValueError:
                    parsed = None
            if isinstance(parsed, dict):
                line.update(parsed)
            else:
                line["message"] = message
        if record.exc_info and record.exc_info[0] is not None:
            exc_type, _, tb = record.exc_info
            line["exception"] = exc_type.__name__
            frames = traceback.extract_tb(tb)[-MAX_FRAMES:]
            line["where"] = [f"{os.path.basename(f.filename)}:{f.lineno}:{f.name}" for f in frames]
        return orjson.dumps(line, default=str).decode()

    def formatException(self, ei: Any) -> str:
        return ""  # never the exception's text; format() logs its type and frames


def configure_logging(level: str = "info", stream: IO[str] | None = None) -> None:
    """Every log line as JSON on ``stream`` (stderr by default), at ``level`` and above."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # The logging HOWTO's "Optimization": no caller frame lookup, no thread or process names
    # (the lines do not carry them), which makes a log line several microseconds cheaper.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    for name in _QUIET:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
    logging.captureWarnings(True)
