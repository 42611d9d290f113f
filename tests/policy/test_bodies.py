"""Strict JSON parsing and the per-route body check (policy/bodies.py, policy/routes.toml)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from typing import Any

import httpx2
import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from policy.bodies import (
    MAX_INT_DIGITS,
    MAX_JSON_DEPTH,
    CheckedBody,
    Route,
    RouteTable,
    load_routes,
    parse_json,
)
from policy.errors import BodyRejected, Disallowed

ROUTES: RouteTable = load_routes()
CHAT: Route = ROUTES.get("chat")
COMPLETIONS: Route = ROUTES.get("completions")
EMBEDDINGS: Route = ROUTES.get("embeddings")
BIG = 4 * 1024 * 1024

# A marker that must never show up in an error: it stands for the client's input.
SECRET = "SECRET-7f3a"


def enc(obj: object) -> bytes:
    return json.dumps(obj).encode()


def chat(**extra: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": "hi"}], **extra}


def rejected(check: Callable[[bytes], object], data: bytes, code: str, status: int | None = None) -> BodyRejected:
    """Assert that ``check(data)`` raises BodyRejected(code) and echoes none of the input."""
    with pytest.raises(BodyRejected) as info:
        check(data)
    exc = info.value
    assert exc.code == code
    if status is not None:
        assert exc.status == status
    assert str(exc) == code
    assert exc.args == (code,)
    assert SECRET not in str(exc) and SECRET not in repr(exc)
    # Nothing that holds the body rides along (JSONDecodeError.doc, UnicodeError.object).
    assert exc.__cause__ is None and exc.__context__ is None
    return exc


def parse(data: bytes) -> object:
    return parse_json(data, BIG)


# ---------------------------------------------------------------------------
# Bodies the official openai client sends (captured through a mock transport)
# ---------------------------------------------------------------------------


class _Answer(BaseModel):
    city: str
    population: int | None


_ASSISTANT_REPLY = {
    "id": "c1",
    "object": "chat.completion",
    "created": 1,
    "model": "m",
    "choices": [
        {
            "index": 0,
            "finish_reason": "tool_calls",
            "logprobs": None,
            "message": {
                "role": "assistant",
                "content": None,
                "refusal": None,
                "annotations": None,
                "audio": None,
                "function_call": None,
                "reasoning_content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                    }
                ],
            },
        }
    ],
    "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7},
}


def _captured(call: Callable[[openai.OpenAI], object]) -> tuple[str, bytes]:
    """Run ``call`` against a mock server; return the request's path and body."""
    seen: list[httpx2.Request] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append(request)
        return httpx2.Response(200, json=_ASSISTANT_REPLY)

    with httpx2.Client(transport=httpx2.MockTransport(handler)) as http:
        client = openai.OpenAI(api_key="k", base_url="http://sluice.invalid/v1", max_retries=0, http_client=http)
        # The canned reply may not suit the endpoint; the request it captured is what counts.
        with contextlib.suppress(Exception):
            call(client)
    request = seen[-1]
    return request.url.path, request.content


def _echo_conversation(c: openai.OpenAI) -> object:
    reply = c.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    return c.chat.completions.create(
        model="m",
        messages=[
            {"role": "user", "content": "weather?"},
            reply.choices[0].message,  # appended as-is, as many programs do
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        ],
    )


_MSGS: Any = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is the capital of France?"},
]
_PNG = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGNgYGBgAAAABQABpfZFQAAAAABJRU5ErkJggg=="

