"""The package's import rules (STYLE.md "Crypto"; sluice_sdk/__init__.py): checked, not hoped for."""

from __future__ import annotations

import ast
from pathlib import Path

import sluice_sdk
from sluice_sdk.errors import SealError

PACKAGE = Path(sluice_sdk.__file__).resolve().parent
CRYPTO = {"cryptography", "pyhpke"}
FORBIDDEN = {"policy", "cluster", "appliance"}


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_crypto_libraries_only_in_hazmat() -> None:
    for path in PACKAGE.glob("*.py"):
        if path.name != "_hazmat.py":
            assert not _imports(path) & CRYPTO, path.name


def test_no_imports_of_the_rest_of_sluice() -> None:
    for path in PACKAGE.glob("*.py"):
        assert not _imports(path) & FORBIDDEN, path.name


def test_public_modules_declare_all() -> None:
    for path in PACKAGE.glob("*.py"):
        if not path.name.startswith("_") or path.name == "__init__.py":
            assert "__all__" in path.read_text(encoding="utf-8"), path.name


def test_seal_error_is_message_less() -> None:
    assert str(SealError()) == ""
    assert repr(SealError()) == "SealError()"


def test_py_typed_shipped() -> None:
    assert (PACKAGE / "py.typed").exists()
