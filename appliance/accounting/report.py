"""``sluice usage``: requests and tokens per day, user and model, as a table, CSV or JSON.

    sluice usage --config /etc/sluice/appliance.toml --since 2025-01-01 --format csv
    sluice usage --database /var/lib/sluice/usage.db --user alice

The report reads the accounting store the configuration names (SQLite or
PostgreSQL), read-only, and can run beside a live appliance.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import datetime
import json
import sys
from collections.abc import Sequence
from dataclasses import astuple
from pathlib import Path
from typing import IO

from ..auth.secret import Secret
from ._rows import REPORT_COLUMNS, ReportRow

__all__ = ["add_arguments", "render", "run"]


def _day(text: str) -> str:
    try:
        return datetime.date.fromisoformat(text).isoformat()
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date (YYYY-MM-DD)") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", help="the appliance's TOML configuration (its [accounting] table)")
    source.add_argument("--database", help="a SQLite accounting database, directly")
    today = datetime.datetime.now(datetime.UTC).date()
    parser.add_argument(
        "--since",
        type=_day,
        default=(today - datetime.timedelta(days=30)).isoformat(),
        help="first day, YYYY-MM-DD, UTC (default: 30 days ago)",
    )
    parser.add_argument("--until", type=_day, default=today.isoformat(), help="last day, YYYY-MM-DD, UTC (default: today)")
    parser.add_argument("--user", help="only this user")
    parser.add_argument("--model", help="only this model")
    parser.add_argument("--format", choices=("table", "csv", "json"), default="table", help="output format (default table)")
    parser.add_argument(
        "--plot", metavar="FILE.png", help="also draw requests and tokens per day and model into this PNG (extra 'plot')"
    )


def render(rows: Sequence[ReportRow], kind: str, out: IO[str]) -> None:
    if kind == "json":
        json.dump([dict(zip(REPORT_COLUMNS, astuple(r), strict=True)) for r in rows], out, indent=2)
        out.write("\n")
        return
    if kind == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(REPORT_COLUMNS)
        writer.writerows(astuple(r) for r in rows)
        return
    table = [list(REPORT_COLUMNS)] + [[_cell(v) for v in astuple(r)] for r in rows]
    if rows:
        totals = ["total", "", "", *(_cell(sum(getattr(r, c) for r in rows)) for c in REPORT_COLUMNS[3:8]), ""]
        table.append(totals)
    widths = [max(len(row[i]) for row in table) for i in range(len(REPORT_COLUMNS))]
    numeric = [False, False, False, True, True, True, True, True, True]
    for index, row in enumerate(table):
        cells = [c.rjust(w) if numeric[i] and index else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        out.write("  ".join(cells).rstrip() + "\n")
        if index == 0 or (rows and index == len(table) - 2):
            out.write("  ".join("-" * w for w in widths) + "\n")
    if not rows:
        out.write("(no requests in this period)\n")


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.1f}"
    if isinstance(value, int):
        return f"{value:,}".replace(",", "_") if value >= 100_000 else str(value)
    return str(value)


async def _postgres_report(dsn: str | Secret, args: argparse.Namespace) -> list[ReportRow]:
    from ._postgres import PostgresAccounting

    store = PostgresAccounting(dsn)
    await store.start()
    try:
        return await store.report(args.since, args.until, args.user, args.model)
    finally:
        await store.aclose()


def run(args: argparse.Namespace, out: IO[str] | None = None) -> int:
    from ._sqlite import report as sqlite_report

    out = out or sys.stdout
    if args.since > args.until:
        print("sluice usage: --since is after --until", file=sys.stderr)
        return 2
    plot = getattr(args, "plot", None)
    if plot is not None:
        from .plot import MISSING_EXTRA

        if not plot.lower().endswith(".png"):
            print("sluice usage: --plot writes a .png file", file=sys.stderr)
            return 2
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print(f"sluice usage: {MISSING_EXTRA}", file=sys.stderr)
            return 2
    try:
        if args.database is not None:
            rows = sqlite_report(Path(args.database), args.since, args.until, args.user, args.model)
        else:
            from ..settings import ConfigError, load_settings

            try:
                accounting = load_settings(args.config).metering.accounting
            except ConfigError as exc:
                print(f"sluice: {exc}", file=sys.stderr)
                return 2
            if accounting.backend == "sqlite" and accounting.path is not None:
                rows = sqlite_report(accounting.path, args.since, args.until, args.user, args.model)
            elif accounting.backend == "postgresql" and accounting.dsn_file is not None:
                from ..auth.secret import read_secret_file

                dsn = read_secret_file(accounting.dsn_file, "accounting.dsn_file")
                rows = asyncio.run(_postgres_report(dsn, args))
            else:
                print("sluice usage: the configuration has no [accounting] table", file=sys.stderr)
                return 2
    except (OSError, ValueError, RuntimeError) as exc:
        print(f"sluice usage: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 (the database driver's own errors: sqlite3, asyncpg)
        print(f"sluice usage: cannot read the accounting database: {type(exc).__name__}", file=sys.stderr)
        return 1
    render(rows, args.format, out)
    if plot is not None:
        from .plot import PlotUnavailable, plot_usage

        try:
            plot_usage(rows, Path(plot), f"Sluice usage {args.since} to {args.until}")
        except (OSError, PlotUnavailable) as exc:
            print(f"sluice usage: cannot write {plot}: {exc}", file=sys.stderr)
            return 1
        print(f"sluice usage: wrote {plot}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="sluice usage", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