CLIENT_CALLS: dict[str, Callable[[openai.OpenAI], object]] = {
    "chat": lambda c: c.chat.completions.create(model="m", messages=_MSGS),
    "chat_all_knobs": lambda c: c.chat.completions.create(
        model="meta-llama/Llama-3.1-8B-Instruct",
        messages=_MSGS,
        max_tokens=100,
        max_completion_tokens=90,
        temperature=0.2,
        top_p=0.9,
        n=2,
        stop=["\n\n", "END"],
        presence_penalty=0.5,
        frequency_penalty=-0.5,
        seed=-42,
        user="user-1234",
        logprobs=True,
        top_logprobs=5,
        logit_bias={"50256": -100, "11": 2.5},
        parallel_tool_calls=False,
    ),
    "chat_stream": lambda c: c.chat.completions.create(
        model="m", messages=_MSGS, stream=True, stream_options={"include_usage": True}
    ),
    "chat_stream_plain": lambda c: c.chat.completions.create(model="m", messages=_MSGS, stream=True),
    "chat_nulls": lambda c: c.chat.completions.create(
        model="m", messages=_MSGS, temperature=None, max_tokens=None, stop=None, seed=None
    ),
    "chat_developer_and_names": lambda c: c.chat.completions.create(
        model="m",
        messages=[
            {"role": "developer", "content": [{"type": "text", "text": "Rules."}]},
            {"role": "user", "content": "hi", "name": "alice"},
        ],
    ),
    "chat_image": lambda c: c.chat.completions.create(
        model="m",
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is in this image?"},
                    {"type": "image_url", "image_url": {"url": _PNG, "detail": "low"}},
                ],
            }
        ],
    ),
    "chat_tools": lambda c: c.chat.completions.create(
        model="m",
        messages=_MSGS,
        tools=[openai.pydantic_function_tool(_Answer, name="answer", description="Reply.")],
        tool_choice={"type": "function", "function": {"name": "answer"}},
    ),
    "chat_parse": lambda c: c.chat.completions.parse(model="m", messages=_MSGS, response_format=_Answer),
    "chat_json_object": lambda c: c.chat.completions.create(model="m", messages=_MSGS, response_format={"type": "json_object"}),
    "chat_echoed_tool_call": _echo_conversation,
    "completions_str": lambda c: c.completions.create(model="m", prompt="Once upon", max_tokens=8),
    "completions_list": lambda c: c.completions.create(
        model="m",
        prompt=["a", "b"],
        stream=True,
        stream_options={"include_usage": False},
        logprobs=2,
    ),
    "completions_tokens": lambda c: c.completions.create(model="m", prompt=[1, 2, 3]),
    "completions_token_batch": lambda c: c.completions.create(model="m", prompt=[[1, 2], [3]]),
    "embeddings_str": lambda c: c.embeddings.create(model="m", input="hello"),
    "embeddings_list": lambda c: c.embeddings.create(
        model="m", input=["a", "b"], encoding_format="float", dimensions=256, user="u"
    ),
    "embeddings_tokens": lambda c: c.embeddings.create(model="m", input=[1, 2, 3]),
    "embeddings_token_batch": lambda c: c.embeddings.create(model="m", input=[[1, 2], [3, 4]]),
}
_ROUTE_BY_PATH = {route.path: route for route in ROUTES.routes.values()}


@pytest.mark.parametrize("name", sorted(CLIENT_CALLS))
def test_accepts_what_the_openai_client_sends(name: str) -> None:
    path, data = _captured(CLIENT_CALLS[name])
    route = _ROUTE_BY_PATH[path]
    checked = route.check(data)
    assert json.loads(checked.body) == json.loads(data)
    assert route.check(checked.body) == checked


def test_reject_openai_fields_outside_the_policy() -> None:
    # The client sends what the caller passes; fields the policy does not list are refused.
    _, data = _captured(lambda c: c.completions.create(model="m", prompt="x", echo=True))
    rejected(COMPLETIONS.check, data, "unknown_field", 422)
    _, data = _captured(lambda c: c.chat.completions.create(model="m", messages=_MSGS, store=True))
    rejected(CHAT.check, data, "unknown_field", 422)


def test_checked_body_fields() -> None:
    _, data = _captured(CLIENT_CALLS["chat_all_knobs"])
    checked = CHAT.check(data)
    assert checked.model == "meta-llama/Llama-3.1-8B-Instruct"
    assert checked.stream is False and checked.include_usage is False
    assert checked.max_tokens == 90  # max_completion_tokens wins, as in vLLM
    assert CHAT.check(enc(chat(max_tokens=7))).max_tokens == 7
    assert CHAT.check(enc(chat())).max_tokens is None
    streamed = CHAT.check(enc(chat(stream=True, stream_options={"include_usage": True})))
    assert streamed.stream is True and streamed.include_usage is True


