"""Strict JSON for request bodies: one parse that accepts only unambiguous JSON.

UTF-8 without a byte order mark, no trailing bytes, no duplicate keys, no NaN
or infinities, no numbers beyond what any API field means, no lone
surrogates, bounded nesting.  Every rejection is a
:class:`~policy.errors.BodyRejected` with a short code (see policy/bodies.py).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any, Final, NoReturn

from ._limits import (
    _NOT_JSON,
    _TOO_LARGE,
    MAX_INT_DIGITS,
    MAX_JSON_DEPTH,
    MAX_NUMBER_CHARS,
)
from .errors import BodyRejected

_UTF8_BOM: Final = b"\xef\xbb\xbf"

# ---------------------------------------------------------------------------
# Strict JSON
# ---------------------------------------------------------------------------


def _object_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """Build an object, refusing a key named twice (parsers disagree on which wins)."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise BodyRejected("duplicate_key", _NOT_JSON)
    return obj


def _parse_int(text: str) -> int:
    """An integer literal of at most MAX_INT_DIGITS digits (plus a sign)."""
    if len(text) > MAX_INT_DIGITS and len(text) - text.startswith("-") > MAX_INT_DIGITS:
        raise BodyRejected("bad_number", _NOT_JSON)
    return int(text)


def _parse_float(text: str) -> float:
    """A float literal that is short and finite (1e400 would become inf)."""
    if len(text) > MAX_NUMBER_CHARS:
        raise BodyRejected("bad_number", _NOT_JSON)
    value = float(text)
    if math.isinf(value):
        raise BodyRejected("bad_number", _NOT_JSON)
    return value


def _parse_constant(_text: str) -> NoReturn:
    """NaN, Infinity and -Infinity are not JSON (RFC 8259), whatever Python allows."""
    raise BodyRejected("bad_number", _NOT_JSON)


_DECODER: Final = json.JSONDecoder(
    object_pairs_hook=_object_pairs,
    parse_int=_parse_int,
    parse_float=_parse_float,
    parse_constant=_parse_constant,
    strict=True,  # no raw control characters inside strings
)
# RFC 8259 whitespace; anything else after the value is trailing data.
_WHITESPACE: Final = re.compile(r"[ \t\n\r]*")
# The one serialization the gate forwards: compact, UTF-8, no NaN.
_ENCODER: Final = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False, check_circular=False)


def _as_bytes(data: bytes) -> bytes:
    """``data`` as bytes: bytearray and memoryview are copied, anything else is a TypeError."""
    return data if isinstance(data, bytes) else memoryview(data).tobytes()


def _decode(data: bytes, max_bytes: int) -> dict[str, Any]:
    """Parse strict JSON whose top level is an object.

    The checks that need a walk of the parsed value (lone surrogates, a depth
    bound tighter than the scanner's) are left to the caller:
    :func:`parse_json` walks, :meth:`Route.check` lets its compiled schema
    bound the depth and its serialization find surrogates.
    """
    if len(data) > max_bytes:
        raise BodyRejected("body_too_large", _TOO_LARGE)
    if data.startswith(_UTF8_BOM):
        raise BodyRejected("byte_order_mark", _NOT_JSON)
    # Errors are raised outside the except blocks: the caught exceptions hold
    # the whole body (UnicodeDecodeError.object, JSONDecodeError.doc) and must
    # not ride along as __context__ into logs.
    failure = None
    try:
        text = data.decode("utf-8")  # strict: no overlongs, no encoded surrogates
    except UnicodeDecodeError:
        failure = "bad_encoding"
    if failure is not None:
        raise BodyRejected(failure, _NOT_JSON)
    start = _WHITESPACE.match(text).end()  # type: ignore[union-attr]  # `*` always matches
    try:
        obj, end = _DECODER.raw_decode(text, start)
    except json.JSONDecodeError:
        failure = "invalid_json"
    except RecursionError:
        failure = "too_deep"
    if failure is not None:
        raise BodyRejected(failure, _NOT_JSON)
    if _WHITESPACE.match(text, end).end() != len(text):  # type: ignore[union-attr]  # `*` always matches
        raise BodyRejected("trailing_data", _NOT_JSON)
    if type(obj) is not dict:
        raise BodyRejected("not_object", _NOT_JSON)
    return obj


def _check_depth(obj: object, max_depth: int) -> None:
    """Refuse a value whose arrays and objects nest deeper than ``max_depth``."""
    stack: list[tuple[Any, int]] = [(obj, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > max_depth:
            raise BodyRejected("too_deep", _NOT_JSON)
        for child in value.values() if type(value) is dict else value:
            if type(child) is dict or type(child) is list:
                stack.append((child, depth + 1))


def _serialize(obj: Mapping[str, Any]) -> bytes:
    """The gate's compact encoding; a lone surrogate cannot be encoded as UTF-8."""
    try:
        return _ENCODER.encode(obj).encode("utf-8")
    except UnicodeEncodeError:
        pass  # raised below, without the error (it holds the text) as context
    raise BodyRejected("bad_string", _NOT_JSON)


def parse_json(data: bytes, max_bytes: int, *, max_depth: int = MAX_JSON_DEPTH) -> dict[str, Any]:
    """Parse a request body as strict JSON whose top level is an object.

    Raises :class:`~policy.errors.BodyRejected`: 413 ``body_too_large`` when
    ``data`` has more than ``max_bytes`` bytes (checked before anything else),
    400 with a distinct code for everything that is not strict JSON (see the
    module's table).
    """
    data = _as_bytes(data)
    obj = _decode(data, max_bytes)
    # Only bodies with more brackets than the bound can nest deeper than it.
    if data.count(b"[") + data.count(b"{") > max_depth:
        _check_depth(obj, max_depth)
    # A lone surrogate can only come from a \u escape (raw UTF-8 cannot hold one).
    if b"\\u" in data:
        _serialize(obj)
    return obj
