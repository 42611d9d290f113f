"""The strict multipart/form-data parser of the audio routes (policy/multipart.py)."""

from __future__ import annotations

import email.parser
import email.policy
import string

import httpx2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policy.bodies import load_routes
from policy.errors import BodyRejected
from policy.multipart import (
    MAX_FIELD_BYTES,
    MAX_PARTS,
    FormSpec,
    boundary_of,
    build_form,
    new_boundary,
    parse_form,
)
from tests.audio_files import flac, m4a, mp3, ogg_opus, wav, webm

SPEC = FormSpec(
    fields=frozenset({"model", "language", "prompt", "response_format", "temperature", "stream"}),
    repeated=frozenset({"timestamp_granularities[]"}),
    file_field="file",
    max_file_bytes=64 * 1024,
)
B = "b0undary"
WAV = wav(0.25)


def part(name: str, content: bytes, *headers: str, filename: str | None = None) -> bytes:
    disposition = f'Content-Disposition: form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
    lines = [disposition, *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + content


def body(*parts: bytes, boundary: str = B, end: bytes = b"\r\n") -> bytes:
    dash = b"--" + boundary.encode()
    return b"".join(dash + b"\r\n" + p + b"\r\n" for p in parts) + dash + b"--" + end


FILE = part("file", WAV, "Content-Type: audio/wav", filename="speech.wav")
GOOD = body(part("model", b"whisper"), part("response_format", b"json"), FILE)


def parse(data: bytes, boundary: str | None = B, spec: FormSpec = SPEC):  # type: ignore[no-untyped-def]
    return parse_form(data, spec, boundary)


def rejected(data: bytes, code: str, boundary: str | None = B) -> None:
    with pytest.raises(BodyRejected) as info:
        parse(data, boundary)
    assert info.value.code == code
    assert str(info.value) == code  # the code alone, never the input


# --- what passes -------------------------------------------------------------------------------


def test_parses_a_plain_form() -> None:
    form = parse(GOOD)
    assert form.fields == (("model", "whisper"), ("response_format", "json"))
    assert form.file.data == WAV and form.file.audio.kind == "wav" and form.file.audio.seconds == 0.25
    assert "whisper" not in repr(form) and "RIFF" not in repr(form)


def test_boundary_from_the_first_line_when_no_header_names_it() -> None:
    assert parse(GOOD, None).fields == parse(GOOD).fields


def test_without_the_final_crlf() -> None:
    assert parse(GOOD[:-2]).file.data == WAV


@pytest.mark.parametrize("audio", [wav(), mp3(), mp3(id3=False), flac(), ogg_opus(), m4a(), webm()])
def test_every_audio_container(audio: bytes) -> None:
    assert parse(body(part("model", b"m"), part("file", audio, filename="a"))).file.data == audio


def test_repeated_array_fields() -> None:
    data = body(part("timestamp_granularities[]", b"word"), part("timestamp_granularities[]", b"segment"), FILE)
    assert [v for _, v in parse(data).fields] == ["word", "segment"]


def test_what_the_openai_client_stack_sends() -> None:
    request = httpx2.Request(
        "POST",
        "http://x/",
        files={"file": ("speech.wav", WAV, "audio/wav")},
        data={"model": "m", "timestamp_granularities[]": ["word", "segment"]},
    )
    form = parse(request.read(), boundary_of(request.headers["content-type"]))
    assert form.fields[0] == ("model", "m") and form.file.data == WAV


@pytest.mark.parametrize(
    ("header", "boundary"),
    [
        ("multipart/form-data; boundary=abc", "abc"),
        ("Multipart/Form-Data; boundary=abc", "abc"),
        ('multipart/form-data; boundary="a b:c"', "a b:c"),
        ("multipart/form-data;boundary=abc", "abc"),
    ],
)
def test_boundary_of(header: str, boundary: str) -> None:
    assert boundary_of(header) == boundary


def test_gate_rebuilds_with_its_own_boundary_and_file_name() -> None:
    form = parse(body(part("model", b"m"), part("file", WAV, "Content-Type: text/x-evil", filename="secret name.wav")))
    boundary = new_boundary()
    rebuilt = build_form(form.fields, "file", form.file, boundary)
    again = parse(rebuilt, boundary)
    assert again.fields == form.fields and again.file.data == WAV
    assert b"secret" not in rebuilt and b'filename="audio.wav"' in rebuilt and b"Content-Type: audio/wav" in rebuilt


def test_route_check_types_fields_and_forces_stream_usage() -> None:
    route = load_routes().get("transcriptions")
    data = body(part("model", b"m"), part("temperature", b"0.5"), part("stream", b"true"), FILE)
    checked = route.check_form(data, content_type=f"multipart/form-data; boundary={B}", force_usage=True)
    assert checked.stream is True and checked.include_usage is False and checked.audio_seconds == 0.25
    rebuilt = parse(checked.body, boundary_of(checked.content_type), route.form)  # type: ignore[arg-type]
    assert dict(rebuilt.fields) == {"model": "m", "temperature": "0.5", "stream": "true", "stream_include_usage": "true"}
    # The gate's clear path (no header): the same check, boundary from the first line.
    assert route.check(data, force_usage=True).model == "m"


@pytest.mark.parametrize(
    ("field", "value", "code"),
    [
        ("temperature", b"hot", "wrong_type"),
        ("temperature", b"1.5", "out_of_range"),
        ("temperature", b"NaN", "wrong_type"),
        ("stream", b"yes", "wrong_type"),
        ("response_format", b"mp3", "bad_value"),
        ("language", b"english", "too_long"),
    ],
)
def test_reject_field_values_outside_the_policy(field: str, value: bytes, code: str) -> None:
    route = load_routes().get("transcriptions")
    with pytest.raises(BodyRejected) as info:
        route.check(body(part("model", b"m"), part(field, value), FILE))
    assert info.value.code == code


# --- what is refused -----------------------------------------------------------------------------


def test_reject_lying_boundary() -> None:
    rejected(GOOD, "bad_boundary", boundary="other")
    rejected(body(part("model", b"m"), FILE, boundary="real"), "bad_boundary", boundary="claimed")


def test_reject_missing_final_boundary() -> None:
    dash = b"--" + B.encode()
    rejected(dash + b"\r\n" + part("model", b"m") + b"\r\n" + dash + b"\r\n" + FILE, "no_final_boundary")
    rejected(GOOD[: GOOD.rindex(b"--" + B.encode())], "no_final_boundary")


def test_reject_duplicate_parts() -> None:
    rejected(body(part("model", b"a"), part("model", b"b"), FILE), "duplicate_part")
    rejected(body(part("model", b"a"), FILE, FILE), "duplicate_part")


def test_reject_unknown_parts() -> None:
    rejected(body(part("model", b"a"), part("purpose", b"x"), FILE), "unknown_part")
    rejected(body(part("model", b"a"), part("Model", b"x"), FILE), "bad_part_header")


def test_reject_missing_file() -> None:
    rejected(body(part("model", b"a")), "missing_part")


def test_reject_nested_multipart() -> None:
    inner = body(part("model", b"x"), boundary="inner")
    rejected(
        body(part("model", b"a"), part("file", inner, "Content-Type: multipart/mixed; boundary=inner", filename="a.wav")),
        "nested_multipart",
    )
    rejected(body(part("model", b"a"), part("file", inner, filename="a.wav")), "nested_multipart")
    rejected(body(part("prompt", inner), FILE), "nested_multipart")
    rejected(body(part("prompt", b"x", "Content-Type: message/rfc822"), FILE), "nested_multipart")


@pytest.mark.parametrize(
    "raw_part",
    [
        # A file name that closes its quote and starts a header of its own.
        b'Content-Disposition: form-data; name="file"; filename="a.wav"\r\nContent-Type: text/html\r\nX: "\r\n\r\n' + WAV,
        b'Content-Disposition: form-data; name="file"; filename="a\r\nContent-Type: x/y.wav"\r\n\r\n' + WAV,
        b'Content-Disposition: form-data; name="file"; filename="a.wav"\r\nX-Injected: 1\r\n\r\n' + WAV,
        b'Content-Disposition: form-data; name="file"; filename="a.wav"\r\n Content-Type: folded\r\n\r\n' + WAV,
        b'Content-Disposition: form-data; name="file"; filename="a.wav"\nContent-Type: audio/wav\r\n\r\n' + WAV,
        b'Content-Disposition: form-data; name="file"; filename="a.wav"\rContent-Type: audio/wav\r\n\r\n' + WAV,
        b'Content-Disposition: form-data; name="file"; filename="a.wav"\x00\r\n\r\n' + WAV,
        b"Content-Disposition: form-data; name=\"file\"; filename*=UTF-8''a.wav\r\n\r\n" + WAV,
        b'Content-Disposition: form-data; name="file"; filename*="a.wav"\r\n\r\n' + WAV,
        b"Content-Disposition: form-data; name=file\r\n\r\n" + WAV,
        b'Content-Disposition: attachment; name="file"\r\n\r\n' + WAV,
        b'Content-Disposition: form-data; name="file"; name="model"\r\n\r\n' + WAV,
        b'Content-Disposition: form-data; name="file"\r\nContent-Disposition: form-data; name="model"\r\n\r\n' + WAV,
        b"Content-Transfer-Encoding: base64\r\n\r\n" + WAV,
        b"\r\n" + WAV,
        b'Content-Disposition: form-data; name="file"' + b"x" * 2000 + b"\r\n\r\n" + WAV,
    ],
)
def test_reject_part_header_injection(raw_part: bytes) -> None:
    rejected(body(part("model", b"a"), raw_part), "bad_part_header")


def test_reject_filename_on_a_field() -> None:
    rejected(body(part("model", b"a", filename="m.txt"), FILE), "bad_part_header")


def test_reject_oversized_file() -> None:
    big = WAV + b"\0" * SPEC.max_file_bytes
    with pytest.raises(BodyRejected) as info:
        parse(body(part("model", b"a"), part("file", big, filename="a.wav")))
    assert (info.value.code, info.value.status) == ("file_too_large", 413)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"hello, this is text",
        b"%PDF-1.7",
        b"\x89PNG\r\n\x1a\n",
        b"MZ\x90\x00",
        b"RIFF\0\0\0\0AVI ",
        b"ID3\x04\x00\x00\x00\x00\x00\x00" + b"not a frame",
        b"\xff\xfe\xff\xfe",
        b"<?xml version='1.0'?>",
    ],
)
def test_reject_non_audio_bytes(data: bytes) -> None:
    rejected(body(part("model", b"a"), part("file", data, filename="a.wav")), "not_audio")


