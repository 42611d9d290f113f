"""Binary HTTP (RFC 9292): the RFC's examples byte for byte, round trips, and rejections.

Vectors: tests/sluice_sdk/vectors/rfc9292_examples.json (RFC 9292 Section 5).
"""

from __future__ import annotations

from typing import Any

import pytest

from sluice_sdk import bhttp
from sluice_sdk.bhttp import (
    InformationalResponse,
    Limits,
    Request,
    Response,
    ResponseData,
    ResponseEnd,
    ResponseHead,
    ResponseStreamDecoder,
    ResponseStreamEncoder,
)
from sluice_sdk.errors import BhttpError

from .conftest import load_vector, unhex

EXAMPLES = load_vector("rfc9292_examples.json")


def _fields(pairs: list[list[str]]) -> tuple[tuple[bytes, bytes], ...]:
    return tuple((n.encode("latin-1"), v.encode("latin-1")) for n, v in pairs)


def _request(doc: dict[str, Any]) -> Request:
    return Request(
        doc["method"].encode(),
        doc["scheme"].encode(),
        doc["authority"].encode(),
        doc["path"].encode(),
        _fields(doc["headers"]),
        doc["content"].encode("latin-1"),
        _fields(doc["trailers"]),
    )


def _response(doc: dict[str, Any]) -> Response:
    return Response(
        doc["status"],
        _fields(doc["headers"]),
        doc["content"].encode("latin-1"),
        _fields(doc["trailers"]),
        tuple(InformationalResponse(i["status"], _fields(i["headers"])) for i in doc["informational"]),
    )


EXAMPLE_REQUEST = _request(EXAMPLES["known_length_request"]["request"])
KNOWN_REQUEST = unhex(EXAMPLES["known_length_request"]["hex"])
INDETERMINATE_REQUEST = unhex(EXAMPLES["indeterminate_length_request"]["hex"])
EXAMPLE_RESPONSE = _response(EXAMPLES["indeterminate_length_response"]["response"])
INDETERMINATE_RESPONSE = unhex(EXAMPLES["indeterminate_length_response"]["hex"])
CHUNKED_EXAMPLE_RESPONSE = _response(EXAMPLES["known_length_response"]["response"])
KNOWN_RESPONSE = unhex(EXAMPLES["known_length_response"]["hex"])


# --- the RFC 9292 examples ----------------------------------------------------------------------


def test_encode_known_length_request_example() -> None:
    assert bhttp.encode_request(EXAMPLE_REQUEST) == KNOWN_REQUEST


def test_decode_known_length_request_example() -> None:
    assert bhttp.decode_request(KNOWN_REQUEST) == EXAMPLE_REQUEST


def test_decode_indeterminate_length_request_example() -> None:
    assert bhttp.decode_request(INDETERMINATE_REQUEST) == EXAMPLE_REQUEST


def test_example_truncations_keep_meaning() -> None:
    # Section 5.1: the known-length example may lose its last two bytes, the
    # indeterminate one up to 12 (10 bytes of padding and two terminators).
    for cut in range(3):
        assert bhttp.decode_request(KNOWN_REQUEST[: len(KNOWN_REQUEST) - cut]) == EXAMPLE_REQUEST
    for cut in range(13):
        assert bhttp.decode_request(INDETERMINATE_REQUEST[: len(INDETERMINATE_REQUEST) - cut]) == EXAMPLE_REQUEST
    assert bhttp.encode_request(EXAMPLE_REQUEST, truncate=True) == KNOWN_REQUEST[:-2]


def test_decode_indeterminate_length_response_example() -> None:
    assert bhttp.decode_response(INDETERMINATE_RESPONSE) == EXAMPLE_RESPONSE
    assert len(EXAMPLE_RESPONSE.content) == 51  # the example's Content-Length


def test_encode_known_length_response_example() -> None:
    assert bhttp.encode_response(CHUNKED_EXAMPLE_RESPONSE) == KNOWN_RESPONSE


def test_decode_known_length_response_example() -> None:
    assert bhttp.decode_response(KNOWN_RESPONSE) == CHUNKED_EXAMPLE_RESPONSE


