"""Unit tests of the sans-IO HTTP/1.1 module (cluster._http1).

Every parser is fed its input whole, byte by byte, and with trailing garbage
(h11's ``tr()`` habit); rejection tests are named ``test_reject_*``.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cluster import _http1
from cluster._http1 import (
    LAST_CHUNK,
    MAX_CHUNK_LINE_BYTES,
    MAX_HEAD_BYTES,
    MAX_HEADERS,
    BodyDecoder,
    ChunkedDecoder,
    CloseDelimitedDecoder,
    LengthDecoder,
    LocalProtocolError,
    RemoteProtocolError,
    build_request_head,
    build_response_head,
    check_response_start,
    encode_chunk,
    find_head_end,
    parse_request_head,
    parse_response_head,
    response_body_decoder,
)
from policy.errors import LocalError, PeerError

GARBAGE = b"GARBAGE\x00\r\nmore"


# --------------------------------------------------------------------------- helpers


def head_end_whole(data: bytes) -> int:
    return find_head_end(data)


def head_end_bytewise(data: bytes) -> int:
    """Grow a buffer one byte at a time as a connection would; the index once found."""
    buf = bytearray()
    for i in range(len(data)):
        buf += data[i : i + 1]
        end = find_head_end(buf)
        if end >= 0:
            return end
    return -1


def tr_head(data: bytes) -> bytes:
    """The head found in ``data`` three ways; all must agree."""
    end = head_end_whole(data)
    assert end == len(data)
    assert head_end_bytewise(data) == end
    assert find_head_end(data + GARBAGE) == end
    assert find_head_end(data[:-1]) == -1
    return data[:end]


def feed_whole(decoder: BodyDecoder, data: bytes) -> bytes:
    return b"".join(decoder.feed(data))


def feed_bytewise(decoder: BodyDecoder, data: bytes) -> bytes:
    out = []
    for i in range(len(data)):
        out.extend(decoder.feed(data[i : i + 1]))
    return b"".join(out)


def tr_body(make: type[BodyDecoder] | object, data: bytes, expected: bytes) -> None:
    """A body decoder must yield ``expected`` and finish for every split."""
    for feed in (feed_whole, feed_bytewise):
        decoder = make()  # type: ignore[operator]
        assert feed(decoder, data) == expected
        assert decoder.done
        assert decoder.unused == b""
    decoder = make()  # type: ignore[operator]
    assert feed_whole(decoder, data + GARBAGE) == expected
    assert decoder.done
    assert decoder.unused == GARBAGE
    decoder = make()  # type: ignore[operator]
    feed_whole(decoder, data[:-1])
    assert not decoder.done


# --------------------------------------------------------------------------- response heads

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 13\r\nX-Empty:\r\nX-Spaces: \t a  b \t\r\n\r\n"


def test_response_head_fields() -> None:
    head = parse_response_head(tr_head(RESPONSE))
    assert head.status == 200
    assert head.http_minor == 1
    assert head.content_length == 13
    assert not head.chunked
    assert head.keep_alive
    assert head.content_type == "application/json"
    assert head.get(b"x-empty") == b""
    assert head.get(b"x-spaces") == b"a  b"
    assert head.get(b"missing") is None
    assert [name for name, _ in head.headers] == [b"content-type", b"content-length", b"x-empty", b"x-spaces"]


def test_response_head_chunked_and_close() -> None:
    data = b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: Chunked\r\nConnection: keep-alive, Close\r\n\r\n"
    head = parse_response_head(tr_head(data))
    assert head.status == 404
    assert head.chunked
    assert head.content_length is None
    assert not head.keep_alive
    assert head.content_type == ""


@pytest.mark.parametrize("status_line", [b"HTTP/1.1 204", b"HTTP/1.1 204 ", b"HTTP/1.1 204 No\tContent \xff"])
def test_response_head_reason_optional(status_line: bytes) -> None:
    head = parse_response_head(tr_head(status_line + b"\r\n\r\n"))
    assert head.status == 204
    assert head.headers == ()


def test_response_head_http10_never_keep_alive() -> None:
    head = parse_response_head(tr_head(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n\r\n"))
    assert head.http_minor == 0
    assert not head.keep_alive


def test_response_head_accepts_parse_of_bytearray() -> None:
    assert parse_response_head(bytearray(RESPONSE)).status == 200


def test_head_exactly_at_limit_is_accepted() -> None:
    start = b"HTTP/1.1 200 OK\r\nx-pad: "
    pad = MAX_HEAD_BYTES - len(start) - 4
    data = start + b"a" * pad + b"\r\n\r\n"
    assert len(data) == MAX_HEAD_BYTES
    assert parse_response_head(tr_head(data)).get(b"x-pad") == b"a" * pad


def test_max_headers_is_accepted() -> None:
    fields = b"".join(b"x-%d: v\r\n" % i for i in range(MAX_HEADERS))
    head = parse_response_head(tr_head(b"HTTP/1.1 200 OK\r\n" + fields + b"\r\n"))
    assert len(head.headers) == MAX_HEADERS


@pytest.mark.parametrize(
    "status_line",
    [
        b"HTTP/1.1 20 OK",
        b"HTTP/1.1 2000 OK",
        b"HTTP/1.1 099 Low",
        b"HTTP/2 200 OK",
        b"HTTP/1.2 200 OK",
        b"http/1.1 200 OK",
        b"HTTP/1.1  200 OK",
        b"HTTP/1.1 200 O\x00K",
        b"HTTP/1.1 abc OK",
        b" HTTP/1.1 200 OK",
        b"ICY 200 OK",
        b"",
    ],
)
def test_reject_bad_status_line(status_line: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        parse_response_head(status_line + b"\r\ncontent-length: 0\r\n\r\n")


@pytest.mark.parametrize("status", [b"100 Continue", b"101 Switching Protocols", b"103 Early Hints"])
def test_reject_informational_response(status: bytes) -> None:
    with pytest.raises(RemoteProtocolError, match="unexpected_informational"):
        parse_response_head(b"HTTP/1.1 " + status + b"\r\n\r\n")


def test_reject_huge_head() -> None:
    data = b"HTTP/1.1 200 OK\r\nx-pad: " + b"a" * MAX_HEAD_BYTES
    with pytest.raises(RemoteProtocolError) as info:
        find_head_end(data)
    assert info.value.status == 431
    # byte by byte: rejected as soon as the limit is reached, not later
    buf = bytearray()
    with pytest.raises(RemoteProtocolError):
        for i in range(len(data)):
            buf += data[i : i + 1]
            find_head_end(buf)
    assert len(buf) == MAX_HEAD_BYTES
    # a complete head just over the limit is refused by the parser too
    big = b"HTTP/1.1 200 OK\r\nx-pad: " + b"a" * MAX_HEAD_BYTES + b"\r\n\r\n"
    with pytest.raises(RemoteProtocolError):
        find_head_end(big)
    with pytest.raises(RemoteProtocolError):
        parse_response_head(big)


def test_reject_too_many_headers() -> None:
    fields = b"".join(b"x-%d: v\r\n" % i for i in range(MAX_HEADERS + 1))
    with pytest.raises(RemoteProtocolError, match="too_many_headers"):
        parse_response_head(b"HTTP/1.1 200 OK\r\n" + fields + b"\r\n")


def test_reject_conflicting_lengths() -> None:
    with pytest.raises(RemoteProtocolError, match="conflicting_length"):
        parse_response_head(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n")
    with pytest.raises(RemoteProtocolError, match="conflicting_length"):
        parse_request_head(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n")


def test_reject_transfer_encoding_in_http10() -> None:
    # RFC 9112 section 6.1 (found by the h11 differential: h11 refuses this response too)
    with pytest.raises(RemoteProtocolError, match="transfer_encoding_http10"):
        parse_response_head(b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    with pytest.raises(RemoteProtocolError, match="transfer_encoding_http10"):
        parse_request_head(b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert parse_response_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n").chunked


def test_reject_duplicate_content_length() -> None:
    with pytest.raises(RemoteProtocolError, match="duplicate_content_length"):
        parse_response_head(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n")


@pytest.mark.parametrize("value", [b"-1", b"+5", b"1 2", b"5,5", b"0x10", b"", b"1.0", b"\xd9\xa1", b"1" * 19, b"five"])
def test_reject_invalid_content_length(value: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        parse_response_head(b"HTTP/1.1 200 OK\r\nContent-Length: " + value + b"\r\n\r\n")


@pytest.mark.parametrize("value", [b"gzip", b"gzip, chunked", b"chunked, gzip", b"identity", b"chunked;x=1"])
def test_reject_transfer_encoding_other_than_chunked(value: bytes) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        parse_response_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: " + value + b"\r\n\r\n")
    assert info.value.status == 501


def test_reject_duplicate_transfer_encoding() -> None:
    with pytest.raises(RemoteProtocolError):
        parse_response_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n")


def test_reject_duplicate_content_type() -> None:
    with pytest.raises(RemoteProtocolError, match="duplicate_header"):
        parse_response_head(b"HTTP/1.1 200 OK\r\nContent-Type: a/b\r\nContent-Type: c/d\r\n\r\n")


def test_reject_obs_fold() -> None:
    for fold in (b" ", b"\t"):
        with pytest.raises(RemoteProtocolError, match="bad_header"):
            parse_response_head(b"HTTP/1.1 200 OK\r\nX-A: one\r\n" + fold + b"two\r\n\r\n")


def test_reject_space_before_colon() -> None:
    with pytest.raises(RemoteProtocolError, match="bad_header"):
        parse_response_head(b"HTTP/1.1 200 OK\r\nContent-Length : 0\r\n\r\n")


@pytest.mark.parametrize(
    "line", [b"X-A b", b": empty-name", b"X(A): b", b"X-A: a\x00b", b"X-A: a\x7fb", b"X-A: a\x1bb", b"\xffX: a"]
)
def test_reject_bad_header_line(line: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        parse_response_head(b"HTTP/1.1 200 OK\r\n" + line + b"\r\n\r\n")


def test_reject_bare_cr() -> None:
    for data in (
        b"HTTP/1.1 200 OK\r\nX-A: a\rb\r\n\r\n",
        b"HTTP/1.1 200 OK\rX-A: b\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-A\r: b\r\n\r\n",
    ):
        with pytest.raises(RemoteProtocolError):
            parse_response_head(tr_head(data))


def test_reject_bare_lf() -> None:
    # a bare LF inside a line: the line is invalid
    with pytest.raises(RemoteProtocolError):
        parse_response_head(b"HTTP/1.1 200 OK\r\nX-A: a\nb\r\n\r\n")
    # bare-LF line ends: refused as soon as the blank line shows, not waited on
    for data in (b"HTTP/1.1 200 OK\nX-A: b\n\n", b"HTTP/1.1 200 OK\r\nX-A: b\n\r\n"):
        with pytest.raises(RemoteProtocolError, match="bare_lf"):
            find_head_end(data)
        with pytest.raises(RemoteProtocolError):
            head_end_bytewise(data)


def test_response_start_check_accepts_any_prefix() -> None:
    for i in range(len(RESPONSE) + 1):
        check_response_start(RESPONSE[:i])
    check_response_start(bytearray(b"HTTP/1.0 200 OK\r\n"))


@pytest.mark.parametrize("start", [b"SSH-2.0-OpenSSH", b"\x16\x03\x01", b"HTTP/2 200", b"http/1.1", b"H\x00"])
def test_reject_foreign_protocol_at_once(start: bytes) -> None:
    with pytest.raises(RemoteProtocolError, match="bad_status_line"):
        check_response_start(start)


def test_reject_incomplete_head_given_to_parser() -> None:
    with pytest.raises(RemoteProtocolError):
        parse_response_head(b"HTTP/1.1 200 OK\r\n")


def test_reject_head_with_garbage_given_to_parser() -> None:
    with pytest.raises(RemoteProtocolError):
        parse_response_head(RESPONSE + b"X: y\r\n\r\n")


# --------------------------------------------------------------------------- request heads

REQUEST = (
    b"POST /v1/chat/completions?x=1&y=%20 HTTP/1.1\r\n"
    b"Host: 127.0.0.1:8000\r\n"
    b"Authorization: Bearer abc\r\n"
    b"Content-Type: application/json\r\n"
    b"Content-Length: 2\r\n"
    b"\r\n"
)


def test_request_head_fields() -> None:
    head = parse_request_head(tr_head(REQUEST))
    assert head.method == "POST"
    assert head.target == "/v1/chat/completions?x=1&y=%20"
    assert head.path == "/v1/chat/completions"
    assert head.content_length == 2
    assert head.keep_alive
    assert head.get(b"authorization") == b"Bearer abc"


def test_request_head_http10_without_host() -> None:
    head = parse_request_head(tr_head(b"GET /health HTTP/1.0\r\n\r\n"))
    assert head.http_minor == 0
    assert not head.keep_alive
    assert head.content_length is None


def test_request_head_connection_close() -> None:
    head = parse_request_head(tr_head(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"))
    assert not head.keep_alive


@pytest.mark.parametrize(
    "line",
    [
        b"GET http://example.com/ HTTP/1.1",
        b"OPTIONS * HTTP/1.1",
        b"CONNECT a:443 HTTP/1.1",
        b"GET / HTTP/1.1 extra",
        b"GET  / HTTP/1.1",
        b"GET /a b HTTP/1.1",
        b"GET /<script> HTTP/1.1",
        b"GET /\x7f HTTP/1.1",
        b"GET /\xc3\xa9 HTTP/1.1",
        b"GET / HTTP/2.0",
        b"G(T / HTTP/1.1",
        b"GET /",
        b"",
    ],
)
def test_reject_bad_request_line(line: bytes) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        parse_request_head(line + b"\r\nHost: a\r\n\r\n")
    assert info.value.status == 400


def test_reject_request_missing_or_duplicate_host() -> None:
    with pytest.raises(RemoteProtocolError, match="bad_host"):
        parse_request_head(b"GET / HTTP/1.1\r\n\r\n")
    with pytest.raises(RemoteProtocolError, match="bad_host"):
        parse_request_head(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")


def test_reject_request_duplicate_authorization_on_lookup() -> None:
    head = parse_request_head(b"GET / HTTP/1.1\r\nHost: a\r\nAuthorization: x\r\nauthorization: y\r\n\r\n")
    with pytest.raises(RemoteProtocolError):
        head.get(b"authorization")


def test_errors_are_project_errors_without_input_echo() -> None:
    secret = b"sk-secret-value"
    with pytest.raises(RemoteProtocolError) as info:
        parse_request_head(b"GET /" + secret + b" \r\nHost: a\r\n\r\n")
    assert isinstance(info.value, PeerError)
    assert "secret" not in str(info.value)
    assert "secret" not in repr(info.value)


# --------------------------------------------------------------------------- building heads


def test_build_request_head_with_body_and_token() -> None:
    data = build_request_head("POST", "/v1/embeddings", "node-7.cluster", 8000, 17, "tok-EN_1.~+/==")
    assert data == (
        b"POST /v1/embeddings HTTP/1.1\r\n"
        b"host: node-7.cluster:8000\r\n"
        b"authorization: Bearer tok-EN_1.~+/==\r\n"
        b"content-type: application/json\r\n"
        b"content-length: 17\r\n"
        b"\r\n"
    )
    assert b"expect" not in data.lower()
    head = parse_request_head(data)
    assert head.content_length == 17
    assert head.get(b"host") == b"node-7.cluster:8000"


def test_build_request_head_without_body() -> None:
    data = build_request_head("GET", "/health", "10.0.0.5", 80, None)
    assert data == b"GET /health HTTP/1.1\r\nhost: 10.0.0.5:80\r\n\r\n"


def test_build_request_head_brackets_ipv6() -> None:
    assert b"host: [::1]:9000\r\n" in build_request_head("GET", "/", "::1", 9000, None)


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (("get", "/", "h", 1, None, None), "bad_method"),
        (("GET", "/a\r\nX: y", "h", 1, None, None), "bad_path"),
        (("GET", "/a b", "h", 1, None, None), "bad_path"),
        (("GET", "relative", "h", 1, None, None), "bad_path"),
        (("GET", "/\u00e9", "h", 1, None, None), "bad_path"),
        (("GET", "/", "h\r\nX: y", 1, None, None), "bad_host"),
        (("GET", "/", "h/x", 1, None, None), "bad_host"),
        (("GET", "/", "h", 0, None, None), "bad_port"),
        (("GET", "/", "h", 65536, None, None), "bad_port"),
        (("GET", "/", "h", 1, None, "a b"), "bad_token"),
        (("GET", "/", "h", 1, None, "a\r\nX: y"), "bad_token"),
        (("GET", "/", "h", 1, None, ""), "bad_token"),
        (("GET", "/", "h", 1, None, "t\u00e9"), "bad_token"),
        (("POST", "/", "h", 1, -1, None), "bad_content_length"),
    ],
)
def test_reject_unsafe_request_head(args: tuple, code: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(LocalProtocolError) as info:
        build_request_head(*args)
    assert info.value.code == code
    assert isinstance(info.value, LocalError)


def test_build_response_head_round_trip() -> None:
    data = build_response_head(405, "application/json", 12, close=True, extra=(("allow", "POST"),))
    head = parse_response_head(tr_head(data))
    assert head.status == 405
    assert head.content_length == 12
    assert not head.keep_alive
    assert head.get(b"allow") == b"POST"
    chunked = parse_response_head(build_response_head(200, "text/event-stream", None, chunked=True))
    assert chunked.chunked and chunked.keep_alive


def test_reject_bad_response_head_arguments() -> None:
    with pytest.raises(LocalProtocolError):
        build_response_head(200, None, 5, chunked=True)
    with pytest.raises(LocalProtocolError):
        build_response_head(200, None, None)
    with pytest.raises(LocalProtocolError):
        build_response_head(299, None, 0)
    with pytest.raises(LocalProtocolError):
        build_response_head(200, None, 0, extra=(("x", "a\r\nb"),))
    with pytest.raises(LocalProtocolError):
        encode_chunk(b"")


# --------------------------------------------------------------------------- bodies


def test_length_decoder() -> None:
    tr_body(lambda: LengthDecoder(11), b"hello world", b"hello world")
    decoder = LengthDecoder(0)
    assert decoder.done
    assert decoder.feed(b"x") == []
    assert decoder.unused == b"x"


def test_length_decoder_eof_before_end() -> None:
    decoder = LengthDecoder(5)
    decoder.feed(b"abc")
    with pytest.raises(RemoteProtocolError, match="body_truncated"):
        decoder.feed_eof()


def test_close_delimited_decoder() -> None:
    decoder = CloseDelimitedDecoder()
    assert feed_bytewise(decoder, b"abc") == b"abc"
    assert not decoder.done
    decoder.feed_eof()
    assert decoder.done


CHUNKED = b'5\r\nhello\r\n1;name=value;q="a \\" b"\r\n \r\nB\r\nworld, more\r\n0\r\n\r\n'


def test_chunked_decoder() -> None:
    tr_body(ChunkedDecoder, CHUNKED, b"hello world, more")


def test_chunked_decoder_trailers_skipped() -> None:
    data = b"3\r\nabc\r\n0\r\nX-Checksum: 1\r\nX-Other: two words\r\n\r\n"
    tr_body(ChunkedDecoder, data, b"abc")


def test_chunked_decoder_pieces_arrive_incrementally() -> None:
    decoder = ChunkedDecoder()
    assert decoder.feed(b"a\r\n01234") == [b"01234"]
    assert decoder.feed(b"56789\r\n") == [b"56789"]
    assert not decoder.done
    assert decoder.feed(b"0\r\n") == []
    assert not decoder.done
    assert decoder.feed(b"\r\n") == []
    assert decoder.done


def test_chunked_round_trip_with_encoder() -> None:
    pieces = [b"data: 1\n\n", b"x" * 1000, b"\r\n"]
    data = b"".join(encode_chunk(p) for p in pieces) + LAST_CHUNK
    tr_body(ChunkedDecoder, data, b"".join(pieces))


def test_chunked_eof_before_end() -> None:
    decoder = ChunkedDecoder()
    decoder.feed(b"5\r\nhel")
    with pytest.raises(RemoteProtocolError, match="body_truncated"):
        decoder.feed_eof()


@pytest.mark.parametrize(
    "line",
    [
        b"g",
        b"",
        b"-1",
        b" 5",
        b"5 ",
        b"0x5",
        b"5;",
        b"5;=x",
        b"5;a=",
        b'5;a="unterminated',
        b"5;a=b c",
        b"1" * 16,
        b"+5",
    ],
)
def test_reject_bad_chunk_size(line: bytes) -> None:
    for feed in (feed_whole, feed_bytewise):
        with pytest.raises(RemoteProtocolError):
            feed(ChunkedDecoder(), line + b"\r\nhello\r\n0\r\n\r\n")


def test_reject_chunk_size_line_too_long() -> None:
    line = b"5;" + b"a" * MAX_CHUNK_LINE_BYTES
    with pytest.raises(RemoteProtocolError, match="chunk_line_too_long"):
        feed_whole(ChunkedDecoder(), line)  # no CRLF yet: refused before it grows more
    with pytest.raises(RemoteProtocolError, match="chunk_line_too_long"):
        feed_whole(ChunkedDecoder(), line + b"\r\n")


def test_reject_missing_chunk_crlf() -> None:
    for data in (b"5\r\nhelloX\r\n0\r\n\r\n", b"5\r\nhello\rX0\r\n\r\n", b"5\r\nhello\n0\r\n\r\n"):
        for feed in (feed_whole, feed_bytewise):
            with pytest.raises(RemoteProtocolError, match="bad_chunk_end"):
                feed(ChunkedDecoder(), data)


def test_reject_chunk_bare_lf() -> None:
    for data in (b"5\nhello\r\n0\r\n\r\n", b"5\r\nhello\r\n0\n\r\n", b"5\r\r\nhello\r\n0\r\n\r\n"):
        for feed in (feed_whole, feed_bytewise):
            with pytest.raises(RemoteProtocolError):
                feed(ChunkedDecoder(), data)


def test_reject_bad_trailer() -> None:
    for trailer in (b" folded\r\n", b"X : y\r\n", b"X: a\x00b\r\n", b"no-colon\r\n"):
        with pytest.raises(RemoteProtocolError):
            feed_whole(ChunkedDecoder(), b"0\r\n" + trailer + b"\r\n")


def test_reject_trailers_too_large() -> None:
    trailer = b"x-pad: " + b"a" * 1000 + b"\r\n"
    with pytest.raises(RemoteProtocolError):
        feed_whole(ChunkedDecoder(), b"0\r\n" + trailer * 20 + b"\r\n")
    with pytest.raises(RemoteProtocolError, match="too_many_trailers"):
        feed_whole(ChunkedDecoder(), b"0\r\n" + b"x: y\r\n" * (MAX_HEADERS + 1) + b"\r\n")


def test_response_body_decoder_choice() -> None:
    def head(data: bytes) -> _http1.ResponseHead:
        return parse_response_head(data)

    assert isinstance(response_body_decoder(head(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\n"), "GET"), LengthDecoder)
    assert isinstance(
        response_body_decoder(head(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"), "POST"), ChunkedDecoder
    )
    assert isinstance(response_body_decoder(head(b"HTTP/1.1 200 OK\r\n\r\n"), "GET"), CloseDelimitedDecoder)
    assert response_body_decoder(head(b"HTTP/1.1 204 No Content\r\n\r\n"), "GET").done
    assert response_body_decoder(head(b"HTTP/1.1 304 Not Modified\r\n\r\n"), "GET").done
    assert response_body_decoder(head(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\n"), "HEAD").done


# --------------------------------------------------------------------------- fuzz invariant
# Any input either parses or raises the project's own error, nothing else.


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_heads_parse_or_raise_project_error(data: bytes) -> None:
    for parse in (parse_response_head, parse_request_head):
        for candidate in (data, data + b"\r\n\r\n", b"HTTP/1.1 200 OK\r\n" + data + b"\r\n\r\n"):
            try:
                find_head_end(candidate)
                parse(candidate)
            except RemoteProtocolError:
                pass


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.integers(min_value=1, max_value=7))
def test_fuzz_chunked_parse_or_raise_project_error(data: bytes, step: int) -> None:
    decoder = ChunkedDecoder()
    try:
        for i in range(0, len(data), step):
            decoder.feed(data[i : i + step])
        decoder.feed_eof()
    except RemoteProtocolError:
        pass


@settings(max_examples=100, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=50), max_size=8), st.integers(min_value=1, max_value=9))
def test_chunked_any_split_round_trips(pieces: list[bytes], step: int) -> None:
    data = b"".join(encode_chunk(p) for p in pieces) + LAST_CHUNK
    decoder = ChunkedDecoder()
    out = []
    for i in range(0, len(data), step):
        out.extend(decoder.feed(data[i : i + step]))
    assert b"".join(out) == b"".join(pieces)
    assert decoder.done