# ---------------------------------------------------------------------------
# Accepted shapes and re-serialization
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    ["text", ["a", "b"], [1, 2, 3], [[1, 2], [3]], [""], [0, 2147483647]],
    ids=["str", "strs", "ids", "id_batch", "empty_str", "id_bounds"],
)
def test_accepts_every_input_shape(value: object) -> None:
    assert EMBEDDINGS.check(enc({"model": "m", "input": value})).model == "m"
    assert COMPLETIONS.check(enc({"model": "m", "prompt": value})).model == "m"


def test_body_is_compact_utf8_reserialization() -> None:
    raw = b'\n { "model" : "m",\t"messages" : [ {"role":"user","content":"caf\\u00e9 \\ud83d\\ude00"} ] }\r\n'
    checked = CHAT.check(raw)
    expected = '{"model":"m","messages":[{"role":"user","content":"café 😀"}]}'.encode()
    assert checked.body == expected
    assert CHAT.check(checked.body) == checked


def test_force_usage_for_streams() -> None:
    plain = enc(chat(stream=True))
    forced = CHAT.check(plain, force_usage=True)
    assert forced.include_usage is False
    assert json.loads(forced.body)["stream_options"] == {"include_usage": True, "continuous_usage_stats": True}
    assert forced.continuous_usage is False
    assert "stream_options" not in json.loads(CHAT.check(plain).body)

    declined = CHAT.check(enc(chat(stream=True, stream_options={"include_usage": False})), force_usage=True)
    assert declined.include_usage is False
    assert json.loads(declined.body)["stream_options"] == {"include_usage": True, "continuous_usage_stats": True}

    nulled = CHAT.check(enc(chat(stream=True, stream_options=None)), force_usage=True)
    assert json.loads(nulled.body)["stream_options"] == {"include_usage": True, "continuous_usage_stats": True}
    asked = CHAT.check(enc(chat(stream=True, stream_options={"continuous_usage_stats": True})), force_usage=True)
    assert asked.continuous_usage is True and asked.include_usage is False

    unstreamed = CHAT.check(enc(chat()), force_usage=True)
    assert unstreamed.body == CHAT.check(enc(chat())).body
    embedded = EMBEDDINGS.check(enc({"model": "m", "input": "x"}), force_usage=True)
    assert b"stream" not in embedded.body


def test_checked_body_repr_hides_the_prompt() -> None:
    checked = CHAT.check(enc({"model": "m", "messages": [{"role": "user", "content": SECRET}]}))
    assert SECRET in checked.body.decode()
    assert SECRET not in repr(checked)


def test_serialize_checks_and_encodes() -> None:
    assert CHAT.serialize(chat(temperature=1.0)) == CHAT.check(enc(chat(temperature=1.0))).body
    with pytest.raises(BodyRejected) as info:
        CHAT.serialize(chat(temperature=float("nan")))
    assert info.value.code == "bad_number"
    with pytest.raises(BodyRejected) as info:
        CHAT.serialize(chat(temperature=3))
    assert info.value.code == "out_of_range"
    with pytest.raises(BodyRejected) as info:
        CHAT.serialize({"model": "m", "messages": [{"role": "user", "content": "\ud800"}]})
    assert info.value.code == "bad_string"


def test_route_table() -> None:
    assert ROUTES.ids == ("chat", "completions", "embeddings", "responses", "rerank", "score", "transcriptions", "translations")
    assert CHAT.path == "/v1/chat/completions" and CHAT.method == "POST"
    assert CHAT.stream_allowed and COMPLETIONS.stream_allowed and not EMBEDDINGS.stream_allowed
    for route_id in ("nope", "", "CHAT", "chat ", "../chat"):
        with pytest.raises(Disallowed) as info:
            ROUTES.get(route_id)
        assert info.value.code == "unknown_route"


# ---------------------------------------------------------------------------
# Strict JSON: one test per defence
# ---------------------------------------------------------------------------


def test_parse_json_accepts_strict_json() -> None:
    assert parse(b' \t\r\n{"a": [1, -2.5e3, true, false, null, "x"]} \n') == {"a": [1, -2500.0, True, False, None, "x"]}
    assert parse(b'{"k":"\\ud83d\\ude00"}') == {"k": "\U0001f600"}  # a proper pair
    assert parse(b'{"n":' + b"9" * MAX_INT_DIGITS + b"}") == {"n": int("9" * MAX_INT_DIGITS)}
    assert parse(b'{"n":-' + b"9" * MAX_INT_DIGITS + b"}") == {"n": -int("9" * MAX_INT_DIGITS)}
    nested = b'{"a":' + b"[" * (MAX_JSON_DEPTH - 1) + b"]" * (MAX_JSON_DEPTH - 1) + b"}"
    assert parse(nested)


