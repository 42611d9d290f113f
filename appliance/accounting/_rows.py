"""The usage row, the accounting interface, and the report query both stores share."""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Final, Protocol

__all__ = ["COLUMNS", "REPORT_COLUMNS", "Accounting", "ReportRow", "UsageRow", "day_of"]


@dataclass(frozen=True, slots=True)
class UsageRow:
    time: float  # when the request arrived, Unix seconds
    request_id: str
    user: str
    key_id: str | None
    model: str
    route: str
    status: int
    prompt_tokens: int
    completion_tokens: int
    latency_ms: float  # to the last byte
    first_token_ms: float | None  # streams only
    sealed: bool
    # Milliseconds of audio in the request (audio routes; from the file's container header).
    audio_ms: int = 0
    # What produced the answer: the model's configured revision and its server's version.
    model_revision: str | None = None
    backend_version: str | None = None

    def values(self) -> tuple[object, ...]:
        return (
            self.time,
            day_of(self.time),
            self.request_id,
            self.user,
            self.key_id,
            self.model,
            self.route,
            self.status,
            self.prompt_tokens,
            self.completion_tokens,
            self.latency_ms,
            self.first_token_ms,
            1 if self.sealed else 0,
            self.audio_ms,
            self.model_revision,
            self.backend_version,
        )


# Column order of UsageRow.values(); `day` (UTC, YYYY-MM-DD) is derived, for the reports.
COLUMNS: Final = (
    "time",
    "day",
    "request_id",
    "user_id",
    "key_id",
    "model",
    "route",
    "status",
    "prompt_tokens",
    "completion_tokens",
    "latency_ms",
    "first_token_ms",
    "sealed",
    "audio_ms",
    "model_revision",
    "backend_version",
)


def day_of(timestamp: float) -> str:
    """The UTC day of ``timestamp``, ``YYYY-MM-DD`` (the last one is remembered: rows come in order)."""
    global _last_day
    day = int(timestamp // 86_400)
    last = _last_day
    if day != last[0]:
        last = _last_day = (day, datetime.datetime.fromtimestamp(day * 86_400, datetime.UTC).strftime("%Y-%m-%d"))
    return last[1]


_last_day: tuple[int | None, str] = (None, "")


@dataclass(frozen=True, slots=True)
class ReportRow:
    day: str
    user: str
    model: str
    requests: int
    errors: int
    sealed: int
    prompt_tokens: int
    completion_tokens: int
    mean_latency_ms: float


REPORT_COLUMNS: Final = (
    "day",
    "user",
    "model",
    "requests",
    "errors",
    "sealed",
    "prompt_tokens",
    "completion_tokens",
    "mean_latency_ms",
)

# The report, per day, user and model; placeholders are rewritten per driver.
REPORT_SQL: Final = (
    "SELECT day, user_id, model, COUNT(*), SUM(CASE WHEN status >= 400 THEN 1 ELSE 0 END), SUM(sealed),"
    " SUM(prompt_tokens), SUM(completion_tokens), AVG(latency_ms)"
    " FROM usage WHERE day >= ? AND day <= ?{filters}"
    " GROUP BY day, user_id, model ORDER BY day, user_id, model"
)


class Accounting(Protocol):
    async def start(self) -> None: ...

    async def record(self, row: UsageRow, busy: bool = False) -> None:
        """Returns once ``row`` is committed; raises on failure.

        ``busy`` is a hint: other requests are in flight (a store may group their rows).
        """
        ...

    async def report(self, since: str, until: str, user: str | None = None, model: str | None = None) -> list[ReportRow]: ...

    async def aclose(self) -> None: ...