@pytest.mark.parametrize(
    "filename",
    [
        "../../etc/passwd",
        "a/b.wav",
        "C:\\x.wav",
        "..",
        ".hidden.wav",
        "/abs.wav",
        "a..wav",
        "x" * 129,
        "tab\there",
        "naïve.wav",
        "voice\u202e.wav",
        "a%2fb.wav",
        "~root.wav",
    ],
)
def test_reject_non_ascii_and_path_like_filenames(filename: str) -> None:
    with pytest.raises(BodyRejected) as info:
        parse(body(part("model", b"a"), part("file", WAV, filename=filename)))
    assert info.value.code in ("bad_filename", "bad_part_header")


def test_reject_non_ascii_filename_is_bad_filename() -> None:
    raw = b'Content-Disposition: form-data; name="file"; filename="sp\xc3\xa9ech.wav"\r\n\r\n' + WAV
    rejected(body(part("model", b"a"), raw), "bad_filename")


def test_reject_too_many_parts() -> None:
    parts = [part("timestamp_granularities[]", b"word")] * MAX_PARTS + [FILE]
    rejected(body(*parts), "too_many_parts")


@pytest.mark.parametrize("value", [b"\xff\xfe", b"a\x00b", b"x" * (MAX_FIELD_BYTES + 1)])
def test_reject_bad_field_values(value: bytes) -> None:
    rejected(body(part("prompt", value), FILE), "bad_field")


