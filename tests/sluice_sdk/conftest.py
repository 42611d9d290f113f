"""Shared helpers for the SDK tests: the stored known-answer vectors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

VECTORS = Path(__file__).resolve().parent / "vectors"


def load_vector(name: str) -> dict[str, Any]:
    """A vector file from tests/sluice_sdk/vectors/ (each names its source document and section)."""
    data: dict[str, Any] = json.loads((VECTORS / name).read_text(encoding="utf-8"))
    return data


def unhex(value: str) -> bytes:
    return bytes.fromhex(value)
