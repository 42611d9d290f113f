"""Fuzz target: strict JSON and the route policy (policy/bodies.py).

Invariant: any body, for any route of policy/routes.toml, is either accepted
as a CheckedBody whose forwarded bytes are again acceptable JSON, or rejected
with a SluiceError (BodyRejected).  policy.bodies.parse_json likewise returns
a dict or raises a SluiceError.  Any other exception or value is a crash.

    python threat_model/fuzz/fuzz_bodies.py -atheris_runs=100000
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(ROOT))

import atheris

from threat_model.fuzz._splice import splice

with atheris.instrument_imports():
    from policy.bodies import CheckedBody, load_routes, parse_json
    from policy.errors import SluiceError

ROUTES = load_routes()
IDS = tuple(i for i in ROUTES.ids if ROUTES.get(i).form is None)  # forms: fuzz_multipart.py

# Acceptable bodies to splice fuzz bytes into: random bytes are rarely JSON at all.
SEEDS = tuple(
    json.dumps(seed).encode()
    for seed in (
        {
            "model": "m",
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 8,
            "stream": True,
            "stream_options": {"include_usage": True},
            "temperature": 0.5,
            "stop": ["\n"],
            "seed": -1,
        },
        {
            "model": "m",
            "messages": [
                {"role": "system", "content": [{"type": "text", "text": "x"}]},
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [{"id": "1", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
                },
                {"role": "tool", "content": "r", "tool_call_id": "1"},
            ],
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}],
            "tool_choice": "auto",
            "response_format": {"type": "json_object"},
            "logit_bias": {"42": -100},
        },
        {"model": "m", "prompt": [[1, 2], [3]], "logprobs": 2, "n": 2},
        {"model": "m", "input": ["a", "b"], "encoding_format": "base64", "dimensions": 8},
    )
)
FRAGMENTS = (
    b"[",
    b"]",
    b"{",
    b"}",
    b'"',
    b"\\u",
    b"\\ud800",
    b"NaN",
    b"1e999",
    b"-0",
    b",",
    b":",
    b"null",
    b'"model":',
    b'"stream":true',
    b"\xef\xbb\xbf",
    b"\xff",
    b"9" * 30,
)


def _body(fdp: atheris.FuzzedDataProvider) -> bytes:
    return splice(fdp, SEEDS, FRAGMENTS, max_random=4096, max_repeat=80)


def TestOneInput(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    route = ROUTES.get(IDS[fdp.ConsumeIntInRange(0, len(IDS) - 1)])
    force_usage = fdp.ConsumeBool()
    body = _body(fdp)
    try:
        document = parse_json(body, route.max_body_bytes)
        if type(document) is not dict:
            raise TypeError(f"parse_json returned a {type(document).__name__}")
    except SluiceError:
        pass
    try:
        checked = route.check(body, force_usage=force_usage)
    except SluiceError:
        return
    if type(checked) is not CheckedBody or type(checked.body) is not bytes:
        raise TypeError(f"Route.check returned {type(checked).__name__}")
    parse_json(checked.body, len(checked.body))  # what the gate forwards is strict JSON too


def main(argv: list[str] | None = None) -> None:
    atheris.Setup(sys.argv if argv is None else argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