def test_reject_preamble_epilogue_and_padding() -> None:
    rejected(b"preamble\r\n" + GOOD, "bad_boundary")
    rejected(GOOD + b"epilogue", "trailing_data")
    rejected(GOOD.replace(b"--" + B.encode() + b"\r\n", b"--" + B.encode() + b"  \r\n", 1), "bad_boundary")
    # A line that only starts like the delimiter.
    rejected(body(part("prompt", b"x\r\n--" + B.encode() + b"x"), FILE), "bad_boundary")


@pytest.mark.parametrize(
    "header",
    [
        "text/plain",
        "multipart/form-data",
        "multipart/form-data; boundary=",
        "multipart/form-data; boundary=a b",
        "multipart/form-data; boundary=abc; charset=utf-8",
        "multipart/mixed; boundary=abc",
        "multipart/form-data; boundary=" + "a" * 71,
        'multipart/form-data; boundary="abc "',
        "multipart/form-data; boundary=ab\r\nX: y",
    ],
)
def test_reject_bad_content_type(header: str) -> None:
    with pytest.raises(BodyRejected) as info:
        boundary_of(header)
    assert info.value.code in ("bad_content_type", "bad_boundary")


# --- whole, byte by byte, trailing garbage ---------------------------------------------------------


def test_every_truncation_is_refused() -> None:
    # The parser takes whole bodies: each prefix of a valid body, fed as if it were all,
    # is refused, except the one that lacks only the optional final CRLF.
    for cut in range(len(GOOD) - 2):
        with pytest.raises(BodyRejected):
            parse(GOOD[:cut])
        with pytest.raises(BodyRejected):
            parse(GOOD[:cut], None)


