"""RFC 9458 encapsulation: round trips, and every kind of tampering failing closed."""

from __future__ import annotations

import pytest

from sluice_sdk import bhttp, ohttp
from sluice_sdk.errors import KeyConfigError, SealError
from sluice_sdk.keyconfig import (
    KeyConfig,
    SymmetricAlgorithm,
    decode_key_configs,
    encode_key_configs,
    select_key_config,
)
from sluice_sdk.keys import GatewayKey, KeyRing, generate_key

from .conftest import load_vector, unhex

RFC9458 = load_vector("rfc9458_appendix_a.json")

REQUEST = bhttp.encode_request(
    bhttp.Request(
        b"POST",
        b"https",
        b"",
        b"/v1/chat/completions",
        ((b"content-type", b"application/json"), (b"date", b"Mon, 07 Feb 2022 00:28:05 GMT")),
        b'{"model":"m","messages":[{"role":"user","content":"a secret"}]}',
    )
)
RESPONSE = bhttp.encode_response(bhttp.Response(200, ((b"content-type", b"application/json"),), b'{"ok":true}'))


@pytest.fixture(scope="module")
def gateway() -> GatewayKey:
    return generate_key(7)


def test_round_trip(gateway: GatewayKey) -> None:
    enc_request, opener = ohttp.encapsulate_request(gateway.config, REQUEST)
    request, sealer = ohttp.decapsulate_request(KeyRing(gateway), enc_request)
    assert request == REQUEST
    assert sealer.enc == enc_request[7:39]
    assert opener.open(sealer.seal(RESPONSE)) == RESPONSE


def test_round_trip_sizes(gateway: GatewayKey) -> None:
    for size in (0, 1, 15, 16, 17, 1 << 14, (1 << 16) + 3):
        payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
        enc_request, opener = ohttp.encapsulate_request(gateway.config, payload)
        request, sealer = ohttp.decapsulate_request(gateway, enc_request)
        assert request == payload
        assert opener.open(sealer.seal(payload)) == payload


def test_fresh_ephemeral_and_nonce_every_time(gateway: GatewayKey) -> None:
    a, _ = ohttp.encapsulate_request(gateway.config, REQUEST)
    b, _ = ohttp.encapsulate_request(gateway.config, REQUEST)
    assert a[7:39] != b[7:39]
    assert a != b
    _, sealer = ohttp.decapsulate_request(gateway, a)
    assert sealer.seal(RESPONSE)[:16] != sealer.seal(RESPONSE)[:16]


def test_reject_every_flipped_byte_of_request(gateway: GatewayKey) -> None:
    enc_request, _ = ohttp.encapsulate_request(gateway.config, REQUEST)
    for position in range(len(enc_request)):
        for mask in (0x01, 0x80):
            tampered = bytearray(enc_request)
            tampered[position] ^= mask
            with pytest.raises(SealError) as info:
                ohttp.decapsulate_request(gateway, bytes(tampered))
            assert str(info.value) == ""
            assert info.value.__cause__ is None and info.value.__suppress_context__


def test_reject_every_flipped_byte_of_response(gateway: GatewayKey) -> None:
    enc_request, opener = ohttp.encapsulate_request(gateway.config, REQUEST)
    _, sealer = ohttp.decapsulate_request(gateway, enc_request)
    enc_response = sealer.seal(RESPONSE)
    for position in range(len(enc_response)):
        for mask in (0x01, 0x80):
            tampered = bytearray(enc_response)
            tampered[position] ^= mask
            with pytest.raises(SealError):
                opener.open(bytes(tampered))
    assert opener.open(enc_response) == RESPONSE  # the untampered one still opens


def test_reject_truncated_or_extended(gateway: GatewayKey) -> None:
    enc_request, opener = ohttp.encapsulate_request(gateway.config, REQUEST)
    for end in range(len(enc_request)):
        with pytest.raises(SealError):
            ohttp.decapsulate_request(gateway, enc_request[:end])
    with pytest.raises(SealError):
        ohttp.decapsulate_request(gateway, enc_request + b"\x00")
    _, sealer = ohttp.decapsulate_request(gateway, enc_request)
    enc_response = sealer.seal(RESPONSE)
    for end in range(len(enc_response)):
        with pytest.raises(SealError):
            opener.open(enc_response[:end])
    with pytest.raises(SealError):
        opener.open(enc_response + b"\x00")


def test_reject_response_to_another_request(gateway: GatewayKey) -> None:
    _, opener = ohttp.encapsulate_request(gateway.config, REQUEST)
    second, _ = ohttp.encapsulate_request(gateway.config, REQUEST)
    _, other_sealer = ohttp.decapsulate_request(gateway, second)
    with pytest.raises(SealError):
        opener.open(other_sealer.seal(RESPONSE))


def test_reject_unknown_key_id(gateway: GatewayKey) -> None:
    enc_request, _ = ohttp.encapsulate_request(gateway.config, REQUEST)
    stranger = generate_key(8)
    with pytest.raises(SealError):
        ohttp.decapsulate_request(KeyRing(stranger), enc_request)


def test_reject_wrong_key_same_id(gateway: GatewayKey) -> None:
    enc_request, _ = ohttp.encapsulate_request(gateway.config, REQUEST)
    impostor = generate_key(gateway.key_id)
    with pytest.raises(SealError):
        ohttp.decapsulate_request(KeyRing(impostor), enc_request)


