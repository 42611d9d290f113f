"""`cluster/_http1.py` against h11, an independent HTTP/1.1 implementation, on generated responses.

The invariant: our parser is a strict subset of HTTP/1.1. Whatever response
it accepts, h11 accepts too, with the same status, the same header fields in
the same order and the same body bytes; where h11 refuses a response, ours
refuses it as well. Our extra refusals are the documented strictness
(bare LF, obs-fold, 1xx, Transfer-Encoding other than chunked, Content-Length
beside chunked, and the named size bounds), which the generator also
produces so that both branches are exercised.

Responses are generated from a small grammar with hypothesis, then fed whole,
byte by byte, and with a random split; every way must give the same result.
"""

from __future__ import annotations

import h11
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cluster._http1 import (
    RemoteProtocolError,
    find_head_end,
    parse_response_head,
    response_body_decoder,
)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

TOKEN = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-!#$%&'*+.^_`|~", min_size=1, max_size=12)
VALUE = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=20).map(lambda s: s.strip(" "))
# Bytes a hostile or broken peer slips into heads and chunk lines.
NOISE = st.sampled_from([b"", b"\n", b"\r", b" ", b"\t", b"\x00", b"\x7f", b":", b"\r\n", b"0", b";", b"x"])


@st.composite
def responses(draw: st.DrawFn) -> bytes:
    minor = draw(st.sampled_from([b"0", b"1", b"1", b"1", b"2"]))
    status = draw(st.sampled_from([100, 101, 200, 200, 201, 204, 304, 400, 404, 500, 502, 999]))
    reason = draw(st.sampled_from([b"OK", b"", b"Some Reason", b"x\tx"]))
    fields: list[bytes] = []
    for name, value in draw(st.lists(st.tuples(TOKEN, VALUE), max_size=4)):
        fields.append(name.encode() + b": " + value.encode())
    body = draw(st.binary(max_size=40))
    framing = draw(st.sampled_from(["length", "chunked", "close", "length_wrong", "both", "te_other", "cl_twice"]))
    if framing == "length":
        fields.append(b"Content-Length: %d" % len(body))
        payload = body
    elif framing == "length_wrong":
        fields.append(b"Content-Length: %d" % (len(body) + draw(st.integers(-3, 3))))
        payload = body
    elif framing == "cl_twice":
        fields += [b"Content-Length: %d" % len(body)] * 2
        payload = body
    elif framing in ("chunked", "both", "te_other"):
        fields.append(b"Transfer-Encoding: " + (b"gzip, chunked" if framing == "te_other" else b"chunked"))
        if framing == "both":
            fields.append(b"Content-Length: %d" % len(body))
        sizes = draw(st.lists(st.integers(1, 8), max_size=5))
        chunks, pos = [], 0
        for size in sizes:
            piece = body[pos : pos + size]
            pos += size
            if piece:
                ext = draw(st.sampled_from([b"", b";a=b", b";x"]))
                chunks.append(b"%x" % len(piece) + ext + b"\r\n" + piece + b"\r\n")
        payload = b"".join(chunks) + b"0\r\n" + draw(st.sampled_from([b"", b"Trailer-Field: v\r\n"])) + b"\r\n"
    else:
        payload = body
    head = b"HTTP/1." + minor + b" %d " % status + reason + b"\r\n" + b"".join(f + b"\r\n" for f in fields) + b"\r\n"
    message = head + payload
    if draw(st.booleans()):  # one mutation somewhere
        at = draw(st.integers(0, len(message)))
        cut = draw(st.integers(0, 2))
        message = message[:at] + draw(NOISE) + message[at + cut :]
    return message


def ours(message: bytes, splits: list[int]) -> tuple[int, list[tuple[bytes, bytes]], bytes] | None:
    """(status, headers, body) as our client code reads it, or None if refused."""
    pieces = [message[a:b] for a, b in zip([0, *splits], [*splits, len(message)], strict=True)]
    buf = bytearray()
    try:
        decoder = None
        head = None
        body = bytearray()
        after = b""
        for piece in pieces:
            if decoder is None:
                buf += piece
                end = find_head_end(buf)
                if end < 0:
                    continue
                head = parse_response_head(bytes(buf[:end]))
                decoder = response_body_decoder(head, "POST")
                piece = bytes(buf[end:])
            if decoder.done:
                after += piece
                continue
            for part in decoder.feed(piece):
                body += part
        if decoder is None or head is None:
            return None
        if not decoder.done:
            decoder.feed_eof()
        if decoder.unused or after:
            return None  # bytes after the body: the gate treats the peer as broken
        return head.status, list(head.headers), bytes(body)
    except RemoteProtocolError:
        return None


def theirs(message: bytes) -> tuple[int, list[tuple[bytes, bytes]], bytes] | None:
    """(status, headers, body) per h11, or None if h11 refuses or the message is incomplete."""
    connection = h11.Connection(h11.CLIENT)
    connection.send(
        h11.Request(method="POST", target="/v1/chat/completions", headers=[("Host", "backend"), ("Content-Length", "0")])
    )
    connection.send(h11.EndOfMessage())
    connection.receive_data(message)
    connection.receive_data(b"")
    status = None
    headers: list[tuple[bytes, bytes]] = []
    body = bytearray()
    try:
        while True:
            event = connection.next_event()
            if isinstance(event, h11.InformationalResponse):
                return None  # we refuse 1xx on purpose; nothing to compare
            if isinstance(event, h11.Response):
                status = event.status_code
                headers = [(name, value) for name, value in event.headers]
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
            elif event is h11.NEED_DATA or event is h11.PAUSED or isinstance(event, h11.ConnectionClosed):
                return None
    except h11.RemoteProtocolError:
        return None
    if status is None or connection.trailing_data[0]:
        return None
    return status, headers, bytes(body)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(message=responses(), data=st.data())
def test_whatever_we_accept_h11_reads_the_same(message: bytes, data: st.DataObject) -> None:
    splits = sorted(set(data.draw(st.lists(st.integers(0, len(message)), max_size=3))))
    whole = ours(message, [])
    assert ours(message, splits) == whole
    assert ours(message, list(range(1, len(message)))) == whole  # byte by byte
    if whole is not None:
        assert theirs(message) == whole


def test_the_generator_reaches_both_sides() -> None:
    """Sanity of the generator: plain messages are accepted by both, our documented refusals by us only."""
    good = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
    assert ours(good, []) == theirs(good) == (200, [(b"content-type", b"application/json"), (b"content-length", b"2")], b"{}")
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2;x\r\nhi\r\n0\r\nT: v\r\n\r\n"
    assert ours(chunked, []) == theirs(chunked) == (200, [(b"transfer-encoding", b"chunked")], b"hi")
    for strict in (
        b"HTTP/1.1 200 OK\nContent-Length: 0\n\n",  # bare LF: h11 reads it, we refuse
        b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\nContent-Length: 0\r\n\r\n",
    ):  # obs-fold
        assert ours(strict, []) is None
        assert theirs(strict) is not None


@pytest.mark.parametrize(
    "message",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n{}",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n{}",
    ],
)
def test_reject_framing_h11_reads_differently_or_not_at_all(message: bytes) -> None:
    assert ours(message, []) is None
