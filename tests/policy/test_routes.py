"""The route policy file itself: the shipped one is sound, malformed ones are refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from policy import grammar
from policy.bodies import (
    DEFAULT_ROUTES_PATH,
    MAX_MODEL_CHARS,
    MAX_ROUTE_BODY_BYTES,
    load_routes,
)
from policy.errors import BodyRejected

# The smallest valid policy; each case below breaks it in one place.
_ROUTE_HEAD = """\
[routes.r]
path = "/v1/r"
method = "POST"
max_body_bytes = 1024
stream = false
max_depth = 4
required = ["model"]
"""
_MODEL = 'model = { type = "string", min_length = 1, max_length = 128 }\n'
MINIMAL = _ROUTE_HEAD + "\n[routes.r.fields]\n" + _MODEL


def _write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "routes.toml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def _with_fields(*lines: str, head: str = _ROUTE_HEAD, types: str = "") -> str:
    return types + head + "\n[routes.r.fields]\n" + _MODEL + "".join(line + "\n" for line in lines)


def test_default_policy_loads() -> None:
    table = load_routes()
    assert table.ids == load_routes(str(DEFAULT_ROUTES_PATH)).ids


def test_default_policy_agrees_with_the_grammar() -> None:
    table = load_routes()
    assert table.ids == grammar.ROUTE_IDS
    assert MAX_ROUTE_BODY_BYTES == grammar.MAX_BODY_BYTES
    for route_id in table.ids:
        route = table.get(route_id)
        assert route.max_body_bytes <= grammar.MAX_BODY_BYTES
        assert route.method == "POST"
        assert route.path.startswith("/v1/")
    # The longest model name the grammar allows passes every route, one longer does not.
    name = "m" * MAX_MODEL_CHARS
    line = grammar.parse_command_line(f"sluice/1 call chat {name} 10")
    body = {"model": line.model, "messages": [{"role": "user", "content": "x"}]}  # type: ignore[union-attr]
    assert table.get("chat").check(json.dumps(body).encode()).model == name


def test_minimal_policy_loads(tmp_path: Path) -> None:
    table = load_routes(_write(tmp_path, MINIMAL))
    route = table.get("r")
    assert route.check(b'{"model":"x"}').body == b'{"model":"x"}'
    with pytest.raises(BodyRejected):
        route.check(b'{"model":"x","y":1}')


@pytest.mark.parametrize(
    ("text", "key"),
    [
        # Schema keywords.
        (_with_fields('s = { type = "string", max_len = 5 }'), "routes.r.fields.s.max_len"),
        (_with_fields('s = { type = "string" }'), "routes.r.fields.s.max_length"),
        (_with_fields('s = { type = "text", max_length = 5 }'), "routes.r.fields.s.type"),
        (_with_fields("s = { max_length = 5 }"), "routes.r.fields.s.type"),
        (_with_fields('s = { type = "string", max_length = -1 }'), "routes.r.fields.s.max_length"),
        (_with_fields('s = { type = "string", max_length = 1e3 }'), "routes.r.fields.s.max_length"),
        (
            _with_fields('s = { type = "string", max_length = 99999999999 }'),
            "routes.r.fields.s.max_length",
        ),
        (
            _with_fields('s = { type = "string", min_length = 5, max_length = 4 }'),
            "routes.r.fields.s.min_length",
        ),
        (
            _with_fields('s = { type = "string", max_length = 4, enum = ["toolong"] }'),
            "routes.r.fields.s.enum",
        ),
        (
            _with_fields('s = { type = "string", max_length = 4, enum = [] }'),
            "routes.r.fields.s.enum",
        ),
        (
            _with_fields('s = { type = "string", max_length = 4, enum = ["a", "a"] }'),
            "routes.r.fields.s.enum",
        ),
        (
            _with_fields('s = { type = "string", max_length = 4, pattern = "(" }'),
            "routes.r.fields.s.pattern",
        ),
        (
            _with_fields('s = { type = "string", max_length = 4, prefix = [""] }'),
            "routes.r.fields.s.prefix",
        ),
        (
            _with_fields('s = { type = "string", max_length = 4, nullable = "yes" }'),
            "routes.r.fields.s.nullable",
        ),
        (_with_fields('i = { type = "integer", min = 5, max = 1 }'), "routes.r.fields.i.min"),
        (_with_fields('i = { type = "integer", min = 0.5, max = 1 }'), "routes.r.fields.i.min"),
        (_with_fields('i = { type = "integer", min = 0, max = true }'), "routes.r.fields.i.max"),
        (_with_fields('i = { type = "integer", max = 1 }'), "routes.r.fields.i.min"),
        (_with_fields('f = { type = "number", min = nan, max = 1 }'), "routes.r.fields.f.min"),
        (_with_fields('f = { type = "number", min = 0, max = inf }'), "routes.r.fields.f.max"),
        (_with_fields('a = { type = "array", max_items = 3 }'), "routes.r.fields.a.items"),
        (
            _with_fields('a = { type = "array", items = { type = "boolean" } }'),
            "routes.r.fields.a.max_items",
        ),
        (
            _with_fields('a = { type = "array", max_items = 1, min_items = 2, items = { type = "null" } }'),
            "routes.r.fields.a.min_items",
        ),
        (_with_fields('o = { type = "object", fields = {} }'), "routes.r.fields.o.fields"),
        (
            _with_fields('o = { type = "object", fields = { b = { type = "boolean" } }, required = ["c"] }'),
            "routes.r.fields.o.required",
        ),
        (
            _with_fields(
                'm = { type = "map", max_fields = 0, keys = { type = "string", max_length = 1 }, values = { type = "null" } }'
            ),
            "routes.r.fields.m.max_fields",
        ),
        (
            _with_fields(
                'm = { type = "map", max_fields = 2, keys = { type = "integer", min = 0, max = 1 }, values = { type = "null" } }'
            ),
            "routes.r.fields.m.keys",
        ),
        (
            _with_fields('j = { type = "json", max_length = 1, max_items = 1, max_key_length = 1, max_depth = 0 }'),
            "routes.r.fields.j.max_depth",
        ),
        (_with_fields('n = { type = "null", nullable = true }'), "routes.r.fields.n.nullable"),
        (_with_fields("b = 5"), "routes.r.fields.b"),
        # Depth.
        (
            _with_fields(
                'a = { type = "array", max_items = 1, items = { type = "array", max_items = 1, items = { type = "array", max_items = 1, items = { type = "array", max_items = 1, items = { type = "boolean" } } } } }'
            ),
            "routes.r.fields.a.items.items.items: nests deeper",
        ),
        # Refs and unions.
        (_with_fields('x = { ref = "nowhere" }'), "routes.r.fields.x.ref"),
        (
            _with_fields('x = { ref = "a", colour = 1 }', types='[types.a]\ntype = "boolean"\n'),
            "routes.r.fields.x.colour",
        ),
        (
            _with_fields('x = { ref = "a" }', types='[types.a]\nref = "b"\n[types.b]\nref = "a"\n'),
            "refs loop",
        ),
        (
            _with_fields(types='[types.unused]\ntype = "string"\nmax_len = 1\n'),
            "types.unused.max_len",
        ),
        (_with_fields('u = { one_of = [{ type = "boolean" }] }'), "routes.r.fields.u.one_of"),
        (
            _with_fields('u = { one_of = [{ type = "string", max_length = 1 }, { type = "string", max_length = 2 }] }'),
            "routes.r.fields.u.one_of",
        ),
        (
            _with_fields('u = { one_of = [{ type = "integer", min = 0, max = 1 }, { type = "number", min = 0, max = 1 }] }'),
            "routes.r.fields.u.one_of",
        ),
        (
            _with_fields(
                'u = { one_of = [{ type = "object", fields = { a = { type = "null" } } }, { type = "object", fields = { b = { type = "null" } } }] }'
            ),
            "routes.r.fields.u.discriminator",
        ),
        (
            _with_fields(
                'u = { discriminator = "t", one_of = [{ type = "object", fields = { t = { type = "string", max_length = 1, enum = ["a"] } } }, { type = "object", required = ["t"], fields = { t = { type = "string", max_length = 1, enum = ["b"] } } }] }'
            ),
            "routes.r.fields.u.discriminator",
        ),
        (
            _with_fields(
                'u = { discriminator = "t", one_of = [{ type = "object", required = ["t"], fields = { t = { type = "string", max_length = 1, enum = ["a"] } } }, { type = "object", required = ["t"], fields = { t = { type = "string", max_length = 1, enum = ["a"] } } }] }'
            ),
            "routes.r.fields.u.discriminator",
        ),
        (
            _with_fields('u = { discriminator = "t", one_of = [{ type = "boolean" }, { type = "null" }] }'),
            "routes.r.fields.u.discriminator",
        ),
        (
            _with_fields(
                'u = { one_of = [{ type = "array", max_items = 1, items = { type = "boolean" } }, { type = "array", max_items = 2, items = { type = "boolean" } }] }',
                head=_ROUTE_HEAD,
            ),
            "routes.r.fields.u.one_of",
        ),
        # Routes.
        (MINIMAL.replace('path = "/v1/r"', 'path = "/v1/../admin"'), "routes.r.path"),
        (MINIMAL.replace('path = "/v1/r"', 'path = "http://evil/v1/r"'), "routes.r.path"),
        (MINIMAL.replace('path = "/v1/r"', 'path = "/v1/r?x=1"'), "routes.r.path"),
        (MINIMAL.replace('method = "POST"', 'method = "GET"'), "routes.r.method"),
        (MINIMAL.replace("max_body_bytes = 1024", "max_body_bytes = 0"), "routes.r.max_body_bytes"),
        (
            MINIMAL.replace("max_body_bytes = 1024", "max_body_bytes = 999999999"),
            "routes.r.max_body_bytes",
        ),
        (MINIMAL.replace("max_depth = 4", "max_depth = 65"), "routes.r.max_depth"),
        (MINIMAL.replace("stream = false", 'stream = "no"'), "routes.r.stream"),
        (MINIMAL.replace("stream = false\n", ""), "routes.r.stream"),
        (MINIMAL.replace("[routes.r]", "[routes.R]"), "routes.R"),
        (MINIMAL.replace('required = ["model"]', "required = []"), "routes.r.required"),
        (
            MINIMAL.replace('required = ["model"]', 'required = ["model"]\ncolour = "red"'),
            "routes.r.colour",
        ),
        (
            MINIMAL.replace(_MODEL, 'model = { type = "string", max_length = 128, nullable = true }\n'),
            "routes.r.fields.model",
        ),
        (
            MINIMAL.replace(_MODEL, 'model = { type = "integer", min = 0, max = 1 }\n'),
            "routes.r.fields.model",
        ),
        (
            MINIMAL.replace(_MODEL, 'model = { type = "string", max_length = 129 }\n'),
            "routes.r.fields.model",
        ),
        (
            MINIMAL.replace(_MODEL, 'model = { type = "string", max_length = 200, pattern = "m+" }\n'),
            "routes.r.fields.model",
        ),
        (MINIMAL.replace("stream = false", "stream = true"), "routes.r.fields.stream"),
        (_with_fields('stream = { type = "boolean" }'), "routes.r.fields.stream"),
        (
            _with_fields('max_tokens = { type = "number", min = 1, max = 2 }'),
            "routes.r.fields.max_tokens",
        ),
        (MINIMAL + "\n[extra]\nx = 1\n", "extra"),
        ("types = 1\n" + MINIMAL, "types"),
        ("", "routes"),
        ("[routes.r\n", "not valid TOML"),
    ],
)
def test_reject_malformed_policy(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ValueError) as info:
        load_routes(_write(tmp_path, text))
    assert key in str(info.value)
    assert str(info.value).startswith("routes.toml: ")


def test_streaming_route_needs_stream_options(tmp_path: Path) -> None:
    head = _ROUTE_HEAD.replace("stream = false", "stream = true")
    text = _with_fields('stream = { type = "boolean" }', head=head)
    with pytest.raises(ValueError, match=r"routes\.r\.fields\.stream_options"):
        load_routes(_write(tmp_path, text))
    options = 'stream_options = { type = "object", fields = { include_usage = { type = "boolean" } } }'
    route = load_routes(_write(tmp_path, _with_fields('stream = { type = "boolean" }', options, head=head))).get("r")
    assert route.stream_allowed
    assert route.check(b'{"model":"x","stream":true}', force_usage=True).body == (
        b'{"model":"x","stream":true,"stream_options":{"include_usage":true,"continuous_usage_stats":true}}'
    )


def test_missing_policy_file(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        load_routes(str(tmp_path / "absent.toml"))
