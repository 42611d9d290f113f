"""Strict JSON request bodies and the route policy that checks them.

Two halves, both run per request by the gate (the security boundary) and by the
appliance (for friendly early errors):

* :func:`parse_json` turns bytes into a JSON object and accepts only strict,
  unambiguous JSON: UTF-8 without a byte order mark, no trailing bytes, no
  duplicate keys, no NaN or infinities, no numbers beyond what any API field
  means, no lone surrogates, bounded nesting.
* :func:`load_routes` reads ``routes.toml`` (the route policy as data),
  validates the policy itself once, and compiles every route's schema into
  checker closures, so a request is checked without looking at the TOML again.
  :meth:`Route.check` parses, checks and re-serializes a body into a
  :class:`CheckedBody`: the backend only ever sees the gate's own bytes.

Every rejection raises :class:`~policy.errors.BodyRejected` with a short fixed
code and never the offending input: 400 for bodies that are not acceptable
JSON, 413 for bodies over the route's limit, 422 for JSON that breaks the
route's policy.  Codes:

================================= ====== ============================================
code                              status meaning
================================= ====== ============================================
``body_too_large``                413    more bytes than the route allows
``byte_order_mark``               400    starts with a UTF-8 byte order mark
``bad_encoding``                  400    not valid UTF-8
``invalid_json``                  400    not JSON (syntax)
``trailing_data``                 400    bytes after the JSON value
``duplicate_key``                 400    an object names a key twice
``bad_number``                    400    NaN, infinity, overflow, too many digits
``bad_string``                    400    a lone surrogate (``"\\ud800"``)
``too_deep``                      400    nesting deeper than the parser's bound
``not_object``                    400    the top level is not an object
``unknown_field``                 422    a field the policy does not list
``missing_field``                 422    a required field is absent
``wrong_type``                    422    a value of the wrong JSON type
``out_of_range``                  422    a number outside its range
``too_long``                      422    a string, array or map over its bound
``too_short``                     422    a string or array under its bound
``bad_value``                     422    a string outside its enum, prefix, pattern
``too_deep``                      422    a free-form document nested too deep
``stream_not_allowed``            422    ``"stream": true`` on a route without it
``stream_options_without_stream`` 422    ``stream_options`` without streaming
================================= ====== ============================================
"""

from __future__ import annotations

import json
import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, NoReturn

from .errors import BodyRejected, Disallowed

__all__ = [
    "MAX_JSON_DEPTH",
    "MAX_INT_DIGITS",
    "MAX_NUMBER_CHARS",
    "MAX_ROUTE_BODY_BYTES",
    "MAX_MODEL_CHARS",
    "DEFAULT_ROUTES_PATH",
    "CheckedBody",
    "Route",
    "RouteTable",
    "parse_json",
    "load_routes",
]

# ---------------------------------------------------------------------------
# Limits
# ---------------------------------------------------------------------------

# The deepest nesting parse_json accepts by default, and the most any route's
# max_depth may allow.  Real API bodies nest under 30 levels (a tool's JSON
# Schema is the deepest part); the C scanner recurses once per level and stops
# at Python's recursion limit anyway (RecursionError, caught as too_deep).
MAX_JSON_DEPTH: Final = 64

# The most digits an integer literal may have.  20 digits hold every signed
# and unsigned 64-bit value (seeds, token ids); more means nothing in any API
# field, and int() on long digit strings costs quadratic time.
MAX_INT_DIGITS: Final = 20

# The longest float literal: the shortest repr of any double is at most 24
# characters, so 64 leaves room for clients that print more digits.
MAX_NUMBER_CHARS: Final = 64

# The ceiling on any route's max_body_bytes, and so on any string or array
# bound in the policy: the same 8 MiB as the gate grammar's MAX_BODY_BYTES,
# which bounds the declared length of every body.
MAX_ROUTE_BODY_BYTES: Final = 8 * 1024 * 1024

# The longest model name: request.abnf's `model-name` is 1 to 128 characters,
# and the body's model must be comparable with the one in the `call` line.
MAX_MODEL_CHARS: Final = 128

# The route policy that ships beside this module.
DEFAULT_ROUTES_PATH: Final = Path(__file__).with_name("routes.toml")