def test_reject_duplicate_keys() -> None:
    rejected(parse, b'{"a":1,"a":2}', "duplicate_key", 400)
    rejected(parse, b'{"x":{"SECRET-7f3a":1,"SECRET-7f3a":1}}', "duplicate_key", 400)
    body = b'{"model":"m","model":"other","messages":[{"role":"user","content":"hi"}]}'
    rejected(CHAT.check, body, "duplicate_key", 400)
    # Two spellings of one key are one key once decoded.
    rejected(parse, b'{"a":1,"\\u0061":2}', "duplicate_key", 400)


def test_reject_depth_bomb() -> None:
    bomb = b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    rejected(parse, bomb, "too_deep", 400)
    rejected(CHAT.check, bomb, "too_deep", 400)
    objects = b'{"a":' + b'{"a":' * 100_000 + b"1" + b"}" * 100_001
    rejected(parse, objects, "too_deep", 400)
    # Deeper than the parser's bound but not than the scanner's: the walk catches it.
    deep = b'{"a":' + b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH + b"}"
    rejected(parse, deep, "too_deep", 400)
    assert parse_json(b'{"a":[[1]]}', BIG, max_depth=3)
    rejected(lambda d: parse_json(d, BIG, max_depth=3), b'{"a":[[[1]]]}', "too_deep", 400)


def test_reject_depth_in_free_form_documents() -> None:
    params: Any = {"type": "object"}
    for _ in range(40):
        params = {"type": "object", "properties": {"x": params}}
    tool = {"type": "function", "function": {"name": "f", "parameters": params}}
    rejected(CHAT.check, enc(chat(tools=[tool])), "too_deep", 422)
    # Deep nesting where the schema names a fixed structure is the wrong type.
    rejected(CHAT.check, enc(chat(stop=[[["x"]]])), "wrong_type", 422)


def test_reject_huge_numbers() -> None:
    rejected(parse, b'{"n":' + b"1" * (MAX_INT_DIGITS + 1) + b"}", "bad_number", 400)
    rejected(parse, b'{"n":-' + b"1" * (MAX_INT_DIGITS + 1) + b"}", "bad_number", 400)
    rejected(parse, b'{"n":' + b"7" * 100_000 + b"}", "bad_number", 400)
    rejected(parse, b'{"n":1e400}', "bad_number", 400)
    rejected(parse, b'{"n":-1E+999}', "bad_number", 400)
    rejected(parse, b'{"n":0.' + b"1" * 100 + b"}", "bad_number", 400)
    body = enc(chat()).replace(b'"model"', b'"seed":' + b"9" * 30 + b',"model"')
    rejected(CHAT.check, body, "bad_number", 400)


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity"])
def test_reject_nan_and_infinity(literal: bytes) -> None:
    rejected(parse, b'{"n":' + literal + b"}", "bad_number", 400)
    rejected(CHAT.check, enc(chat(temperature=1)).replace(b"1}", literal + b"}"), "bad_number", 400)


@pytest.mark.parametrize(
    "raw",
    [b"\xff", b"\xc0\xaf", b"\xe0\x80\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xc3", b"\x80"],
    ids=["ff", "overlong2", "overlong3", "surrogate", "above_max", "truncated", "continuation"],
)
def test_reject_invalid_utf8(raw: bytes) -> None:
    rejected(parse, b'{"a":"' + raw + b'"}', "bad_encoding", 400)
    body = b'{"model":"m","messages":[{"role":"user","content":"' + raw + b'"}]}'
    rejected(CHAT.check, body, "bad_encoding", 400)


