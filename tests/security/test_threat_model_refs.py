"""Every test the threat model names exists: a row cannot point at evidence that is gone.

The threat model's rows cite tests as ``tests/path/file.py::test_name`` and may
continue a list with ``::other_test`` (same file). Parametrized ids
(``::test_x[case]``) are checked by function name. A file may also be cited
alone (``tests/sluice_sdk/test_ohttp.py``): then the file must exist.
"""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = sorted((ROOT / "threat_model").glob("*.md"))
# `tests/…py` optionally followed by `::name`, then any `, ::name` continuations.
CITATION = re.compile(r"`(tests/[\w/]+\.py)(::[\w\[\]-]+)?`|`::([\w\[\]-]+)`")


@cache
def _test_names(path: Path) -> frozenset[str]:
    tree = ast.parse(path.read_text(), str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
    return frozenset(names)


def _citations(text: str) -> list[tuple[str, str | None]]:
    """(file, test name or None) for each citation; a bare ``::name`` belongs to the last file cited."""
    found: list[tuple[str, str | None]] = []
    current: str | None = None
    for match in CITATION.finditer(text):
        if match.group(1):
            current = match.group(1)
            name = match.group(2)[2:] if match.group(2) else None
            found.append((current, name))
        elif current is not None:
            found.append((current, match.group(3)))
    return found


def test_threat_model_cites_only_tests_that_exist() -> None:
    missing = []
    cited = 0
    for document in DOCUMENTS:
        for file, name in _citations(document.read_text()):
            cited += 1
            path = ROOT / file
            if not path.is_file():
                missing.append(f"{document.name}: {file}")
            elif name is not None and name.split("[")[0] not in _test_names(path):
                missing.append(f"{document.name}: {file}::{name}")
    assert cited > 50
    assert missing == []


def test_checker_catches_a_missing_test() -> None:
    assert _citations("`tests/sluice_sdk/test_ohttp.py::test_nope`, `::test_other`") == [
        ("tests/sluice_sdk/test_ohttp.py", "test_nope"),
        ("tests/sluice_sdk/test_ohttp.py", "test_other"),
    ]
    assert "test_nope" not in _test_names(ROOT / "tests/sluice_sdk/test_ohttp.py")