# Route ids as request.abnf spells them (lowercase words), and backend paths:
# absolute, under /v1, plain segments (no dots, no query, no escapes).
_ROUTE_ID_RE: Final = re.compile(r"[a-z][a-z0-9_]{0,31}", re.ASCII)
_BACKEND_PATH_RE: Final = re.compile(r"/v1(?:/[a-z0-9_\-]{1,64}){1,8}", re.ASCII)
_METHODS: Final = frozenset({"POST"})

# HTTP status hints of BodyRejected, by whose policy was broken.
_NOT_JSON: Final = 400
_TOO_LARGE: Final = 413
_POLICY: Final = 422

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
_ENCODER: Final = json.JSONEncoder(
    ensure_ascii=False, separators=(",", ":"), allow_nan=False, check_circular=False
)


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
    if _WHITESPACE.match(text, end).end() != len(text):  # type: ignore[union-attr]
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


# ---------------------------------------------------------------------------
# The schema compiler
# ---------------------------------------------------------------------------

_Check = Callable[[Any], None]
_NONE: Final = type(None)
_ALL_KINDS: Final[frozenset[type]] = frozenset({str, int, float, bool, _NONE, list, dict})
_INT_ONLY: Final = frozenset({int})
_STR_ONLY: Final = frozenset({str})

# Schema keywords per type: (required, optional).
_KEYWORDS: Final[Mapping[str, tuple[frozenset[str], frozenset[str]]]] = {
    "string": (
        frozenset({"max_length"}),
        frozenset({"min_length", "enum", "prefix", "pattern", "nullable"}),
    ),
    "integer": (frozenset({"min", "max"}), frozenset({"nullable"})),
    "number": (frozenset({"min", "max"}), frozenset({"nullable"})),
    "boolean": (frozenset(), frozenset({"nullable"})),
    "null": (frozenset(), frozenset()),
    "array": (frozenset({"items", "max_items"}), frozenset({"min_items", "nullable"})),
    "object": (frozenset({"fields"}), frozenset({"required", "nullable"})),
    "map": (frozenset({"keys", "values", "max_fields"}), frozenset({"nullable"})),
    "json": (frozenset({"max_length", "max_items", "max_key_length"}), frozenset({"max_depth"})),
}
_REF_KEYWORDS: Final = frozenset({"ref", "nullable"})
_UNION_KEYWORDS: Final = frozenset({"one_of", "discriminator", "nullable"})
_ROUTE_KEYS: Final = frozenset(
    {"path", "method", "max_body_bytes", "stream", "max_depth", "fields", "required"}
)


def _noop(_value: Any) -> None:
    """The check of a value already known to be acceptable (null in a nullable union)."""


@dataclass(frozen=True, slots=True)
class _Node:
    """A compiled schema node: its check and what the compiler needs to know of it."""

    check: _Check
    kind: str  # the schema type after refs are resolved, or "one_of"
    kinds: frozenset[type]  # the Python types of the JSON values it may accept
    children: Mapping[str, _Node] = field(default_factory=dict)  # objects: field -> node
    item: _Node | None = None  # arrays: the items' node
    enum: frozenset[str] | None = None  # strings: the allowed values
    required: tuple[str, ...] = ()  # objects: the required fields
    nullable: bool = False
    max_length: int | None = None  # strings
    # Plain integers or strings (no enum, pattern, null): ("int" | "str", low, high),
    # so that arrays of them can be checked by builtins.
    fast: tuple[str, Any, Any] | None = None


def _fail(where: str, problem: str) -> NoReturn:
    raise ValueError(f"{where}: {problem}")


def _wrong_type() -> BodyRejected:
    return BodyRejected("wrong_type", _POLICY)


