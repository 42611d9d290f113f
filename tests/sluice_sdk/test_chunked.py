"""Chunked OHTTP (draft-ietf-ohai-chunked-ohttp): streamed round trips, and truncation,
reordering, dropping or altering chunks all detected."""

from __future__ import annotations

import pytest

from sluice_sdk import _varint, bhttp, ohttp
from sluice_sdk.errors import SealError
from sluice_sdk.keys import GatewayKey, KeyRing, generate_key

REQUEST = bhttp.encode_request(
    bhttp.Request(b"POST", b"https", b"", b"/v1/chat/completions", ((b"content-type", b"application/json"),), b"{}")
)


@pytest.fixture(scope="module")
def gateway() -> GatewayKey:
    return generate_key(3)


def _exchange(gateway: GatewayKey) -> tuple[ohttp.ChunkedResponseSealer, ohttp.ChunkedResponseOpener]:
    body, opener = ohttp.encapsulate_chunked_request(gateway.config, REQUEST)
    request, sealer = ohttp.decapsulate_chunked_request(KeyRing(gateway), body)
    assert request == REQUEST
    return sealer, opener


def _split(body: bytes, nonce_len: int = 16) -> tuple[bytes, list[bytes], bytes]:
    """(nonce, framed non-final chunks, framed final chunk) of a chunked response body."""
    nonce, rest = body[:nonce_len], body[nonce_len:]
    chunks: list[bytes] = []
    while True:
        got = _varint.decode(rest, 0)
        assert got is not None
        length, pos = got
        if length == 0:
            return nonce, chunks, rest
        chunks.append(rest[: pos + length])
        rest = rest[pos + length :]


def test_many_chunks_round_trip(gateway: GatewayKey) -> None:
    sealer, opener = _exchange(gateway)
    pieces = [f'data: {{"token": {i}}}\n\n'.encode() for i in range(300)]
    body = b"".join(sealer.write(p) for p in pieces) + sealer.close(b"data: [DONE]\n\n")
    received: list[bytes] = []
    for i in range(0, len(body), 37):  # arbitrary transport boundaries
        received += opener.feed(body[i : i + 37])
    assert received == pieces  # each chunk comes out as soon as it authenticates
    assert opener.finish() == b"data: [DONE]\n\n"


def test_large_writes_split_into_send_sized_chunks(gateway: GatewayKey) -> None:
    sealer, opener = _exchange(gateway)
    payload = bytes(range(256)) * 300  # 76800 bytes
    body = sealer.write(payload) + sealer.close()
    _, chunks, _ = _split(body)
    assert len(chunks) == 5
    assert opener.open(body) == payload


def test_large_request_in_chunks(gateway: GatewayKey) -> None:
    payload = b"x" * 100_000
    body, _ = ohttp.encapsulate_chunked_request(gateway.config, payload)
    request, _ = ohttp.decapsulate_chunked_request(gateway, body)
    assert request == payload


def test_streamed_bhttp_response_end_to_end(gateway: GatewayKey) -> None:
    """What the gate and the SDK do together for a streamed chat completion."""
    sealer, opener = _exchange(gateway)
    encoder = bhttp.ResponseStreamEncoder()
    wire = [sealer.write(encoder.head(200, [(b"content-type", b"text/event-stream")]))]
    wire += [sealer.write(encoder.data(b"data: %d\n\n" % i)) for i in range(5)]
    wire.append(sealer.close(encoder.end()))
    decoder = bhttp.ResponseStreamDecoder()
    events: list[bhttp.ResponseEvent] = []
    for piece in wire:
        for plaintext in opener.feed(piece):
            events += decoder.feed(plaintext)
    events += decoder.feed(opener.finish())
    events += decoder.finish()
    assert events[0] == bhttp.ResponseHead(200, ((b"content-type", b"text/event-stream"),))
    assert [e for e in events if isinstance(e, bhttp.ResponseData)] == [bhttp.ResponseData(b"data: %d\n\n" % i) for i in range(5)]
    assert events[-1] == bhttp.ResponseEnd()


def _body(gateway: GatewayKey, count: int = 4) -> tuple[bytes, ohttp.ChunkedResponseOpener]:
    sealer, opener = _exchange(gateway)
    body = b"".join(sealer.write(b"chunk %d" % i) for i in range(count)) + sealer.close(b"last")
    return body, opener


def _open(opener: ohttp.ChunkedResponseOpener, body: bytes) -> bytes:
    return opener.open(body)


def test_reject_truncation_anywhere(gateway: GatewayKey) -> None:
    length = len(_body(gateway)[0])
    for end in range(length):
        body, opener = _body(gateway)  # a fresh exchange each time: a failed opener stays failed
        with pytest.raises(SealError):
            _open(opener, body[:end])


def test_reject_dropped_final_chunk(gateway: GatewayKey) -> None:
    body, opener = _body(gateway)
    nonce, chunks, _final = _split(body)
    assert opener.feed(nonce + b"".join(chunks)) == [b"chunk %d" % i for i in range(4)]
    with pytest.raises(SealError):
        opener.finish()  # everything so far authenticated, but the stream never ended properly


def test_reject_non_final_chunk_passed_off_as_final(gateway: GatewayKey) -> None:
    body, opener = _body(gateway)
    nonce, chunks, _final = _split(body)
    last = chunks[-1]
    got = _varint.decode(last, 0)
    assert got is not None
    forged_final = b"\x00" + last[got[1] :]
    with pytest.raises(SealError):
        _open(opener, nonce + b"".join(chunks[:-1]) + forged_final)