def test_rfc9458_minimal_messages() -> None:
    # RFC 9458 Appendix A carries a truncated request and a bare 200.
    minimal = Request(b"GET", b"https", b"example.com", b"/")
    assert bhttp.encode_request(minimal, truncate=True) == unhex("00034745540568747470730b6578616d706c652e636f6d012f")
    assert bhttp.encode_response(Response(200), truncate=True) == unhex("0140c8")
    assert bhttp.decode_response(unhex("0140c8")) == Response(200)


# --- round trips -----------------------------------------------------------------------------------


ROUND_TRIP_REQUESTS = [
    EXAMPLE_REQUEST,
    Request(b"POST", b"https", b"", b"/v1/chat/completions", ((b"content-type", b"application/json"),), b'{"a":1}'),
    Request(b"POST", b"http", b"[::1]:8080", b"/x?y=z", (), b"\x00" * 70000, ((b"x-trailer", b"t"),)),
    Request(b"GET", b"https", b"user@host", b"*"),
]
ROUND_TRIP_RESPONSES = [
    EXAMPLE_RESPONSE,
    CHUNKED_EXAMPLE_RESPONSE,
    Response(599, ((b"a", b""),), b"\xff" * 100),
    Response(204, informational=(InformationalResponse(100),)),
]


@pytest.mark.parametrize("request_", ROUND_TRIP_REQUESTS)
def test_request_round_trip(request_: Request) -> None:
    for truncate in (False, True):
        assert bhttp.decode_request(bhttp.encode_request(request_, truncate=truncate)) == request_


@pytest.mark.parametrize("response", ROUND_TRIP_RESPONSES)
def test_response_round_trip(response: Response) -> None:
    for truncate in (False, True):
        assert bhttp.decode_response(bhttp.encode_response(response, truncate=truncate)) == response


def test_padding_accepted() -> None:
    assert bhttp.decode_request(KNOWN_REQUEST + b"\x00" * 50) == EXAMPLE_REQUEST


def test_non_minimal_varints_accepted() -> None:
    # RFC 9292 Section 3: integers need not use the shortest encoding.
    assert bhttp.decode_response(b"\x40\x01" + b"\x80\x00\x00\xc8") == Response(200)
    assert bhttp.decode_varint(b"\xc0\x00\x00\x00\x00\x00\x00\x07") == (7, 8)


def test_header_values() -> None:
    assert EXAMPLE_REQUEST.header_values(b"host") == (b"www.example.com",)
    assert EXAMPLE_RESPONSE.informational[1].headers[1] == (b"link", b"</script.js>; rel=preload; as=script")


# --- rejections -------------------------------------------------------------------------------------


def test_reject_trailing_garbage() -> None:
    with pytest.raises(BhttpError):
        bhttp.decode_request(KNOWN_REQUEST + b"\x01")
    with pytest.raises(BhttpError):
        bhttp.decode_response(INDETERMINATE_RESPONSE + b"\x00\x00x")


def test_reject_wrong_framing() -> None:
    with pytest.raises(BhttpError):
        bhttp.decode_request(KNOWN_RESPONSE)
    with pytest.raises(BhttpError):
        bhttp.decode_response(KNOWN_REQUEST)
    with pytest.raises(BhttpError):
        bhttp.decode_request(b"\x04")
    with pytest.raises(BhttpError):
        bhttp.decode_request(b"")


def test_reject_truncation_inside_a_part() -> None:
    allowed = {len(KNOWN_REQUEST), len(KNOWN_REQUEST) - 1, len(KNOWN_REQUEST) - 2}
    allowed.add(len(b"\x00\x03GET\x05https\x00\x0a/hello.txt"))  # right after the control data
    for end in range(len(KNOWN_REQUEST)):
        if end in allowed:
            continue
        with pytest.raises(BhttpError):
            bhttp.decode_request(KNOWN_REQUEST[:end])


def test_reject_truncated_response_before_final_status() -> None:
    with pytest.raises(BhttpError):
        bhttp.decode_response(b"\x01\x40\x66\x00")  # informational 102 then nothing


@pytest.mark.parametrize(
    "name",
    [b"", b"Host", b":path", b":method", b":status", b"x y", b"a\x00", b"\xff", b"a:b"],
)
def test_reject_bad_field_names(name: bytes) -> None:
    with pytest.raises(BhttpError):
        Request(b"GET", b"https", b"", b"/", ((name, b"v"),))
    if name:
        line = bytes([len(name)]) + name + b"\x00"
        wire = b"\x00\x03GET\x05https\x00\x01/" + bhttp.encode_varint(len(line)) + line
        with pytest.raises(BhttpError):
            bhttp.decode_request(wire)