class _Compiler:
    """Validates schema nodes of one policy file and compiles them into checks."""

    def __init__(self, types: Mapping[str, Any], source: str) -> None:
        self._types = types
        self._source = source
        self._memo: dict[tuple[str, int, int, bool | None], _Node] = {}
        self._resolving: list[str] = []

    # -- keyword readers ------------------------------------------------------

    def _where(self, where: str) -> str:
        return f"{self._source}: {where}"

    def fail(self, where: str, problem: str) -> NoReturn:
        _fail(self._where(where), problem)

    def _count(self, spec: Mapping[str, Any], key: str, where: str, *, low: int = 0) -> int:
        value = spec[key]
        if type(value) is not int or not low <= value <= MAX_ROUTE_BODY_BYTES:
            self.fail(f"{where}.{key}", f"must be an integer from {low} to {MAX_ROUTE_BODY_BYTES}")
        return value

    def _optional_count(self, spec: Mapping[str, Any], key: str, where: str, default: int) -> int:
        return self._count(spec, key, where) if key in spec else default

    def _bool(self, spec: Mapping[str, Any], key: str, where: str) -> bool:
        value = spec.get(key, False)
        if type(value) is not bool:
            self.fail(f"{where}.{key}", "must be true or false")
        return value

    def _strings(self, spec: Mapping[str, Any], key: str, where: str) -> list[str]:
        value = spec[key]
        if (
            type(value) is not list
            or not value
            or any(type(v) is not str for v in value)
            or len(set(value)) != len(value)
        ):
            self.fail(f"{where}.{key}", "must be a non-empty list of distinct strings")
        return value

    def _keywords(self, spec: Mapping[str, Any], where: str, kind: str) -> None:
        required, optional = _KEYWORDS[kind]
        for key in spec:
            if key != "type" and key not in required and key not in optional:
                self.fail(f"{where}.{key}", f"unknown schema keyword for type {kind!r}")
        for key in sorted(required):
            if key not in spec:
                self.fail(f"{where}.{key}", f"required for type {kind!r}")

    # -- nodes ----------------------------------------------------------------

    def compile(self, spec: Any, where: str, depth: int, max_depth: int) -> _Node:
        """Compile the schema ``spec`` for a value at nesting ``depth`` (body = 1)."""
        if not isinstance(spec, dict):
            self.fail(where, "a schema must be a table")
        if "ref" in spec:
            return self._ref(spec, where, depth, max_depth)
        if "one_of" in spec:
            return self._union(spec, where, depth, max_depth)
        kind = spec.get("type")
        if type(kind) is not str or kind not in _KEYWORDS:
            self.fail(f"{where}.type", f"must be one of {sorted(_KEYWORDS)} (or use ref / one_of)")
        self._keywords(spec, where, kind)
        nullable = self._bool(spec, "nullable", where)
        if kind in ("array", "object", "map") and depth > max_depth:
            self.fail(where, f"nests deeper than max_depth {max_depth}")
        build: Callable[..., _Node] = getattr(self, f"_{kind}")
        return build(spec, where, depth, max_depth, nullable)

    def _ref(self, spec: Mapping[str, Any], where: str, depth: int, max_depth: int) -> _Node:
        for key in spec:
            if key not in _REF_KEYWORDS:
                self.fail(f"{where}.{key}", "unknown schema keyword beside ref")
        name = spec["ref"]
        if type(name) is not str or name not in self._types:
            self.fail(f"{where}.ref", "names no [types] entry")
        nullable: bool | None = None
        if "nullable" in spec:
            nullable = self._bool(spec, "nullable", where)
        memo_key = (name, depth, max_depth, nullable)
        node = self._memo.get(memo_key)
        if node is not None:
            return node
        if name in self._resolving:
            self.fail(f"{where}.ref", f"refs loop through {name!r}")
        target = self._types[name]
        if nullable is not None:
            if not isinstance(target, dict) or target.get("type") in ("null", "json"):
                self.fail(f"{where}.nullable", "not allowed on this type")
            target = {**target, "nullable": nullable}
        self._resolving.append(name)
        try:
            node = self.compile(target, f"types.{name}", depth, max_depth)
        finally:
            self._resolving.pop()
        self._memo[memo_key] = node
        return node

    def _string(
        self, spec: Mapping[str, Any], where: str, depth: int, max_depth: int, nullable: bool
    ) -> _Node:
        hi = self._count(spec, "max_length", where)
        lo = self._optional_count(spec, "min_length", where, 0)
        if lo > hi:
            self.fail(f"{where}.min_length", "is above max_length")
        enum: frozenset[str] | None = None
        if "enum" in spec:
            values = self._strings(spec, "enum", where)
            if any(not lo <= len(v) <= hi for v in values):
                self.fail(f"{where}.enum", "holds a value outside min_length..max_length")
            enum = frozenset(values)
        prefixes: tuple[str, ...] | None = None
        if "prefix" in spec:
            prefixes = tuple(self._strings(spec, "prefix", where))
            if any(not p for p in prefixes):
                self.fail(f"{where}.prefix", "holds an empty prefix")
        match: Callable[[str], object] | None = None
        if "pattern" in spec:
            pattern = spec["pattern"]
            if type(pattern) is not str or not pattern:
                self.fail(f"{where}.pattern", "must be a non-empty string")
            try:
                match = re.compile(pattern, re.ASCII).fullmatch
            except re.error:
                self.fail(f"{where}.pattern", "is not a valid regular expression")

        def check(value: Any) -> None:
            if type(value) is not str:
                if value is None and nullable:
                    return
                raise _wrong_type()
            n = len(value)
            if n > hi:
                raise BodyRejected("too_long", _POLICY)
            if n < lo:
                raise BodyRejected("too_short", _POLICY)
            if enum is not None and value not in enum:
                raise BodyRejected("bad_value", _POLICY)
            if prefixes is not None and not value.startswith(prefixes):
                raise BodyRejected("bad_value", _POLICY)
            if match is not None and match(value) is None:
                raise BodyRejected("bad_value", _POLICY)

        plain = enum is None and prefixes is None and match is None and not nullable
        return _Node(
            check,
            "string",
            _kinds(_STR_ONLY, nullable),
            enum=enum,
            nullable=nullable,
            max_length=hi,
            fast=("str", lo, hi) if plain else None,
        )

    def _bounds(self, spec: Mapping[str, Any], where: str, integer: bool) -> tuple[float, float]:
        bounds = []
        for key in ("min", "max"):
            value = spec[key]
            ok = type(value) is int or (
                not integer and type(value) is float and math.isfinite(value)
            )
            if not ok:
                wanted = "an integer" if integer else "a finite number"
                self.fail(f"{where}.{key}", f"must be {wanted}")
            bounds.append(value)
        if bounds[0] > bounds[1]:
            self.fail(f"{where}.min", "is above max")
        return bounds[0], bounds[1]

    def _integer(
        self, spec: Mapping[str, Any], where: str, depth: int, max_depth: int, nullable: bool
    ) -> _Node:
        lo, hi = self._bounds(spec, where, integer=True)

        def check(value: Any) -> None:
            if type(value) is not int:
                if value is None and nullable:
                    return
                raise _wrong_type()
            if value < lo or value > hi:
                raise BodyRejected("out_of_range", _POLICY)

        return _Node(
            check,
            "integer",
            _kinds(_INT_ONLY, nullable),
            nullable=nullable,
            fast=None if nullable else ("int", lo, hi),
        )

    def _number(
        self, spec: Mapping[str, Any], where: str, depth: int, max_depth: int, nullable: bool
    ) -> _Node:
        lo, hi = self._bounds(spec, where, integer=False)

        def check(value: Any) -> None:
            t = type(value)
            if t is not float and t is not int:
                if value is None and nullable:
                    return
                raise _wrong_type()
            if value < lo or value > hi:
                raise BodyRejected("out_of_range", _POLICY)

        return _Node(check, "number", _kinds(frozenset({int, float}), nullable), nullable=nullable)

    def _boolean(
        self, spec: Mapping[str, Any], where: str, depth: int, max_depth: int, nullable: bool
    ) -> _Node:
        def check(value: Any) -> None:
            if type(value) is not bool and not (value is None and nullable):
                raise _wrong_type()

        return _Node(check, "boolean", _kinds(frozenset({bool}), nullable), nullable=nullable)

    def _null(
        self, spec: Mapping[str, Any], where: str, depth: int, max_depth: int, nullable: bool
    ) -> _Node:
        def check(value: Any) -> None:
            if value is not None:
                raise _wrong_type()

        return _Node(check, "null", frozenset({_NONE}), nullable=True)

    def _array(
        self, spec: Mapping[str, Any], where: str, depth: int, max_depth: int, nullable: bool
    ) -> _Node:
        hi = self._count(spec, "max_items", where)
        lo = self._optional_count(spec, "min_items", where, 0)
        if lo > hi:
            self.fail(f"{where}.min_items", "is above max_items")
        item = self.compile(spec["items"], f"{where}.items", depth + 1, max_depth)
        check_item = item.check
        fast = item.fast

        if fast is not None:
            # Arrays of plain integers (token ids) or plain strings: type and
            # bounds checked by builtins at C speed, not one call per item.
            integers = fast[0] == "int"
            only = _INT_ONLY if integers else _STR_ONLY
            item_lo, item_hi = fast[1], fast[2]
            over_code = "out_of_range" if integers else "too_long"
            under_code = "out_of_range" if integers else "too_short"

            def check(value: Any) -> None:
                if type(value) is not list:
                    if value is None and nullable:
                        return
                    raise _wrong_type()
                n = len(value)
                if n > hi:
                    raise BodyRejected("too_long", _POLICY)
                if n < lo:
                    raise BodyRejected("too_short", _POLICY)
                if not n:
                    return
                if not only.issuperset(map(type, value)):
                    raise _wrong_type()
                sizes = value if integers else list(map(len, value))
                if max(sizes) > item_hi:
                    raise BodyRejected(over_code, _POLICY)
                if min(sizes) < item_lo:
                    raise BodyRejected(under_code, _POLICY)

        else:

            def check(value: Any) -> None:
                if type(value) is not list:
                    if value is None and nullable:
                        return
                    raise _wrong_type()
                n = len(value)
                if n > hi:
                    raise BodyRejected("too_long", _POLICY)
                if n < lo:
                    raise BodyRejected("too_short", _POLICY)
                for x in value:
                    check_item(x)

        kinds = _kinds(frozenset({list}), nullable)
        return _Node(check, "array", kinds, item=item, nullable=nullable)

    def _object(
        self, spec: Mapping[str, Any], where: str, depth: int, max_depth: int, nullable: bool
    ) -> _Node:
        fields = spec["fields"]
        if not isinstance(fields, dict) or not fields:
            self.fail(f"{where}.fields", "must be a non-empty table of field schemas")
        children = {
            name: self.compile(sub, f"{where}.fields.{name}", depth + 1, max_depth)
            for name, sub in fields.items()
        }
        required: tuple[str, ...] = ()
        if "required" in spec:
            required = tuple(self._strings(spec, "required", where))
            for name in required:
                if name not in children:
                    self.fail(f"{where}.required", f"names {name!r}, which is not in fields")
        checks = {name: node.check for name, node in children.items()}
        get = checks.get

        def check(value: Any) -> None:
            if type(value) is not dict:
                if value is None and nullable:
                    return
                raise _wrong_type()
            for name in required:
                if name not in value:
                    raise BodyRejected("missing_field", _POLICY)
            for name, x in value.items():
                check_field = get(name)
                if check_field is None:
                    raise BodyRejected("unknown_field", _POLICY)
                check_field(x)

        return _Node(
            check,
            "object",
            _kinds(frozenset({dict}), nullable),
            children=MappingProxyType(children),
            required=required,
            nullable=nullable,
        )

    def _map(
        self, spec: Mapping[str, Any], where: str, depth: int, max_depth: int, nullable: bool
    ) -> _Node:
        most = self._count(spec, "max_fields", where, low=1)
        keys = self.compile(spec["keys"], f"{where}.keys", depth + 1, max_depth)
        if keys.kind != "string" or keys.nullable:
            self.fail(f"{where}.keys", "must be a string schema that is not nullable")
        values = self.compile(spec["values"], f"{where}.values", depth + 1, max_depth)
        check_key, check_value = keys.check, values.check

        def check(value: Any) -> None:
            if type(value) is not dict:
                if value is None and nullable:
                    return
                raise _wrong_type()
            if len(value) > most:
                raise BodyRejected("too_long", _POLICY)
            for k, x in value.items():
                check_key(k)
                check_value(x)

        return _Node(check, "map", _kinds(frozenset({dict}), nullable), nullable=nullable)

    def _json(
        self, spec: Mapping[str, Any], where: str, depth: int, max_depth: int, nullable: bool
    ) -> _Node:
        max_len = self._count(spec, "max_length", where)
        max_items = self._count(spec, "max_items", where)
        max_key = self._count(spec, "max_key_length", where, low=1)
        levels = max_depth - depth + 1
        if "max_depth" in spec:
            own = spec["max_depth"]
            if type(own) is not int or not 1 <= own <= MAX_JSON_DEPTH:
                self.fail(f"{where}.max_depth", f"must be an integer from 1 to {MAX_JSON_DEPTH}")
            levels = min(levels, own)
        if levels < 1:
            self.fail(where, f"nests deeper than max_depth {max_depth}")
        last = depth + levels - 1  # the deepest level an array or object may sit at

        def walk(value: Any, at: int) -> None:
            t = type(value)
            if t is str:
                if len(value) > max_len:
                    raise BodyRejected("too_long", _POLICY)
            elif t is dict:
                if at > last:
                    raise BodyRejected("too_deep", _POLICY)
                if len(value) > max_items:
                    raise BodyRejected("too_long", _POLICY)
                for k, x in value.items():
                    if len(k) > max_key:
                        raise BodyRejected("too_long", _POLICY)
                    walk(x, at + 1)
            elif t is list:
                if at > last:
                    raise BodyRejected("too_deep", _POLICY)
                if len(value) > max_items:
                    raise BodyRejected("too_long", _POLICY)
                for x in value:
                    walk(x, at + 1)
            # Numbers, booleans and null are bounded by the parser.

        def check(value: Any) -> None:
            walk(value, depth)

        return _Node(check, "json", _ALL_KINDS, nullable=True)

    def _union(self, spec: Mapping[str, Any], where: str, depth: int, max_depth: int) -> _Node:
        for key in spec:
            if key not in _UNION_KEYWORDS:
                self.fail(f"{where}.{key}", "unknown schema keyword beside one_of")
        options = spec["one_of"]
        if type(options) is not list or len(options) < 2:
            self.fail(f"{where}.one_of", "must list at least two schemas")
        nullable = self._bool(spec, "nullable", where)
        discriminator = spec.get("discriminator")
        if discriminator is not None and type(discriminator) is not str:
            self.fail(f"{where}.discriminator", "must be a field name")
        alts = [
            self.compile(sub, f"{where}.one_of[{i}]", depth, max_depth)
            for i, sub in enumerate(options)
        ]
        by_kind: dict[type, list[_Node]] = {}
        for alt in alts:
            for kind in alt.kinds:
                by_kind.setdefault(kind, []).append(alt)
        dispatch: dict[type, _Check] = {}
        for kind, group in by_kind.items():
            if len(group) == 1 or kind is _NONE:
                dispatch[kind] = group[0].check if kind is not _NONE else _noop
            elif kind is dict:
                dispatch[kind] = self._by_tag(group, discriminator, where)
            elif kind is list:
                dispatch[kind] = self._by_first_item(group, where)
            else:
                self.fail(f"{where}.one_of", f"several alternatives accept JSON {kind.__name__}")
        if discriminator is not None and len(by_kind.get(dict, ())) < 2:
            self.fail(f"{where}.discriminator", "needs several object alternatives")
        if nullable:
            dispatch[_NONE] = _noop
        get = dispatch.get

        def check(value: Any) -> None:
            check_alt = get(type(value))
            if check_alt is None:
                raise _wrong_type()
            check_alt(value)

        return _Node(check, "one_of", frozenset(dispatch), nullable=_NONE in dispatch)

    def _by_tag(self, group: list[_Node], discriminator: str | None, where: str) -> _Check:
        """Object alternatives told apart by the enum of a required field."""
        if discriminator is None:
            self.fail(f"{where}.discriminator", "required: several alternatives are objects")
        by_tag: dict[str, _Check] = {}
        for alt in group:
            tag = alt.children.get(discriminator)
            if alt.kind != "object" or tag is None or tag.enum is None or tag.nullable:
                self.fail(
                    f"{where}.discriminator",
                    f"every object alternative needs {discriminator!r} as a field with an enum",
                )
            if discriminator not in alt.required:
                self.fail(f"{where}.discriminator", f"{discriminator!r} must be required")
            for value in tag.enum:
                if value in by_tag:
                    self.fail(f"{where}.discriminator", f"two alternatives claim {value!r}")
                by_tag[value] = alt.check
        get = by_tag.get

        def check(value: dict[str, Any]) -> None:
            tag = value.get(discriminator)
            check_alt = get(tag) if type(tag) is str else None
            if check_alt is None:
                if discriminator not in value:
                    raise BodyRejected("missing_field", _POLICY)
                if type(tag) is not str:
                    raise _wrong_type()
                raise BodyRejected("bad_value", _POLICY)
            check_alt(value)

        return check

    def _by_first_item(self, group: list[_Node], where: str) -> _Check:
        """Array alternatives told apart by the JSON type of their first item."""
        by_item: dict[type, _Check] = {}
        for alt in group:
            if alt.kind != "array" or alt.item is None:
                self.fail(f"{where}.one_of", "array alternatives must be plain arrays")
            for kind in alt.item.kinds:
                if kind in by_item:
                    self.fail(
                        f"{where}.one_of",
                        "array alternatives must differ in the JSON type of their items",
                    )
                by_item[kind] = alt.check
        empty = group[0].check
        get = by_item.get

        def check(value: list[Any]) -> None:
            if not value:
                empty(value)
                return
            check_alt = get(type(value[0]))
            if check_alt is None:
                raise _wrong_type()
            check_alt(value)

        return check


