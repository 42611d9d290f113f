"""``sluice usage --plot FILE.png``: requests and tokens per day and model, as a picture.

Needs the optional extra ``plot`` (matplotlib); without it the command says
so and changes nothing.  The picture shows only what the report shows:
counts per day and model, summed over users (no user appears in it).
"""

from __future__ import annotations

import datetime
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from policy.errors import InternalError

from ._rows import ReportRow

__all__ = ["MISSING_EXTRA", "PlotUnavailable", "daily_by_model", "plot_usage"]

MISSING_EXTRA: Final = "sluice usage --plot needs the optional extra 'plot' (matplotlib): pip install 'sluice[plot]'"

# At most this many models get their own colour; the rest are summed as "other".
MAX_MODELS: Final = 12


class PlotUnavailable(InternalError, RuntimeError):
    """matplotlib is not installed."""


def daily_by_model(rows: Sequence[ReportRow]) -> tuple[list[str], dict[str, list[int]], dict[str, list[int]]]:
    """Days (every day from the first to the last), and per model the requests and the tokens on each day."""
    if not rows:
        return [], {}, {}
    first = datetime.date.fromisoformat(min(r.day for r in rows))
    last = datetime.date.fromisoformat(max(r.day for r in rows))
    days = [(first + datetime.timedelta(days=n)).isoformat() for n in range((last - first).days + 1)]
    index = {day: n for n, day in enumerate(days)}
    totals: dict[str, int] = defaultdict(int)
    for row in rows:
        totals[row.model] += row.requests
    kept = set(sorted(totals, key=lambda m: (-totals[m], m))[:MAX_MODELS])
    requests: dict[str, list[int]] = {}
    tokens: dict[str, list[int]] = {}
    for row in rows:
        model = row.model if row.model in kept else "other"
        requests.setdefault(model, [0] * len(days))[index[row.day]] += row.requests
        tokens.setdefault(model, [0] * len(days))[index[row.day]] += row.prompt_tokens + row.completion_tokens
    order = sorted(requests, key=lambda m: (m == "other", -sum(requests[m]), m))
    return days, {m: requests[m] for m in order}, {m: tokens[m] for m in order}


def plot_usage(rows: Sequence[ReportRow], path: Path, title: str) -> None:
    """Write a PNG with two stacked bar charts (requests, tokens) per day and model."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display: files only
        import matplotlib.pyplot as plt
    except ImportError:
        raise PlotUnavailable(MISSING_EXTRA) from None
    days, requests, tokens = daily_by_model(rows)
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(max(8.0, 0.35 * len(days) + 4), 8), sharex=True)
    try:
        for axes, series, label in ((top, requests, "requests"), (bottom, tokens, "tokens (prompt + completion)")):
            base = [0] * len(days)
            for model, values in series.items():
                axes.bar(days, values, bottom=base, label=model)
                base = [b + v for b, v in zip(base, values, strict=True)]
            axes.set_ylabel(f"{label} per day")
            axes.grid(axis="y", alpha=0.3)
        if not days:
            top.text(0.5, 0.5, "no requests in this period", ha="center", va="center", transform=top.transAxes)
        else:
            top.legend(title="model", fontsize="small", loc="upper left")
        top.set_title(title)
        bottom.set_xlabel("day (UTC)")
        plt.setp(bottom.get_xticklabels(), rotation=45, ha="right")
        figure.tight_layout()
        figure.savefig(path, format="png", dpi=100)
    finally:
        plt.close(figure)