@pytest.mark.parametrize("garbage", [b"x", b"\r\n\r\n", b"--", b"\r\n--" + B.encode() + b"--", b"\0" * 100])
def test_reject_trailing_garbage(garbage: bytes) -> None:
    rejected(GOOD + garbage, "trailing_data")


# --- differential: the stdlib email parser on generated valid bodies -------------------------------

_BCHARS = string.ascii_letters + string.digits + "'()+_,-./:=?"
_boundaries = st.text(_BCHARS, min_size=1, max_size=70)
_values = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00\r"), max_size=64)
_names = st.sampled_from(sorted(SPEC.fields))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    boundary=_boundaries,
    fields=st.dictionaries(_names, _values, max_size=5),
    audio=st.sampled_from([WAV, mp3(3), flac(), ogg_opus(), m4a()]),
    extra=st.binary(max_size=64),
)
def test_differential_against_the_email_parser(boundary: str, fields: dict[str, str], audio: bytes, extra: bytes) -> None:
    file_bytes = audio + extra
    data = body(*(part(n, v.encode()) for n, v in fields.items()), part("file", file_bytes, filename="a.wav"), boundary=boundary)
    if any(b"--" + boundary.encode() in x for x in [file_bytes, *(v.encode() for v in fields.values())]):
        return  # a boundary inside content is not a valid form
    ours = parse(data, boundary)
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f'Content-Type: multipart/form-data; boundary="{boundary}"\r\n\r\n'.encode() + data
    )
    theirs = {p.get_param("name", header="content-disposition"): p.get_payload(decode=True) for p in message.iter_parts()}
    assert theirs.pop("file") == ours.file.data
    assert {n: v.encode() for n, v in ours.fields} == theirs
    # And the gate's own rebuild says the same.
    gate_boundary = new_boundary()
    again = parse(build_form(ours.fields, "file", ours.file, gate_boundary), gate_boundary)
    assert again.fields == ours.fields and again.file.data == ours.file.data


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=512), boundary=st.one_of(st.none(), _boundaries))
def test_any_bytes_parse_or_raise_our_error(data: bytes, boundary: str | None) -> None:
    try:
        parse(data, boundary)
    except BodyRejected:
        pass