@pytest.mark.parametrize("escape", [b"\\ud800", b"\\uDFFF", b"\\ude00\\ud83d", b"\\ud83dx", b"\\ud83d\\u0041"])
def test_reject_lone_surrogate(escape: bytes) -> None:
    rejected(parse, b'{"a":"' + escape + b'"}', "bad_string", 400)
    rejected(parse, b'{"' + escape + b'":1}', "bad_string", 400)
    body = b'{"model":"m","messages":[{"role":"user","content":"' + escape + b'"}]}'
    rejected(CHAT.check, body, "bad_string", 400)


def test_reject_bom() -> None:
    rejected(parse, b"\xef\xbb\xbf{}", "byte_order_mark", 400)
    rejected(CHAT.check, b"\xef\xbb\xbf" + enc(chat()), "byte_order_mark", 400)
    rejected(parse, b"\xfe\xff\x00{\x00}", "bad_encoding", 400)  # UTF-16 is not UTF-8


@pytest.mark.parametrize("tail", [b"x", b"{}", b"\x00", b",", b"]", b" 1", b"\xc2\xa0", b"\x0b", b"\x0c", b"// c"])
def test_reject_trailing_bytes(tail: bytes) -> None:
    code = "trailing_data"
    rejected(parse, b"{}" + tail, code, 400)
    rejected(CHAT.check, enc(chat()) + tail, code, 400)


def test_trailing_whitespace_is_json() -> None:
    assert CHAT.check(enc(chat()) + b" \r\n\t").body == CHAT.check(enc(chat())).body


def test_reject_every_truncation() -> None:
    data = enc(chat(temperature=0.5, stop=["x"]))
    for end in range(len(data)):
        with pytest.raises(BodyRejected) as info:
            CHAT.check(data[:end])
        assert info.value.status == 400


def test_reject_over_size_body() -> None:
    data = enc(chat())
    rejected(lambda d: parse_json(d, len(data) - 1), data, "body_too_large", 413)
    assert parse_json(data, len(data))
    huge = enc({"model": "m", "messages": [{"role": "user", "content": "x" * BIG}]})
    rejected(CHAT.check, huge, "body_too_large", 413)
    # The size is checked before a byte is looked at.
    rejected(CHAT.check, b"\xff" * (BIG + 1), "body_too_large", 413)


@pytest.mark.parametrize("data", [b"[]", b'"s"', b"1", b"null", b"true", b'[{"model":"m"}]'])
def test_reject_non_object_top_level(data: bytes) -> None:
    rejected(parse, data, "not_object", 400)


@pytest.mark.parametrize(
    "data",
    [b"", b" ", b"{", b"{'a':1}", b'{"a":"\n"}', b'{"a":01}', b'{"a":1,}', b'{"a":+1}', b"{a:1}"],
)
def test_reject_invalid_json(data: bytes) -> None:
    rejected(parse, data, "invalid_json", 400)


def test_accepts_bytearray_and_memoryview() -> None:
    data = enc(chat())
    assert CHAT.check(bytearray(data)) == CHAT.check(memoryview(data)) == CHAT.check(data)
    assert parse_json(memoryview(data), BIG) == parse_json(bytearray(data), BIG) == chat()
    with pytest.raises(TypeError):
        CHAT.check(json.dumps(chat()))  # type: ignore[arg-type]


# ---------------------------------------------------------------------------
# Route policy: one test per defence
# ---------------------------------------------------------------------------


def test_reject_unknown_field_at_top_level() -> None:
    rejected(CHAT.check, enc(chat(**{SECRET: 1})), "unknown_field", 422)
    rejected(EMBEDDINGS.check, enc({"model": "m", "input": "x", "temperature": 1}), "unknown_field")
    rejected(CHAT.check, enc(chat(prompt="x")), "unknown_field")  # another route's field


@pytest.mark.parametrize(
    "body",
    [
        {"model": "m", "messages": [{"role": "user", "content": "x", SECRET: 1}]},
        {
            "model": "m",
            "messages": [{"role": "user", "content": [{"type": "text", "text": "x", SECRET: 1}]}],
        },
        chat(stream=True, stream_options={"include_usage": True, SECRET: True}),
        chat(tools=[{"type": "function", "function": {"name": "f", SECRET: 1}}]),
        chat(response_format={"type": "json_schema", "json_schema": {"name": "n", SECRET: 1}}),
        chat(tool_choice={"type": "function", "function": {"name": "f"}, SECRET: 1}),
        {
            "model": "m",
            "messages": [{"role": "tool", "content": "x", "tool_call_id": "1", "name": "n"}],
        },
        {"model": "m", "messages": [{"role": "user", "content": "x", "tool_calls": []}]},
    ],
    ids=[
        "message",
        "content_part",
        "stream_options",
        "tool",
        "json_schema",
        "tool_choice",
        "tool_name",
        "user_tool_calls",
    ],
)
def test_reject_unknown_field_nested(body: dict[str, Any]) -> None:
    rejected(CHAT.check, enc(body), "unknown_field", 422)