def _kinds(kinds: frozenset[type], nullable: bool) -> frozenset[type]:
    """The Python types a node accepts, with None when it is nullable."""
    return kinds | {_NONE} if nullable else kinds


# ---------------------------------------------------------------------------
# Routes
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CheckedBody:
    """A body that passed its route's policy, and what the gate needs from it.

    ``body`` is the gate's own compact re-serialization, never the client's
    bytes.  It holds the prompt, so it stays out of ``repr`` (and logs).
    """

    model: str
    stream: bool
    # Whether the client asked for the final usage chunk of a stream
    # (stream_options.include_usage); the forwarded body may force it on.
    include_usage: bool
    # max_completion_tokens, else max_tokens; None when the client set neither.
    max_tokens: int | None
    body: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class Route:
    """One route of the policy: where it goes and the compiled check of its bodies."""

    id: str
    path: str
    method: str
    max_body_bytes: int
    stream_allowed: bool
    max_depth: int
    _check: _Check = field(repr=False, compare=False)

    def check(self, data: bytes, *, force_usage: bool = False) -> CheckedBody:
        """Parse ``data`` as strict JSON, check it against this route, re-serialize it.

        With ``force_usage``, a streamed request's forwarded body has
        ``stream_options.include_usage`` set to true (the gate meters every
        stream); :attr:`CheckedBody.include_usage` still says what the client
        asked for, so the gate knows whether to pass the usage chunk on.

        Raises :class:`~policy.errors.BodyRejected` (codes in the module doc).
        """
        obj = _decode(_as_bytes(data), self.max_body_bytes)
        if not self.stream_allowed and obj.get("stream") is True:
            raise BodyRejected("stream_not_allowed", _POLICY)
        # The compiled schema bounds the depth: it only descends into the
        # structure it names, and free-form ("json") nodes count their levels.
        self._check(obj)
        stream = obj.get("stream") is True
        options = obj.get("stream_options")
        if options is not None and not stream:
            raise BodyRejected("stream_options_without_stream", _POLICY)
        include_usage = options is not None and options.get("include_usage") is True
        limit = obj.get("max_completion_tokens")
        if limit is None:
            limit = obj.get("max_tokens")
        if force_usage and stream and not include_usage:
            obj = {**obj, "stream_options": {**(options or {}), "include_usage": True}}
        # Serializing also refuses lone surrogates (they cannot be UTF-8).
        return CheckedBody(obj["model"], stream, include_usage, limit, _serialize(obj))

    def serialize(self, obj: Mapping[str, Any]) -> bytes:
        """The compact encoding of ``obj``, checked against this route as if it came in.

        For bodies built in code (the appliance's own requests): the result is
        exactly what :meth:`check` would forward.  Raises
        :class:`~policy.errors.BodyRejected`; a value JSON cannot hold at all
        (a set, bytes) is a programming error and raises ``TypeError``.
        """
        failure = None
        try:
            data = _ENCODER.encode(obj).encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate (a ValueError too: test it first)
            failure = "bad_string"
        except ValueError:  # NaN or an infinity
            failure = "bad_number"
        if failure is not None:
            raise BodyRejected(failure, _NOT_JSON)
        return self.check(data).body


