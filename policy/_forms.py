"""Form routes: typed values from a parsed multipart form, and the gate's own form back.

A form route's non-file fields are described in routes.toml like JSON fields
(strings, numbers, booleans, arrays of them); their text is turned into those
types here, strictly (``wrong_type`` otherwise), so that the same compiled
schema checks them.  Arrays travel as repeated ``name[]`` parts, as OpenAI's
clients send ``timestamp_granularities[]``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

from ._limits import _POLICY, MAX_INT_DIGITS, MAX_NUMBER_CHARS
from .errors import BodyRejected
from .multipart import Form, build_form, new_boundary

__all__ = ["SCALAR_KINDS", "form_object", "form_body", "FORM_MEDIA"]

# The schema kinds a form field may have (an array's items too).
SCALAR_KINDS: Final = frozenset({"string", "integer", "number", "boolean", "one_of"})

FORM_MEDIA: Final = "multipart/form-data; boundary="

_INTEGER_RE: Final = re.compile(rf"-?(?:0|[1-9][0-9]{{0,{MAX_INT_DIGITS - 1}}})", re.ASCII)
_NUMBER_RE: Final = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?", re.ASCII)
# Draws of a new boundary before giving up (a collision with content is 2^-128 per draw).
_BOUNDARY_DRAWS: Final = 4


def _typed(text: str, kind: str) -> Any:
    if kind == "integer":
        if _INTEGER_RE.fullmatch(text) is None:
            raise BodyRejected("wrong_type", _POLICY)
        return int(text)
    if kind == "number":
        if len(text) > MAX_NUMBER_CHARS or _NUMBER_RE.fullmatch(text) is None:
            raise BodyRejected("wrong_type", _POLICY)
        value = float(text)
        return int(value) if value.is_integer() and "." not in text and "e" not in text.lower() else value
    if kind == "boolean":
        if text not in ("true", "false"):
            raise BodyRejected("wrong_type", _POLICY)
        return text == "true"
    return text


def form_object(form: Form, kinds: Mapping[str, str]) -> dict[str, Any]:
    """The form's fields as an object for the route's schema; ``kinds`` by part name."""
    obj: dict[str, Any] = {}
    for name, text in form.fields:
        value = _typed(text, kinds[name])
        if name.endswith("[]"):
            obj.setdefault(name[:-2], []).append(value)
        else:
            obj[name] = value
    return obj


def _text(value: Any) -> str:
    if value is True or value is False:
        return "true" if value else "false"
    if type(value) is float:
        return repr(value)
    return str(value)


def form_body(obj: Mapping[str, Any], form: Form, file_field: str) -> tuple[bytes, str]:
    """(the gate's own multipart body, its Content-Type), from the checked object and the file."""
    parts: list[tuple[str, str]] = []
    for name, value in obj.items():
        if type(value) is list:
            parts.extend((f"{name}[]", _text(item)) for item in value)
        elif value is not None:
            parts.append((name, _text(value)))
    for _ in range(_BOUNDARY_DRAWS):
        boundary = new_boundary()
        try:
            return build_form(parts, file_field, form.file, boundary), FORM_MEDIA + boundary
        except ValueError:
            continue
    raise BodyRejected("bad_boundary", 400)