@pytest.mark.parametrize(
    ("route", "body"),
    [
        (CHAT, {"model": 7, "messages": []}),
        (CHAT, {"model": "m", "messages": {"role": "user"}}),
        (CHAT, chat(temperature="0.5")),
        (CHAT, chat(stream="true")),
        (CHAT, chat(max_tokens=10.0)),
        (CHAT, chat(n=True)),
        (CHAT, chat(stop=[1])),
        (CHAT, chat(logit_bias={"1": "high"})),
        (CHAT, {"model": "m", "messages": ["hi"]}),
        (CHAT, {"model": "m", "messages": [{"role": "user", "content": 5}]}),
        (CHAT, {"model": "m", "messages": [{"role": 1, "content": "x"}]}),
        (COMPLETIONS, {"model": "m", "prompt": [1, "a"]}),
        (COMPLETIONS, {"model": "m", "prompt": [[1], "a"]}),
        (COMPLETIONS, {"model": "m", "prompt": [1.5]}),
        (COMPLETIONS, {"model": "m", "prompt": None}),
        (EMBEDDINGS, {"model": "m", "input": [True]}),
        (EMBEDDINGS, {"model": "m", "input": {"text": "x"}}),
        (EMBEDDINGS, {"model": "m", "input": "x", "encoding_format": None}),
    ],
)
def test_reject_wrong_types(route: Route, body: dict[str, Any]) -> None:
    rejected(route.check, enc(body), "wrong_type", 422)


@pytest.mark.parametrize(
    ("route", "body"),
    [
        (CHAT, chat(temperature=2.5)),
        (CHAT, chat(temperature=-0.1)),
        (CHAT, chat(top_p=1.01)),
        (CHAT, chat(n=17)),
        (CHAT, chat(n=0)),
        (CHAT, chat(presence_penalty=-3)),
        (CHAT, chat(max_tokens=0)),
        (CHAT, chat(max_completion_tokens=2**31)),
        (CHAT, chat(top_logprobs=21)),
        (CHAT, chat(logit_bias={"1": 101})),
        (CHAT, chat(seed=2**63)),
        (COMPLETIONS, {"model": "m", "prompt": [-1]}),
        (COMPLETIONS, {"model": "m", "prompt": [[1, 2**31]]}),
        (COMPLETIONS, {"model": "m", "prompt": "x", "logprobs": 6}),
        (EMBEDDINGS, {"model": "m", "input": "x", "dimensions": 0}),
    ],
)
def test_reject_out_of_range_numbers(route: Route, body: dict[str, Any]) -> None:
    rejected(route.check, enc(body), "out_of_range", 422)


def test_reject_too_many_messages() -> None:
    messages = [{"role": "user", "content": "x"}] * 2049
    rejected(CHAT.check, enc({"model": "m", "messages": messages}), "too_long", 422)
    assert CHAT.check(enc({"model": "m", "messages": messages[:2048]}))


@pytest.mark.parametrize(
    ("route", "body"),
    [
        (CHAT, {"model": "m" * 129, "messages": [{"role": "user", "content": "x"}]}),
        (CHAT, chat(stop=["x"] * 17)),
        (CHAT, chat(stop="s" * 1025)),
        (CHAT, chat(user=SECRET * 100)),
        (CHAT, chat(logit_bias={str(i): 1 for i in range(1025)})),
        (CHAT, chat(logit_bias={"12345678901": 1})),
        (CHAT, chat(tools=[{"type": "function", "function": {"name": "f" * 65}}])),
        (
            CHAT,
            {
                "model": "m",
                "messages": [{"role": "user", "content": [{"type": "text", "text": "x"}] * 257}],
            },
        ),
        (EMBEDDINGS, {"model": "m", "input": ["x"] * 2049}),
        (EMBEDDINGS, {"model": "m", "input": [1] * 262145}),
    ],
)
def test_reject_over_long_strings_and_arrays(route: Route, body: dict[str, Any]) -> None:
    rejected(route.check, enc(body), "too_long", 422)