def test_reject_final_chunk_passed_off_as_non_final(gateway: GatewayKey) -> None:
    body, opener = _body(gateway)
    nonce, chunks, final = _split(body)
    sealed = final[1:]
    forged = _varint.encode(len(sealed)) + sealed
    with pytest.raises(SealError):
        _open(opener, nonce + b"".join(chunks) + forged + b"\x00" + sealed)


def test_reject_reordered_chunks(gateway: GatewayKey) -> None:
    body, opener = _body(gateway)
    nonce, chunks, final = _split(body)
    chunks[1], chunks[2] = chunks[2], chunks[1]
    with pytest.raises(SealError):
        _open(opener, nonce + b"".join(chunks) + final)


def test_reject_dropped_middle_chunk(gateway: GatewayKey) -> None:
    body, opener = _body(gateway)
    nonce, chunks, final = _split(body)
    del chunks[1]
    with pytest.raises(SealError):
        _open(opener, nonce + b"".join(chunks) + final)


def test_reject_replayed_chunk(gateway: GatewayKey) -> None:
    body, opener = _body(gateway)
    nonce, chunks, final = _split(body)
    with pytest.raises(SealError):
        _open(opener, nonce + chunks[0] + b"".join(chunks) + final)


def test_reject_every_flipped_byte_of_chunked_response(gateway: GatewayKey) -> None:
    length = len(_body(gateway, 2)[0])
    for position in range(length):
        body, opener = _body(gateway, 2)
        tampered = bytearray(body)
        tampered[position] ^= 0x01
        with pytest.raises(SealError):
            _open(opener, bytes(tampered))


def test_reject_every_flipped_byte_of_chunked_request(gateway: GatewayKey) -> None:
    sealer = ohttp.ChunkedRequestSealer(gateway.config)
    body = sealer.write(b"first part") + sealer.write(b"second part") + sealer.close(b"end")
    for position in range(len(body)):
        tampered = bytearray(body)
        tampered[position] ^= 0x01
        with pytest.raises(SealError):
            ohttp.decapsulate_chunked_request(gateway, bytes(tampered))
    assert ohttp.decapsulate_chunked_request(gateway, body)[0] == b"first partsecond partend"


def test_reject_truncated_chunked_request(gateway: GatewayKey) -> None:
    sealer = ohttp.ChunkedRequestSealer(gateway.config)
    body = sealer.write(b"first part") + sealer.close(b"end")
    for end in range(len(body)):
        with pytest.raises(SealError):
            ohttp.decapsulate_chunked_request(gateway, body[:end])


def test_reject_empty_non_final_chunk(gateway: GatewayKey) -> None:
    sealer, opener = _exchange(gateway)
    nonce = sealer.write(b"")  # just the response nonce
    empty = sealer._seal(b"", b"")  # a validly sealed but empty non-final chunk
    with pytest.raises(SealError):
        opener.feed(nonce + _varint.encode(len(empty)) + empty)


def test_reject_oversized_chunk(gateway: GatewayKey) -> None:
    _, opener = _exchange(gateway)
    with pytest.raises(SealError):
        opener.feed(bytes(16) + _varint.encode(16 + ohttp.MAX_RECEIVE_CHUNK + 1))


def test_reject_oversized_final_chunk(gateway: GatewayKey) -> None:
    _, opener = _exchange(gateway)
    with pytest.raises(SealError):
        opener.feed(bytes(16) + b"\x00" + bytes(16 + ohttp.MAX_RECEIVE_CHUNK + 1))


def test_failure_latches(gateway: GatewayKey) -> None:
    body, opener = _body(gateway)
    tampered = bytearray(body)
    tampered[20] ^= 1
    with pytest.raises(SealError):
        opener.feed(bytes(tampered))
    with pytest.raises(SealError):
        opener.feed(b"")
    with pytest.raises(SealError):
        opener.finish()


def test_no_response_sealer_before_the_request_is_complete(gateway: GatewayKey) -> None:
    sealer = ohttp.ChunkedRequestSealer(gateway.config)
    opener = ohttp.ChunkedRequestOpener(gateway)
    assert opener.feed(sealer.write(b"partial")) == [b"partial"]
    assert len(opener.enc) == 32
    with pytest.raises(SealError):
        opener.response_sealer()
    opener.feed(sealer.close())
    assert opener.finish() == b""
    opener.response_sealer()
    with pytest.raises(SealError):
        opener.feed(b"more")  # nothing after the final chunk


def test_sealers_refuse_use_after_close(gateway: GatewayKey) -> None:
    sealer, _ = _exchange(gateway)
    sealer.close()
    with pytest.raises(SealError):
        sealer.write(b"late")
    request_sealer = ohttp.ChunkedRequestSealer(gateway.config)
    request_sealer.close()
    with pytest.raises(SealError):
        request_sealer.close()


def test_reject_response_of_another_exchange(gateway: GatewayKey) -> None:
    sealer_a, _ = _exchange(gateway)
    _, opener_b = _exchange(gateway)
    with pytest.raises(SealError):
        opener_b.open(sealer_a.close(b"hello"))


def test_reject_unknown_key_id_chunked(gateway: GatewayKey) -> None:
    body, _ = ohttp.encapsulate_chunked_request(gateway.config, REQUEST)
    with pytest.raises(SealError):
        ohttp.decapsulate_chunked_request(generate_key(4), body)
