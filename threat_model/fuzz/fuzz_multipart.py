"""Fuzz target: strict multipart/form-data and the audio routes (policy/multipart.py).

Invariant: any body, with or without a Content-Type naming its boundary, for
every form route of policy/routes.toml, is either accepted as a CheckedBody
whose forwarded form (the gate's own, with its own boundary) parses again to
the same fields and file, or rejected with a SluiceError.  Any other
exception or value is a crash.

    python threat_model/fuzz/fuzz_multipart.py -atheris_runs=100000
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(ROOT))

import atheris

from threat_model.fuzz._splice import splice

with atheris.instrument_imports():
    from policy.bodies import CheckedBody, load_routes
    from policy.errors import SluiceError
    from policy.multipart import boundary_of, parse_form

ROUTES = load_routes()
FORM_ROUTES = tuple(route for route in ROUTES.routes.values() if route.form is not None)
BOUNDARY = b"fuzzB0undary"

# A one-sample WAV and an MPEG frame: the leading bytes the sniffer accepts.
_WAV = (
    b"RIFF"
    + (38).to_bytes(4, "little")
    + b"WAVEfmt "
    + (16).to_bytes(4, "little")
    + bytes.fromhex("010001004019000080320000020010")
    + b"\x00data"
    + (2).to_bytes(4, "little")
    + b"\x00\x00"
)
_MP3 = b"\xff\xfb\x90\x64" + b"\x00" * 60


def _part(name: bytes, content: bytes, extra: bytes = b"") -> bytes:
    return b'Content-Disposition: form-data; name="' + name + b'"' + extra + b"\r\n\r\n" + content


def _form(*parts: bytes) -> bytes:
    dash = b"--" + BOUNDARY
    return b"".join(dash + b"\r\n" + p + b"\r\n" for p in parts) + dash + b"--\r\n"


SEEDS = (
    _form(_part(b"model", b"m"), _part(b"file", _WAV, b'; filename="a.wav"')),
    _form(
        _part(b"model", b"m"),
        _part(b"response_format", b"verbose_json"),
        _part(b"temperature", b"0.2"),
        _part(b"timestamp_granularities[]", b"word"),
        _part(b"stream", b"true"),
        _part(b"file", _MP3, b'; filename="a.mp3"\r\nContent-Type: audio/mpeg'),
    ),
)
FRAGMENTS = (
    b"\r\n",
    b"\r\n\r\n",
    b"--",
    b"--" + BOUNDARY,
    b"\r\n--" + BOUNDARY + b"--",
    b'"',
    b";",
    b"\n",
    b"\r",
    b'; filename="../x"',
    b"Content-Type: multipart/mixed; boundary=x\r\n",
    b"\x00",
    b"\xff",
    b"name=",
    b"RIFF",
    b"ID3",
    b"fLaC",
    b"OggS",
    b"ftyp",
    b"\x1a\x45\xdf\xa3",
)


def _body(fdp: atheris.FuzzedDataProvider) -> bytes:
    return splice(fdp, SEEDS, FRAGMENTS, max_random=2048, max_repeat=20)


def TestOneInput(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    route = FORM_ROUTES[fdp.ConsumeIntInRange(0, len(FORM_ROUTES) - 1)]
    with_header = fdp.ConsumeBool()
    body = _body(fdp)
    try:
        if with_header:
            checked = route.check_form(
                body, content_type="multipart/form-data; boundary=" + BOUNDARY.decode(), force_usage=fdp.ConsumeBool()
            )
        else:
            checked = route.check(body, force_usage=fdp.ConsumeBool())
    except SluiceError:
        return
    if type(checked) is not CheckedBody or type(checked.body) is not bytes:
        raise TypeError(f"check returned {type(checked).__name__}")
    original = parse_form(body, route.form, BOUNDARY.decode() if with_header else None)  # type: ignore[arg-type]
    forwarded = parse_form(checked.body, route.form, boundary_of(checked.content_type))  # type: ignore[arg-type]
    if forwarded.file.data != original.file.data:
        raise AssertionError("the forwarded file differs from the one received")


def main(argv: list[str] | None = None) -> None:
    atheris.Setup(sys.argv if argv is None else argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