@pytest.mark.parametrize(
    ("route", "body"),
    [
        (CHAT, {"model": "", "messages": [{"role": "user", "content": "x"}]}),
        (CHAT, {"model": "m", "messages": []}),
        (CHAT, {"model": "m", "messages": [{"role": "user", "content": []}]}),
        (CHAT, chat(stop="")),
        (COMPLETIONS, {"model": "m", "prompt": []}),
        (EMBEDDINGS, {"model": "m", "input": [[]]}),
    ],
)
def test_reject_empty_where_something_is_needed(route: Route, body: dict[str, Any]) -> None:
    rejected(route.check, enc(body), "too_short", 422)


def test_reject_stream_on_embeddings() -> None:
    rejected(
        EMBEDDINGS.check,
        enc({"model": "m", "input": "x", "stream": True}),
        "stream_not_allowed",
        422,
    )
    rejected(EMBEDDINGS.check, enc({"model": "m", "input": "x", "stream": False}), "unknown_field", 422)


def test_reject_stream_options_without_stream() -> None:
    body = chat(stream_options={"include_usage": True})
    rejected(CHAT.check, enc(body), "stream_options_without_stream", 422)
    rejected(CHAT.check, enc({**body, "stream": False}), "stream_options_without_stream", 422)


@pytest.mark.parametrize(
    ("route", "body"),
    [
        (CHAT, {"messages": [{"role": "user", "content": "x"}]}),
        (CHAT, {"model": "m"}),
        (COMPLETIONS, {"prompt": "x"}),
        (EMBEDDINGS, {"input": "x"}),
        (EMBEDDINGS, {"model": "m"}),
        (CHAT, {"model": "m", "messages": [{"content": "x"}]}),
        (CHAT, {"model": "m", "messages": [{"role": "tool", "content": "x"}]}),
        (CHAT, {"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}),
        (CHAT, chat(response_format={"type": "json_schema"})),
    ],
)
def test_reject_missing_fields(route: Route, body: dict[str, Any]) -> None:
    rejected(route.check, enc(body), "missing_field", 422)


@pytest.mark.parametrize(
    "body",
    [
        {"model": "m", "messages": [{"role": "root", "content": "x"}]},
        {"model": "bad model", "messages": [{"role": "user", "content": "x"}]},
        {"model": "../m", "messages": [{"role": "user", "content": "x"}]},
        {"model": "m", "messages": [{"role": "user", "content": [{"type": "audio", "text": "x"}]}]},
        {
            "model": "m",
            "messages": [{"role": "system", "content": [{"type": "image_url", "text": "x"}]}],
        },
        chat(tool_choice="always"),
        chat(response_format={"type": "yaml"}),
        chat(tools=[{"type": "function", "function": {"name": "has space"}}]),
        chat(logit_bias={"abc": 1}),
    ],
    ids=[
        "role",
        "model_space",
        "model_path",
        "part_type",
        "system_image",
        "tool_choice",
        "format",
        "tool_name",
        "bias_key",
    ],
)
def test_reject_values_outside_the_policy(body: dict[str, Any]) -> None:
    rejected(CHAT.check, enc(body), "bad_value", 422)


def test_reject_images_outside_user_messages() -> None:
    part = {"type": "image_url", "image_url": {"url": _PNG}}
    for role in ("system", "developer", "assistant", "tool"):
        message = {"role": role, "content": [part], "tool_call_id": "1"}
        if role != "tool":
            del message["tool_call_id"]
        rejected(CHAT.check, enc({"model": "m", "messages": [message]}), "missing_field", 422)


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "https://example.org/cat.png",
        "file:///etc/passwd",
        "DATA:image/png;base64,AAAA",
        "data:text/html;base64,AAAA",
    ],
)
def test_reject_image_urls_that_make_the_backend_fetch(url: str) -> None:
    part = {"type": "image_url", "image_url": {"url": url}}
    body = {"model": "m", "messages": [{"role": "user", "content": [part]}]}
    rejected(CHAT.check, enc(body), "bad_value", 422)