@pytest.mark.parametrize("value", [b" v", b"v ", b"\tv", b"a\r\nb", b"a\nb", b"a\x00", b"a\x01b", b"a\x7fb"])
def test_reject_bad_field_values(value: bytes) -> None:
    with pytest.raises(BhttpError):
        Response(200, ((b"x", value),))
    wire = b"\x01\x40\xc8" + bytes([3 + len(value)]) + b"\x01x" + bytes([len(value)]) + value
    with pytest.raises(BhttpError):
        bhttp.decode_response(wire)


@pytest.mark.parametrize(
    ("method", "scheme", "authority", "path"),
    [
        (b"", b"https", b"", b"/"),
        (b"G T", b"https", b"", b"/"),
        (b"GET", b"", b"", b"/"),
        (b"GET", b"1http", b"", b"/"),
        (b"GET", b"https", b"a b", b"/"),
        (b"GET", b"https", b"", b""),
        (b"GET", b"https", b"", b"/a b"),
        (b"GET", b"https", b"", b"/\r\n"),
    ],
)
def test_reject_bad_control_data(method: bytes, scheme: bytes, authority: bytes, path: bytes) -> None:
    with pytest.raises(BhttpError):
        Request(method, scheme, authority, path)
    wire = b"\x00" + b"".join(bytes([len(p)]) + p for p in (method, scheme, authority, path))
    with pytest.raises(BhttpError):
        bhttp.decode_request(wire)


@pytest.mark.parametrize("status", [0, 99, 100, 199, 600, 1000])
def test_reject_bad_final_status(status: int) -> None:
    with pytest.raises(BhttpError):
        Response(status)
    if not 100 <= status <= 199:
        with pytest.raises(BhttpError):
            bhttp.decode_response(b"\x01" + bhttp.encode_varint(status))


def test_reject_over_limits() -> None:
    small = Limits(max_message=1000, max_content=10, max_field_section=20, max_field_lines=2, max_control=5)
    big_content = bhttp.encode_request(Request(b"GET", b"https", b"", b"/", content=b"x" * 11))
    with pytest.raises(BhttpError):
        bhttp.decode_request(big_content, small)
    many = bhttp.encode_request(Request(b"GET", b"https", b"", b"/", ((b"a", b"1"),) * 3))
    with pytest.raises(BhttpError):
        bhttp.decode_request(many, small)
    long_field = bhttp.encode_request(Request(b"GET", b"https", b"", b"/", ((b"a", b"1" * 30),)))
    with pytest.raises(BhttpError):
        bhttp.decode_request(long_field, small)
    long_path = bhttp.encode_request(Request(b"GET", b"https", b"", b"/abcdef"))
    with pytest.raises(BhttpError):
        bhttp.decode_request(long_path, small)
    with pytest.raises(BhttpError):
        bhttp.decode_request(b"\x00" * 1001, small)
    # A declared length far beyond the data is refused before anything is allocated.
    with pytest.raises(BhttpError):
        bhttp.decode_request(b"\x00\xff\xff\xff\xff\xff\xff\xff\xff")


def test_reject_too_many_informational() -> None:
    wire = b"\x01" + b"\x40\x64\x00" * 9 + b"\x40\xc8"
    with pytest.raises(BhttpError):
        bhttp.decode_response(wire)
    assert len(bhttp.decode_response(b"\x01" + b"\x40\x64\x00" * 8 + b"\x40\xc8").informational) == 8


def test_reject_non_bytes() -> None:
    with pytest.raises(BhttpError):
        Request("GET", b"https", b"", b"/")  # type: ignore[arg-type]
    with pytest.raises(BhttpError):
        Response(200, ((b"a", "b"),))  # type: ignore[arg-type]
    with pytest.raises(BhttpError):
        bhttp.encode_varint(1 << 62)


# --- streaming (indeterminate-length responses) -------------------------------------------------------


def _collect(events: list[bhttp.ResponseEvent]) -> Response:
    head = events[0]
    assert isinstance(head, ResponseHead)
    end = events[-1]
    assert isinstance(end, ResponseEnd)
    assert all(isinstance(e, ResponseData) for e in events[1:-1])
    content = b"".join(e.data for e in events[1:-1] if isinstance(e, ResponseData))
    return Response(head.status, head.headers, content, end.trailers, head.informational)