@dataclass(frozen=True, slots=True, eq=False)
class RouteTable:
    """The routes of one policy file, by id."""

    routes: Mapping[str, Route]

    def get(self, route_id: str) -> Route:
        """The route ``route_id``; an unknown id raises ``Disallowed("unknown_route")``."""
        route = self.routes.get(route_id) if type(route_id) is str else None
        if route is None:
            raise Disallowed("unknown_route")
        return route

    @property
    def ids(self) -> tuple[str, ...]:
        """The route ids, in the order the policy file lists them."""
        return tuple(self.routes)


def load_routes(path: str | os.PathLike[str] | None = None) -> RouteTable:
    """Read, validate and compile a route policy (default: ``routes.toml`` beside this module).

    The policy is checked whole before anything uses it: unknown keys and
    schema keywords, missing or inconsistent bounds, unresolvable or looping
    refs and ambiguous unions raise ``ValueError`` naming the key.
    """
    source = Path(path) if path is not None else DEFAULT_ROUTES_PATH
    with open(source, "rb") as f:
        try:
            doc = tomllib.load(f)
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"{source.name}: not valid TOML: {exc}") from None
    name = source.name
    for key in doc:
        if key not in ("types", "routes"):
            _fail(f"{name}: {key}", "unknown top-level key (expected types, routes)")
    types = doc.get("types", {})
    if not isinstance(types, dict):
        _fail(f"{name}: types", "must be a table of named schemas")
    routes = doc.get("routes")
    if not isinstance(routes, dict) or not routes:
        _fail(f"{name}: routes", "must be a non-empty table of routes")
    compiler = _Compiler(types, name)
    # Every named type is validated, used or not, at the shallowest depth.
    for type_name in types:
        compiler.compile({"ref": type_name}, f"types.{type_name}", 1, MAX_JSON_DEPTH)
    table = {route_id: _route(compiler, route_id, spec) for route_id, spec in routes.items()}
    return RouteTable(MappingProxyType(table))