# ---------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------

_JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**22), max_value=10**22)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
)
_JSON = st.recursive(
    _JSON_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(["role", "content", "type", "text", "model", "x", "include_usage"]) | st.text(max_size=6),
            inner,
            max_size=4,
        )
    ),
    max_leaves=16,
)
_FIELDS = sorted(
    {
        "model",
        "messages",
        "prompt",
        "input",
        "stream",
        "stream_options",
        "n",
        "stop",
        "temperature",
        "max_tokens",
        "tools",
        "logit_bias",
        "encoding_format",
        "extra",
    }
)


def _outcome(route: Route, data: bytes) -> CheckedBody | None:
    """The invariant: a CheckedBody or BodyRejected, nothing else; accepted bodies are fixed points."""
    try:
        checked = route.check(data)
    except BodyRejected as exc:
        assert exc.status in (400, 413, 422)
        assert str(exc) == exc.code and exc.args == (exc.code,)
        return None
    assert isinstance(checked, CheckedBody)
    again = route.check(checked.body)
    assert again == checked and again.body == checked.body
    # The forced-usage body is itself accepted, and a fixed point too.
    forced = route.check(data, force_usage=True)
    assert forced.include_usage == checked.include_usage
    assert route.check(forced.body, force_usage=True).body == forced.body
    if checked.stream:
        assert route.check(forced.body).include_usage is True
    return checked


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(ROUTES.ids)), st.binary(max_size=256))
def test_fuzz_any_bytes(route_id: str, data: bytes) -> None:
    _outcome(ROUTES.get(route_id), data)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(sorted(ROUTES.ids)),
    st.dictionaries(st.sampled_from(_FIELDS), _JSON, max_size=5),
    st.booleans(),
)
def test_fuzz_json_objects(route_id: str, obj: dict[str, Any], ascii_only: bool) -> None:
    _outcome(ROUTES.get(route_id), json.dumps(obj, ensure_ascii=ascii_only).encode())


_TEXT = st.text(max_size=40)  # hypothesis never makes lone surrogates here
_MESSAGE = st.one_of(
    st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "developer"]), "content": _TEXT}),
    st.fixed_dictionaries(
        {
            "role": st.just("user"),
            "content": st.lists(
                st.fixed_dictionaries({"type": st.just("text"), "text": _TEXT}),
                min_size=1,
                max_size=3,
            ),
        }
    ),
    st.fixed_dictionaries({"role": st.just("assistant")}, optional={"content": _TEXT | st.none()}),
    st.fixed_dictionaries({"role": st.just("tool"), "content": _TEXT, "tool_call_id": st.text(min_size=1, max_size=8)}),
)
_CHAT_BODIES = st.fixed_dictionaries(
    {
        "model": st.from_regex(r"[A-Za-z0-9][A-Za-z0-9\-_.:/]{0,20}", fullmatch=True),
        "messages": st.lists(_MESSAGE, min_size=1, max_size=5),
    },
    optional={
        "temperature": st.floats(min_value=0, max_value=2) | st.integers(0, 2) | st.none(),
        "top_p": st.floats(min_value=0, max_value=1),
        "max_tokens": st.integers(1, 1_048_576),
        "seed": st.integers(-(2**63), 2**63 - 1),
        "stop": _TEXT.filter(bool) | st.lists(st.text(min_size=1, max_size=5), max_size=4),
        "stream": st.booleans(),
        "logit_bias": st.dictionaries(st.from_regex(r"[0-9]{1,10}", fullmatch=True), st.floats(-100, 100), max_size=3),
    },
)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(_CHAT_BODIES, st.booleans(), st.sampled_from([None, 0, 2]))
def test_valid_chat_bodies_are_accepted_and_reserialize_to_a_fixed_point(
    body: dict[str, Any], ascii_only: bool, indent: int | None
) -> None:
    data = json.dumps(body, ensure_ascii=ascii_only, indent=indent).encode()
    checked = _outcome(CHAT, data)
    assert checked is not None
    assert json.loads(checked.body) == body
    assert checked.model == body["model"]
    assert checked.stream is (body.get("stream") is True)