def _stream(data: bytes, step: int) -> list[bhttp.ResponseEvent]:
    decoder = ResponseStreamDecoder()
    events: list[bhttp.ResponseEvent] = []
    for i in range(0, len(data), step):
        events += decoder.feed(data[i : i + step])
    return events + decoder.finish()


@pytest.mark.parametrize("step", [1, 2, 7, 1000])
def test_stream_decoder_example(step: int) -> None:
    assert _collect(_stream(INDETERMINATE_RESPONSE, step)) == EXAMPLE_RESPONSE
    assert _collect(_stream(KNOWN_RESPONSE, step)) == CHUNKED_EXAMPLE_RESPONSE


def test_stream_decoder_emits_head_before_the_end() -> None:
    decoder = ResponseStreamDecoder()
    encoder = ResponseStreamEncoder()
    head = decoder.feed(encoder.head(200, [(b"content-type", b"text/event-stream")]))
    assert head == [ResponseHead(200, ((b"content-type", b"text/event-stream"),))]
    assert decoder.feed(encoder.data(b"data: 1\n\n")) == [ResponseData(b"data: 1\n\n")]
    assert decoder.feed(encoder.data(b"")) == []
    assert decoder.feed(encoder.end([(b"x-usage", b"12")])) == [ResponseEnd(((b"x-usage", b"12"),))]
    assert decoder.finish() == []


def test_stream_encoder_matches_whole_decoder() -> None:
    encoder = ResponseStreamEncoder()
    wire = encoder.head(200, [(b"a", b"b")], [InformationalResponse(103, ((b"link", b"<x>"),))])
    wire += encoder.data(b"hello ") + encoder.data(b"world") + encoder.end()
    assert bhttp.decode_response(wire) == Response(
        200, ((b"a", b"b"),), b"hello world", (), (InformationalResponse(103, ((b"link", b"<x>"),)),)
    )
    with pytest.raises(BhttpError):
        encoder.data(b"late")


def test_stream_decoder_allowed_truncations() -> None:
    assert _stream(b"\x03\x40\xc8", 1) == [ResponseHead(200, ()), ResponseEnd()]
    assert _stream(b"\x03\x40\xc8\x01a\x01b\x00", 1) == [ResponseHead(200, ((b"a", b"b"),)), ResponseEnd()]
    assert _stream(b"\x03\x40\xc8\x00\x01x\x00", 1)[-1] == ResponseEnd()


@pytest.mark.parametrize(
    "wire",
    [
        b"",
        b"\x03",
        b"\x03\x40\x66",  # informational, then nothing
        b"\x03\x40\xc8\x01a",  # inside a field line
        b"\x03\x40\xc8\x00\x03ab",  # inside a content chunk
        b"\x03\x40\xc8\x00\x01x",  # content without its terminator
        b"\x03\x40\xc8\x00\x00\x01a",  # inside the trailers
        b"\x03\x40\xc8\x00\x00\x00\x01",  # non-zero padding
        b"\x02\x00",  # a request
        b"\x03\x40\xc8\x01A\x00\x00",  # uppercase name
    ],
)
def test_reject_stream_decoder(wire: bytes) -> None:
    decoder = ResponseStreamDecoder()
    with pytest.raises(BhttpError):
        for byte in wire:
            decoder.feed(bytes([byte]))
        decoder.finish()
    with pytest.raises(BhttpError):  # failed stays failed
        decoder.feed(b"\x00")


def test_reject_stream_decoder_over_limits() -> None:
    decoder = ResponseStreamDecoder(Limits(max_content=4))
    decoder.feed(b"\x03\x40\xc8\x00")
    with pytest.raises(BhttpError):
        decoder.feed(b"\x05")
    decoder = ResponseStreamDecoder(Limits(max_field_section=8))
    with pytest.raises(BhttpError):
        decoder.feed(b"\x03\x40\xc8\x01a\x10")
    decoder = ResponseStreamDecoder(Limits(max_message=10))
    with pytest.raises(BhttpError):
        decoder.feed(b"\x03\x40\xc8\x00" + b"\x07" + b"x" * 7)
