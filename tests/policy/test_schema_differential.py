"""The route-policy schema compiler (`policy/_schema.py`) against `jsonschema`, an independent validator.

Each route of `policy/routes.toml` is translated into a JSON Schema (draft
2020-12) by a small, separate translator below; hypothesis generates bodies
from the TOML specs themselves (values at and just past every bound, wrong
types, unknown and missing fields) and both validators judge each body. They
must agree, with these documented exceptions made explicit rather than
skipped:

* JSON integers: ours refuses ``1.0`` where an integer is required; the
  reference is given the same rule (a type checker whose "integer" is a
  Python ``int``), since JSON Schema's own rule is "mathematically integral".
* ``json`` nodes (free-form documents a model reads, bounded in size and
  depth): not generated, since JSON Schema cannot state "every string at any
  depth"; their own tests are in `tests/policy/test_bodies.py`.
* Rules outside the schema (``stream`` on a route that does not stream,
  ``stream_options`` without ``stream``): decided by `bodies.py`, not by the
  compiler; bodies that trigger them are not compared.
"""

from __future__ import annotations

import json
import re
import tomllib
from typing import Any

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policy._responses import prepare_responses
from policy.bodies import DEFAULT_ROUTES_PATH, RESPONSES, load_routes
from policy.errors import BodyRejected

DOC = tomllib.loads(DEFAULT_ROUTES_PATH.read_text())
TYPES: dict[str, Any] = DOC.get("types", {})
ROUTES = load_routes()
# The JSON routes: a form route's fields come typed from its parts (tests/policy/test_multipart.py).
JSON_ROUTES = [r for r in ROUTES.ids if ROUTES.get(r).form is None]
OUTSIDE_THE_SCHEMA = {
    "stream_not_allowed",
    "stream_options_without_stream",
    # the Responses dialect's own rules (policy/_responses.py), before the schema
    "store_not_supported",
    "server_state_not_supported",
}
# Bounds above this are not probed at the boundary (a 4 MiB string per example is slow, not smarter).
PROBE_LIMIT = 300

Validator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator,
    type_checker=jsonschema.Draft202012Validator.TYPE_CHECKER.redefine("integer", lambda _checker, value: type(value) is int),
)


# -- the translator: TOML spec -> JSON Schema -------------------------------------------------


def _nullable(schema: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]} if spec.get("nullable") else schema


def to_json_schema(spec: dict[str, Any]) -> dict[str, Any]:
    if "ref" in spec:
        named = TYPES[spec["ref"]]
        inner = to_json_schema({k: v for k, v in named.items() if k != "nullable"})
        return _nullable(inner, {"nullable": spec.get("nullable", named.get("nullable", False))})
    if "one_of" in spec:
        return _nullable({"anyOf": [to_json_schema(alt) for alt in spec["one_of"]]}, spec)
    kind = spec["type"]
    schema: dict[str, Any]
    if kind == "string":
        schema = {"type": "string", "maxLength": spec["max_length"]}
        if "min_length" in spec:
            schema["minLength"] = spec["min_length"]
        if "enum" in spec:
            schema["enum"] = spec["enum"]
        parts = []
        if "pattern" in spec:
            parts.append({"pattern": "(?a)^(?:" + spec["pattern"] + r")\Z"})
        if "prefix" in spec:
            parts.append({"anyOf": [{"pattern": "^" + re.escape(p)} for p in spec["prefix"]]})
        if parts:
            schema["allOf"] = parts
    elif kind in ("integer", "number"):
        schema = {"type": kind, "minimum": spec["min"], "maximum": spec["max"]}
    elif kind in ("boolean", "null"):
        schema = {"type": kind}
    elif kind == "array":
        schema = {"type": "array", "items": to_json_schema(spec["items"]), "maxItems": spec["max_items"]}
        if "min_items" in spec:
            schema["minItems"] = spec["min_items"]
    elif kind == "object":
        schema = {
            "type": "object",
            "additionalProperties": False,
            "properties": {name: to_json_schema(field) for name, field in spec["fields"].items()},
            "required": list(spec.get("required", [])),
        }
    elif kind == "map":
        schema = {
            "type": "object",
            "propertyNames": to_json_schema(spec["keys"]),
            "additionalProperties": to_json_schema(spec["values"]),
            "maxProperties": spec["max_fields"],
        }
    elif kind == "json":
        schema = {}
    else:
        raise AssertionError(kind)
    return _nullable(schema, spec)


# -- the generator: TOML spec -> bodies with at most one defect ------------------------------
#
# A body is built from the spec; a budget allows at most one defect in it (a value just past a
# bound, a wrong type, a missing or unknown field), placed at a random node, so that every
# rejection is the work of one rule and boundaries are probed one at a time.

WRONG = [None, 0, -1, 1.5, "", "x", [], {}, True]


class _Budget:
    def __init__(self, defects: int) -> None:
        self.defects = defects

    def spend(self, draw: st.DrawFn) -> bool:
        """Place the defect here? (one in eight nodes, while the budget lasts)"""
        if self.defects and draw(st.integers(0, 7)) == 0:
            self.defects -= 1
            return True
        return False


def _resolve(spec: dict[str, Any]) -> dict[str, Any]:
    while "ref" in spec:
        named = dict(TYPES[spec["ref"]])
        if "nullable" in spec:
            named["nullable"] = spec["nullable"]
        spec = named
    return spec


