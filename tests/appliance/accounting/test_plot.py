"""`sluice usage --plot FILE.png`: requests and tokens per day and model; a clear message without the extra."""

from __future__ import annotations

import asyncio
import builtins
from pathlib import Path

import pytest

from appliance.accounting import SqliteAccounting
from appliance.accounting._rows import ReportRow
from appliance.accounting.plot import MISSING_EXTRA, daily_by_model
from appliance.cli import main

from .test_sqlite import DAY, row


def _database(tmp_path: Path) -> Path:
    path = tmp_path / "usage.db"

    async def fill() -> None:
        store = SqliteAccounting(path)
        await store.start()
        for day in range(5):
            for n in range(day + 1):
                await store.record(row(model="chat", when=DAY + day * 86400 + n, completion=10 * (n + 1)))
            if day % 2 == 0:
                await store.record(row(model="embed", when=DAY + day * 86400 + 60, completion=0))
        await store.aclose()

    asyncio.run(fill())
    return path


def test_daily_series_fill_empty_days() -> None:
    rows = [ReportRow("2026-01-01", "a", "m", 2, 0, 0, 5, 5, 1.0), ReportRow("2026-01-03", "b", "m", 1, 0, 0, 1, 2, 1.0)]
    days, requests, tokens = daily_by_model(rows)
    assert days == ["2026-01-01", "2026-01-02", "2026-01-03"]
    assert requests == {"m": [2, 0, 1]} and tokens == {"m": [10, 0, 3]}


def test_plot_writes_a_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="the 'plot' extra is not installed")
    picture = tmp_path / "usage.png"
    assert (
        main(
            [
                "usage",
                "--database",
                str(_database(tmp_path)),
                "--since",
                "2026-01-01",
                "--until",
                "2026-01-05",
                "--plot",
                str(picture),
            ]
        )
        == 0
    )
    data = picture.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_reject_plot_without_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real_import = builtins.__import__

    def no_matplotlib(name: str, *args: object, **kwargs: object) -> object:
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    picture = tmp_path / "usage.png"
    assert main(["usage", "--database", str(_database(tmp_path)), "--plot", str(picture)]) == 2
    assert MISSING_EXTRA in capsys.readouterr().err and not picture.exists()


def test_reject_plot_to_another_kind_of_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["usage", "--database", str(_database(tmp_path)), "--plot", str(tmp_path / "x.svg")]) == 2
    assert "writes a .png" in capsys.readouterr().err
