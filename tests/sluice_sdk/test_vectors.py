"""Known-answer tests: the RFC 9458 and chunked-OHTTP examples, byte for byte, both directions.

Vectors: tests/sluice_sdk/vectors/rfc9458_appendix_a.json (RFC 9458 Appendix A) and
tests/sluice_sdk/vectors/chunked_ohttp_appendix_a.json (draft-ietf-ohai-chunked-ohttp
Appendix A).  The deterministic seams take the RFC's ephemeral key and
response nonce; everything else is the production code path.
"""

from __future__ import annotations

import struct

import pytest

from sluice_sdk import _hazmat, bhttp, ohttp
from sluice_sdk.keyconfig import KeyConfig, SymmetricAlgorithm
from sluice_sdk.keys import GatewayKey

from .conftest import load_vector, unhex

RFC9458 = load_vector("rfc9458_appendix_a.json")
CHUNKED = load_vector("chunked_ohttp_appendix_a.json")


def _gateway(vector: dict[str, object]) -> GatewayKey:
    config = KeyConfig.decode(unhex(str(vector["key_config"])))
    private_key = _hazmat.private_key_from_bytes(config.kem_id, unhex(str(vector["gateway_private_key"])))
    return GatewayKey(config, private_key)


@pytest.mark.parametrize("vector", [RFC9458, CHUNKED], ids=["rfc9458", "chunked"])
def test_key_config(vector: dict[str, object]) -> None:
    config = KeyConfig.decode(unhex(str(vector["key_config"])))
    assert config.key_id == 1
    assert config.kem_id == 0x0020
    assert config.symmetric == (SymmetricAlgorithm(1, 1), SymmetricAlgorithm(1, 3))
    assert config.encode() == unhex(str(vector["key_config"]))
    # The gateway's private key gives the configuration's public key.
    assert _gateway(vector).private_key.public_key == config.public_key
    assert config.usable


@pytest.mark.parametrize(
    ("vector", "label"),
    [(RFC9458, b"message/bhttp request"), (CHUNKED, b"message/bhttp chunked request")],
    ids=["rfc9458", "chunked"],
)
def test_info(vector: dict[str, object], label: bytes) -> None:
    hdr = struct.pack("!BHHH", 1, 0x0020, 1, 1)
    assert label + b"\x00" + hdr == unhex(str(vector["info"]))


@pytest.mark.parametrize("vector", [RFC9458, CHUNKED], ids=["rfc9458", "chunked"])
def test_ephemeral_public_key(vector: dict[str, object]) -> None:
    ephemeral = _hazmat.private_key_from_bytes(0x0020, unhex(str(vector["ephemeral_private_key"])))
    assert ephemeral.public_key == unhex(str(vector["ephemeral_public_key"]))


def test_rfc9458_client_seals_request() -> None:
    config = KeyConfig.decode(unhex(RFC9458["key_config"]))
    enc_request, _ = ohttp._encapsulate_request(config, unhex(RFC9458["request"]), unhex(RFC9458["ephemeral_private_key"]))
    assert enc_request == unhex(RFC9458["encapsulated_request"])


def test_rfc9458_gateway_opens_request_and_seals_response() -> None:
    request, sealer = ohttp.decapsulate_request(_gateway(RFC9458), unhex(RFC9458["encapsulated_request"]))
    assert request == unhex(RFC9458["request"])
    assert sealer.enc == unhex(RFC9458["ephemeral_public_key"])
    assert bhttp.decode_request(request) == bhttp.Request(b"GET", b"https", b"example.com", b"/")
    enc_response = sealer._seal(unhex(RFC9458["response"]), unhex(RFC9458["response_nonce"]))
    assert enc_response == unhex(RFC9458["encapsulated_response"])


def test_rfc9458_client_opens_response() -> None:
    config = KeyConfig.decode(unhex(RFC9458["key_config"]))
    _, opener = ohttp._encapsulate_request(config, unhex(RFC9458["request"]), unhex(RFC9458["ephemeral_private_key"]))
    response = opener.open(unhex(RFC9458["encapsulated_response"]))
    assert response == unhex(RFC9458["response"])
    assert bhttp.decode_response(response) == bhttp.Response(200)