def _string(draw: st.DrawFn, spec: dict[str, Any], defect: bool) -> str:
    high, low = spec["max_length"], spec.get("min_length", 0)
    if defect:
        if high <= PROBE_LIMIT and "pattern" not in spec and draw(st.booleans()):
            return "a" * (high + 1)  # just past the bound: the probe that matters most
        bad = [v + "x" for v in spec.get("enum", [])] + (["a" * (low - 1)] if low else [])
        if high <= PROBE_LIMIT:
            bad.append("a" * (high + 1))
        if "pattern" in spec or "prefix" in spec:
            bad += ["!", " x", "\n"]
        if bad:
            return draw(st.sampled_from(bad))
    if "enum" in spec:
        return draw(st.sampled_from(spec["enum"]))
    if "pattern" in spec:
        return draw(st.from_regex(re.compile(spec["pattern"], re.ASCII), fullmatch=True).filter(lambda v: len(v) <= high))
    if "prefix" in spec:
        return draw(st.sampled_from(spec["prefix"])) + draw(st.text(max_size=8))
    if high <= PROBE_LIMIT and draw(st.integers(0, 3)) == 0:
        return "a" * draw(st.sampled_from([max(low, 0), high]))  # both ends, inside
    return draw(st.text(min_size=low, max_size=min(high, 24)))


def build(draw: st.DrawFn, spec: dict[str, Any], budget: _Budget) -> Any:
    spec = _resolve(spec)
    if spec.get("nullable") and draw(st.integers(0, 5)) == 0:
        return None
    if "one_of" in spec:
        return build(draw, draw(st.sampled_from(spec["one_of"])), budget)
    kind = spec["type"]
    defect = kind not in ("object", "json") and budget.spend(draw)
    if defect and draw(st.booleans()):
        return draw(st.sampled_from(WRONG))
    if kind == "string":
        return _string(draw, spec, defect)
    if kind in ("integer", "number"):
        low, high = spec["min"], spec["max"]
        if defect:
            return draw(st.sampled_from([low - 1, high + 1] + ([float(low)] if kind == "integer" else [high + 0.5])))
        if kind == "integer" or draw(st.booleans()):
            return draw(st.sampled_from([low, high])) if draw(st.booleans()) else draw(st.integers(low, high))
        return draw(st.floats(low, high, allow_nan=False, allow_infinity=False))
    if kind == "boolean":
        return draw(st.booleans())
    if kind == "null":
        return None
    if kind == "array":
        high, low = spec["max_items"], spec.get("min_items", 0)
        if defect and high <= 4:
            size = high + 1
        elif defect and low:
            size = low - 1
        else:
            size = draw(st.integers(low, max(low, min(high, 3))))
        return [build(draw, spec["items"], budget) for _ in range(size)]
    if kind == "map":
        keys = _resolve(spec["keys"])
        count = draw(st.integers(0, min(spec["max_fields"], 2)))
        return {_string(draw, keys, False): build(draw, spec["values"], budget) for _ in range(count)}
    return build_object(draw, spec["fields"], spec.get("required", []), budget)


def build_object(draw: st.DrawFn, fields: dict[str, Any], required: list[str], budget: _Budget) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, spec in fields.items():
        if _resolve(spec).get("type") == "json":
            continue  # not generated (see the module docstring)
        if name in required:
            if budget.spend(draw):
                continue  # the defect: a missing required field
        elif draw(st.booleans()):
            continue
        out[name] = build(draw, spec, budget)
    if budget.spend(draw):
        out["zz_not_in_the_policy"] = 1
    return out


@st.composite
def bodies(draw: st.DrawFn, fields: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return build_object(draw, fields, required, _Budget(draw(st.integers(0, 1))))


# -- the differential -------------------------------------------------------------------------


def _ours(route_id: str, body: dict[str, Any]) -> str | None:
    """None if our policy accepts the body, else the rejection code."""
    try:
        ROUTES.get(route_id).check(json.dumps(body, ensure_ascii=False).encode("utf-8", "surrogatepass"))
    except BodyRejected as exc:
        return exc.code
    return None


def _as_checked(route_id: str, body: dict[str, Any]) -> dict[str, Any]:
    """The body the schema sees: a Responses body after its dialect's rewriting (message items typed)."""
    return prepare_responses(body) if ROUTES.get(route_id).dialect == RESPONSES else body


@pytest.mark.parametrize("route_id", JSON_ROUTES)
def test_schema_compiler_agrees_with_jsonschema(route_id: str) -> None:
    spec = DOC["routes"][route_id]
    reference = Validator(to_json_schema({"type": "object", "fields": spec["fields"], "required": spec["required"]}))

    @settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(body=bodies(spec["fields"], spec["required"]))
    def agree(body: dict[str, Any]) -> None:
        code = _ours(route_id, body)
        if code in OUTSIDE_THE_SCHEMA or code in ("bad_string", "too_deep", "body_too_large"):
            return  # not the schema's rule (see the module docstring); lone surrogates cannot be JSON at all
        errors = sorted(reference.iter_errors(_as_checked(route_id, body)), key=lambda e: list(e.path))
        assert (code is None) == (not errors), (code, [e.message[:200] for e in errors[:3]])

    agree()


def test_translator_sees_a_known_refusal() -> None:
    """The translated schema is not vacuous: it refuses what the policy refuses."""
    spec = DOC["routes"]["chat"]
    reference = Validator(to_json_schema({"type": "object", "fields": spec["fields"], "required": spec["required"]}))
    good = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    assert _ours("chat", good) is None and reference.is_valid(good)
    for bad in ({**good, "unknown": 1}, {"model": "m"}, {**good, "temperature": "hot"}, {**good, "n": 1.0}):
        assert _ours("chat", bad) is not None and not reference.is_valid(bad)