def test_reject_suite_the_key_does_not_list(gateway: GatewayKey) -> None:
    enc_request, _ = ohttp.encapsulate_request(gateway.config, REQUEST)
    for hdr in (b"\x07\x00\x20\x00\x01\x00\x03", b"\x07\x00\x20\x00\x02\x00\x01", b"\x07\x00\x10\x00\x01\x00\x01"):
        with pytest.raises(SealError):
            ohttp.decapsulate_request(gateway, hdr + enc_request[7:])


def test_reject_chunked_body_as_plain_request(gateway: GatewayKey) -> None:
    body, _ = ohttp.encapsulate_chunked_request(gateway.config, REQUEST)
    with pytest.raises(SealError):
        ohttp.decapsulate_request(gateway, body)
    plain, _ = ohttp.encapsulate_request(gateway.config, REQUEST)
    with pytest.raises(SealError):
        ohttp.decapsulate_chunked_request(gateway, plain)


def test_reject_low_order_encapsulation(gateway: GatewayKey) -> None:
    # An all-zero X25519 point gives an all-zero shared secret: refused.
    with pytest.raises(SealError):
        ohttp.decapsulate_request(gateway, b"\x07\x00\x20\x00\x01\x00\x01" + bytes(32) + bytes(17))


def test_rfc9458_config_is_usable_by_the_client() -> None:
    config = KeyConfig.decode(unhex(RFC9458["key_config"]))
    enc_request, _ = ohttp.encapsulate_request(config, REQUEST)
    assert enc_request[:7] == unhex("01002000010001")


def test_reject_config_without_our_suite() -> None:
    config = KeyConfig(1, 0x0020, bytes(range(32)), (SymmetricAlgorithm(1, 3),))
    with pytest.raises(KeyConfigError):
        ohttp.encapsulate_request(config, REQUEST)
    p256 = KeyConfig(1, 0x0010, b"\x04" + bytes(64))
    with pytest.raises(KeyConfigError):
        ohttp.encapsulate_request(p256, REQUEST)


def test_reject_unusable_public_key() -> None:
    with pytest.raises(KeyConfigError):
        ohttp.encapsulate_request(KeyConfig(1, 0x0020, bytes(32)), REQUEST)


# --- key configurations -------------------------------------------------------------------------------


def test_key_config_list_round_trip(gateway: GatewayKey) -> None:
    other = generate_key(9).config
    body = encode_key_configs([gateway.config, other])
    assert decode_key_configs(body) == (gateway.config, other)
    assert body[:2] == len(gateway.config.encode()).to_bytes(2, "big")


def test_reject_malformed_key_configs(gateway: GatewayKey) -> None:
    good = gateway.config.encode()
    bad = [
        b"",
        good[:-1],
        good + b"\x00",
        good[:35] + b"\x00\x00",  # no symmetric algorithms
        good[:35] + b"\x00\x03" + good[37:40],  # length not a multiple of 4
        b"\x01\x12\x34" + bytes(40),  # unknown KEM
        good[:35] + b"\x00\x08" + good[37:41] * 2,  # the same pair twice
    ]
    for data in bad:
        with pytest.raises(KeyConfigError):
            KeyConfig.decode(data)
    body = encode_key_configs([gateway.config])
    for data in (b"", body[:-1], body + b"\x00", b"\x00\x05" + good, b"\x00\x00"):
        with pytest.raises(KeyConfigError):
            decode_key_configs(data)
    with pytest.raises(KeyConfigError):
        decode_key_configs(body * 17)
    with pytest.raises(KeyConfigError):
        encode_key_configs([])


def test_reject_invalid_key_config_fields() -> None:
    with pytest.raises(KeyConfigError):
        KeyConfig(256, 0x0020, bytes(32))
    with pytest.raises(KeyConfigError):
        KeyConfig(1, 0x0020, bytes(31))
    with pytest.raises(KeyConfigError):
        KeyConfig(1, 0x0020, bytes(32), ())
    with pytest.raises(KeyConfigError):
        SymmetricAlgorithm(1 << 16, 1)


def test_select_pinned(gateway: GatewayKey) -> None:
    other = generate_key(9).config
    assert select_key_config([other, gateway.config], [gateway.config.fingerprint()]) == gateway.config
    with pytest.raises(KeyConfigError):
        select_key_config([other], [gateway.config.fingerprint()])  # the key changed
    with pytest.raises(KeyConfigError):
        select_key_config([gateway.config], [])  # an empty pin list denies
    with pytest.raises(KeyConfigError):
        select_key_config([gateway.config], [gateway.config.fingerprint().upper()])
    unusable = KeyConfig(1, 0x0020, bytes(range(32)), (SymmetricAlgorithm(1, 3),))
    with pytest.raises(KeyConfigError):
        select_key_config([unusable], [unusable.fingerprint()])


def test_fingerprint_is_sha256_of_encoding() -> None:
    import hashlib

    config = KeyConfig.decode(unhex(RFC9458["key_config"]))
    assert config.fingerprint() == hashlib.sha256(unhex(RFC9458["key_config"])).hexdigest()
