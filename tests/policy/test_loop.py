"""policy.loop.run_event_loop: the one place that picks the event loop."""

from __future__ import annotations

import ast
import asyncio
import sys
import types

import pytest

from policy.loop import run_event_loop
from tests.conftest import ROOT


async def _loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__


def test_returns_the_result() -> None:
    async def answer() -> int:
        return 42

    assert run_event_loop(answer()) == 42


def test_standard_loop_when_uvloop_is_not_allowed() -> None:
    assert run_event_loop(_loop_module(), allow_uvloop=False).startswith("asyncio")


def test_standard_loop_when_uvloop_is_absent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop -> ImportError, as on a bare login node
    assert run_event_loop(_loop_module()).startswith("asyncio")


def test_uvloop_when_installed() -> None:
    uvloop = pytest.importorskip("uvloop")
    assert isinstance(uvloop, types.ModuleType)
    assert run_event_loop(_loop_module()).startswith("uvloop")


def test_no_other_module_picks_a_loop() -> None:
    """uvloop is imported in policy/loop.py alone (the gate, the stand-in and the appliance all call it)."""
    found = []
    for top in ("policy", "cluster", "appliance", "sluice_sdk"):
        for path in sorted((ROOT / top).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                names = (
                    [a.name for a in node.names]
                    if isinstance(node, ast.Import)
                    else ([node.module or ""] if isinstance(node, ast.ImportFrom) else [])
                )
                if any(name.split(".")[0] == "uvloop" for name in names) and rel != "policy/loop.py":
                    found.append(f"{rel}:{node.lineno}")
    assert found == []
