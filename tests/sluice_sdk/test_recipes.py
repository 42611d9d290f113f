"""The client and gate recipes together: seal, open, date window, replay, stream back."""

from __future__ import annotations

import time

import pytest

from sluice_sdk import bhttp, client, gateway
from sluice_sdk.errors import BhttpError, SealError
from sluice_sdk.keyconfig import decode_key_configs, select_key_config
from sluice_sdk.keys import KeyRing, generate_key
from sluice_sdk.ohttp import ChunkedResponseSealer, ResponseSealer, encapsulate_request
from sluice_sdk.replay import ReplayGuard

CHAT = bhttp.Request(
    b"POST", b"https", b"", b"/v1/chat/completions", ((b"content-type", b"application/json"),), b'{"stream":true}'
)


@pytest.fixture
def ring() -> KeyRing:
    return KeyRing(generate_key(1))


def test_plain_exchange(ring: KeyRing) -> None:
    relayed = decode_key_configs(ring.encoded_configs())  # what the appliance hands the client
    config = select_key_config(relayed, [ring.current.config.fingerprint()])  # pinned out of band
    body, opener = client.seal_request(config, CHAT)
    opened = gateway.open_request(ring, ReplayGuard(60), body, chunked=False)
    assert opened.request.content == CHAT.content
    assert len(opened.request.header_values(b"date")) == 1
    assert isinstance(opened.sealer, ResponseSealer)
    answer = bhttp.encode_response(bhttp.Response(200, content=b"{}"))
    assert opener.open(opened.sealer.seal(answer)) == answer


def test_streaming_exchange(ring: KeyRing) -> None:
    body, opener = client.seal_streaming_request(ring.current.config, CHAT)
    opened = gateway.open_request(ring, ReplayGuard(60), body, chunked=True)
    sealer = opened.sealer
    assert isinstance(sealer, ChunkedResponseSealer)
    encoder = bhttp.ResponseStreamEncoder()
    wire = sealer.write(encoder.head(200)) + sealer.write(encoder.data(b"data: hi\n\n")) + sealer.close(encoder.end())
    decoder = bhttp.ResponseStreamDecoder()
    events = [e for chunk in opener.feed(wire) for e in decoder.feed(chunk)]
    events += decoder.feed(opener.finish()) + decoder.finish()
    assert bhttp.ResponseData(b"data: hi\n\n") in events


def test_replay_refused(ring: KeyRing) -> None:
    guard = ReplayGuard(60)
    body, _ = client.seal_request(ring.current.config, CHAT)
    gateway.open_request(ring, guard, body, chunked=False)
    with pytest.raises(SealError):
        gateway.open_request(ring, guard, body, chunked=False)


def test_stale_or_missing_date_refused(ring: KeyRing) -> None:
    stale = client.with_date(CHAT, time.time() - 3600)
    body, _ = client.seal_request(ring.current.config, stale)
    with pytest.raises(SealError):
        gateway.open_request(ring, ReplayGuard(60), body, chunked=False)
    undated, _ = encapsulate_request(ring.current.config, bhttp.encode_request(CHAT))
    with pytest.raises(SealError):
        gateway.open_request(ring, ReplayGuard(60), undated, chunked=False)
    twice = bhttp.Request(b"GET", b"https", b"", b"/", ((b"date", b"a"), (b"date", b"b")))
    body, _ = encapsulate_request(ring.current.config, bhttp.encode_request(twice))
    with pytest.raises(SealError):
        gateway.open_request(ring, ReplayGuard(60), body, chunked=False)


def test_with_date_keeps_an_existing_date() -> None:
    dated = client.with_date(CHAT, 0)
    assert dated.header_values(b"date") == (b"Thu, 01 Jan 1970 00:00:00 GMT",)
    assert client.with_date(dated) is dated


def test_malformed_inner_request(ring: KeyRing) -> None:
    body, _ = encapsulate_request(ring.current.config, b"\x00\x03G T")
    with pytest.raises(BhttpError):
        gateway.open_request(ring, ReplayGuard(60), body, chunked=False)


def test_mismatched_media_type_refused(ring: KeyRing) -> None:
    body, _ = client.seal_request(ring.current.config, CHAT)
    with pytest.raises(SealError):
        gateway.open_request(ring, ReplayGuard(60), body, chunked=True)