def _route(compiler: _Compiler, route_id: str, spec: Any) -> Route:
    """Validate one [routes.<id>] table and compile its body schema."""
    where = f"routes.{route_id}"
    fail = compiler.fail
    if _ROUTE_ID_RE.fullmatch(route_id) is None:
        fail(where, "a route id is 1 to 32 lowercase letters, digits or _, starting with a letter")
    if not isinstance(spec, dict):
        fail(where, "must be a table")
    for key in spec:
        if key not in _ROUTE_KEYS:
            fail(f"{where}.{key}", "unknown route key")
    for key in sorted(_ROUTE_KEYS):
        if key not in spec:
            fail(f"{where}.{key}", "required")
    path = spec["path"]
    if type(path) is not str or _BACKEND_PATH_RE.fullmatch(path) is None:
        fail(f"{where}.path", "must be an absolute /v1/... path of plain segments")
    method = spec["method"]
    if method not in _METHODS:
        fail(f"{where}.method", f"must be one of {sorted(_METHODS)}")
    max_body = spec["max_body_bytes"]
    if type(max_body) is not int or not 1 <= max_body <= MAX_ROUTE_BODY_BYTES:
        fail(f"{where}.max_body_bytes", f"must be an integer from 1 to {MAX_ROUTE_BODY_BYTES}")
    stream = spec["stream"]
    if type(stream) is not bool:
        fail(f"{where}.stream", "must be true or false")
    max_depth = spec["max_depth"]
    if type(max_depth) is not int or not 1 <= max_depth <= MAX_JSON_DEPTH:
        fail(f"{where}.max_depth", f"must be an integer from 1 to {MAX_JSON_DEPTH}")
    body = compiler.compile(
        {"type": "object", "fields": spec["fields"], "required": spec["required"]},
        where,
        1,
        max_depth,
    )
    fields = body.children
    model = fields.get("model")
    if model is None or "model" not in body.required:
        fail(f"{where}.required", "every route requires the field 'model'")
    if model.kind != "string" or model.nullable:
        fail(f"{where}.fields.model", "must be a string that is not nullable")
    if model.max_length is None or model.max_length > MAX_MODEL_CHARS:
        fail(f"{where}.fields.model", f"max_length must be at most {MAX_MODEL_CHARS}")
    if stream:
        flag, options = fields.get("stream"), fields.get("stream_options")
        if flag is None or flag.kind != "boolean":
            fail(f"{where}.fields.stream", "a streaming route needs a boolean 'stream' field")
        usage = options.children.get("include_usage") if options is not None else None
        if options is None or options.kind != "object" or usage is None or usage.kind != "boolean":
            fail(
                f"{where}.fields.stream_options",
                "a streaming route needs an object with a boolean 'include_usage'",
            )
    else:
        for key in ("stream", "stream_options"):
            if key in fields:
                fail(f"{where}.fields.{key}", "listed on a route with stream = false")
    for key in ("max_tokens", "max_completion_tokens"):
        limit = fields.get(key)
        if limit is not None and limit.kind != "integer":
            fail(f"{where}.fields.{key}", "must be an integer")
    return Route(
        id=route_id,
        path=path,
        method=method,
        max_body_bytes=max_body,
        stream_allowed=stream,
        max_depth=max_depth,
        _check=body.check,
    )