@pytest.mark.parametrize(
    ("vector", "label", "info_label"),
    [
        (RFC9458, b"message/bhttp response", b"message/bhttp request"),
        (CHUNKED, b"message/bhttp chunked response", b"message/bhttp chunked request"),
    ],
    ids=["rfc9458", "chunked"],
)
def test_response_key_schedule_intermediates(vector: dict[str, object], label: bytes, info_label: bytes) -> None:
    gateway = _gateway(vector)
    enc = unhex(str(vector["ephemeral_public_key"]))
    info = unhex(str(vector["info"]))
    assert info.startswith(info_label)
    receiver = _hazmat.setup_receiver(0x0020, 1, 1, gateway.private_key, enc, info)
    sender = _hazmat.setup_sender(
        0x0020, 1, 1, gateway.config.public_key, info, _ephemeral=unhex(str(vector["ephemeral_private_key"]))
    )
    assert sender.enc == enc
    secret = unhex(str(vector["exported_secret"]))
    assert receiver.export(label, 16) == secret
    assert sender.export(label, 16) == secret
    salt = enc + unhex(str(vector["response_nonce"]))
    assert salt == unhex(str(vector["salt"]))
    assert _hazmat._prk_for_tests(1, secret, salt) == unhex(str(vector["prk"]))
    key, nonce = _hazmat.response_key_and_nonce(1, 1, secret, salt)
    assert key == unhex(str(vector["aead_key"]))
    assert nonce == unhex(str(vector["aead_nonce"]))


def test_chunked_chunk_nonces() -> None:
    base = unhex(CHUNKED["aead_nonce"])
    assert [ohttp._chunk_nonce(base, i) for i in range(3)] == [unhex(n) for n in CHUNKED["chunk_nonces"]]


def _chunked_client() -> ohttp.ChunkedRequestSealer:
    config = KeyConfig.decode(unhex(CHUNKED["key_config"]))
    return ohttp.ChunkedRequestSealer._deterministic(config, unhex(CHUNKED["ephemeral_private_key"]))


def test_chunked_client_seals_request_in_chunks() -> None:
    sealer = _chunked_client()
    request = unhex(CHUNKED["request"])
    first, second = CHUNKED["request_chunks"]
    body = sealer.write(request[:first]) + sealer.write(request[first : first + second]) + sealer.close()
    assert body == unhex(CHUNKED["encapsulated_request"])


def test_chunked_gateway_opens_request_and_seals_response() -> None:
    opener = ohttp.ChunkedRequestOpener(_gateway(CHUNKED))
    parts = opener.feed(unhex(CHUNKED["encapsulated_request"]))
    assert [len(p) for p in parts] == CHUNKED["request_chunks"]
    assert opener.finish() == b""  # the example's final chunk carries no data
    assert b"".join(parts) == unhex(CHUNKED["request"])
    sealer = opener._response_sealer(unhex(CHUNKED["response_nonce"]))
    response = unhex(CHUNKED["response"])
    first, second = CHUNKED["response_chunks"]
    body = sealer.write(response[:first]) + sealer.write(response[first : first + second]) + sealer.close()
    assert body == unhex(CHUNKED["encapsulated_response"])


def test_chunked_gateway_opens_request_byte_by_byte() -> None:
    opener = ohttp.ChunkedRequestOpener(_gateway(CHUNKED))
    parts: list[bytes] = []
    for byte in unhex(CHUNKED["encapsulated_request"]):
        parts += opener.feed(bytes([byte]))
    parts.append(opener.finish())
    assert b"".join(parts) == unhex(CHUNKED["request"])


def test_chunked_client_opens_response() -> None:
    sealer = _chunked_client()
    sealer.close(unhex(CHUNKED["request"]))
    opener = sealer.response_opener()
    body = unhex(CHUNKED["encapsulated_response"])
    chunks: list[bytes] = []
    for byte in body:  # byte by byte: each chunk comes out as soon as it authenticates
        chunks += opener.feed(bytes([byte]))
    assert chunks == [b"\x01", b"\x40\xc8"]
    assert opener.finish() == b""
    assert bhttp.decode_response(b"".join(chunks)) == bhttp.Response(200)
