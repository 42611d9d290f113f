"""No module builds a log line's JSON by hand: every one goes through policy.events.event_line.

A JSON template with ``%s`` in it (``'{"event":"x","error":"%s"}'``) breaks, or
gains fields, when a value carries a quote; a ``json.dumps({"event": ...})`` of
its own drifts from the common shape.  Read with :mod:`ast` over ``cluster``,
``appliance`` and ``policy``: a string (docstrings aside) holding ``"event":``,
or a ``dumps`` call given a dict with an ``"event"`` key, is a hand-built line.
The one place that may build it is ``policy/events.py``.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from tests.conftest import ROOT

SCANNED = ("cluster", "appliance", "policy")
BUILDER = "policy/events.py"
TEMPLATE = re.compile(r'"event"\s*:')


def _docstrings(tree: ast.AST) -> set[int]:
    ids: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


def hand_built(source: str, where: str) -> list[str]:
    """Each hand-built event line in ``source``, as 'where:line: what'."""
    tree = ast.parse(source, where)
    docs = _docstrings(tree)
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            if TEMPLATE.search(node.value):
                found.append(f"{where}:{node.lineno}: a JSON event template")
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name.endswith("dumps") and any(
                isinstance(arg, ast.Dict) and any(isinstance(k, ast.Constant) and k.value == "event" for k in arg.keys)
                for arg in node.args
            ):
                found.append(f"{where}:{node.lineno}: {name} of an event dict")
    return found


def _modules() -> list[Path]:
    return [p for top in SCANNED for p in sorted((ROOT / top).rglob("*.py")) if "__pycache__" not in p.parts]


@pytest.mark.parametrize("path", _modules(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_hand_built_event_lines(path: Path) -> None:
    rel = path.relative_to(ROOT).as_posix()
    if rel == BUILDER:
        return
    found = hand_built(path.read_text(encoding="utf-8"), rel)
    assert found == [], "\n".join(found) + "\nuse policy.events.event_line"


CAUGHT = [
    """log.warning('{"event":"violation","code":"%s"}', code)""",
    """log.error('{"event": "x"}')""",
    """log.info(f'{{"event":"x","n":{n}}}')""",
    """log.info(json.dumps({"event": "audit", "kind": kind}, separators=(",", ":")))""",
    """log.info(orjson.dumps({"event": "x"}).decode())""",
]
ALLOWED = [
    '''"""A docstring may show '{"event":"x"}'."""''',
    """log.warning(event_line("violation", code=code))""",
    """fields = {"event": "request", "status": 200}\nlog.info("request", extra={"fields": fields})""",
    """json.dumps({"model": m})""",
]


@pytest.mark.parametrize("source", CAUGHT)
def test_checker_catches(source: str) -> None:
    assert hand_built(source, "snippet")


@pytest.mark.parametrize("source", ALLOWED)
def test_checker_allows(source: str) -> None:
    assert hand_built(source, "snippet") == []
