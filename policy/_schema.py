"""The route-policy schema compiler: TOML field specs in, checker closures out.

Validates the policy itself once (unknown keywords and bad bounds raise
ValueError naming the key), and compiles each spec into a closure that checks
one value and raises :class:`~policy.errors.BodyRejected`.  Nothing here runs
per request except the closures it returns.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final, NoReturn

from ._limits import _POLICY, MAX_JSON_DEPTH, MAX_ROUTE_BODY_BYTES
from .errors import BodyRejected

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
_ROUTE_KEYS: Final = frozenset({"path", "method", "max_body_bytes", "stream", "max_depth", "fields", "required"})


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
        if type(value) is not list or not value or any(type(v) is not str for v in value) or len(set(value)) != len(value):
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

    def _string(self, spec: Mapping[str, Any], where: str, depth: int, max_depth: int, nullable: bool) -> _Node:
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
            ok = type(value) is int or (not integer and type(value) is float and math.isfinite(value))
            if not ok:
                wanted = "an integer" if integer else "a finite number"
                self.fail(f"{where}.{key}", f"must be {wanted}")
            bounds.append(value)
        if bounds[0] > bounds[1]:
            self.fail(f"{where}.min", "is above max")
        return bounds[0], bounds[1]

    def _integer(self, spec: Mapping[str, Any], where: str, depth: int, max_depth: int, nullable: bool) -> _Node:
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

    def _number(self, spec: Mapping[str, Any], where: str, depth: int, max_depth: int, nullable: bool) -> _Node:
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

    def _boolean(self, spec: Mapping[str, Any], where: str, depth: int, max_depth: int, nullable: bool) -> _Node:
        def check(value: Any) -> None:
            if type(value) is not bool and not (value is None and nullable):
                raise _wrong_type()

        return _Node(check, "boolean", _kinds(frozenset({bool}), nullable), nullable=nullable)

    def _null(self, spec: Mapping[str, Any], where: str, depth: int, max_depth: int, nullable: bool) -> _Node:
        def check(value: Any) -> None:
            if value is not None:
                raise _wrong_type()

        return _Node(check, "null", frozenset({_NONE}), nullable=True)

    def _array(self, spec: Mapping[str, Any], where: str, depth: int, max_depth: int, nullable: bool) -> _Node:
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

    def _object(self, spec: Mapping[str, Any], where: str, depth: int, max_depth: int, nullable: bool) -> _Node:
        fields = spec["fields"]
        if not isinstance(fields, dict) or not fields:
            self.fail(f"{where}.fields", "must be a non-empty table of field schemas")
        children = {name: self.compile(sub, f"{where}.fields.{name}", depth + 1, max_depth) for name, sub in fields.items()}
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

    def _map(self, spec: Mapping[str, Any], where: str, depth: int, max_depth: int, nullable: bool) -> _Node:
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

    def _json(self, spec: Mapping[str, Any], where: str, depth: int, max_depth: int, nullable: bool) -> _Node:
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
        alts = [self.compile(sub, f"{where}.one_of[{i}]", depth, max_depth) for i, sub in enumerate(options)]
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
