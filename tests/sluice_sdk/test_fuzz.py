"""One invariant for every decoder: any input either decodes or raises the SDK's own error.

Inputs are arbitrary bytes and mutations (flips, cuts, insertions, splices) of
valid messages, so the fuzzer reaches past the first length prefix.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sluice_sdk import bhttp, ohttp
from sluice_sdk.errors import BhttpError, KeyConfigError, SealError
from sluice_sdk.keyconfig import KeyConfig, decode_key_configs, encode_key_configs
from sluice_sdk.keys import _parse_key_file, generate_key
from sluice_sdk.replay import ReplayGuard

from .conftest import load_vector, unhex

# SLUICE_FUZZ_EXAMPLES raises the count for a longer local run.
SETTINGS = settings(
    max_examples=int(os.environ.get("SLUICE_FUZZ_EXAMPLES", "300")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

GATEWAY = generate_key(1)
EXAMPLES = load_vector("rfc9292_examples.json")
BHTTP_SEEDS = [unhex(EXAMPLES[k]["hex"]) for k in EXAMPLES if k != "source"] + [
    bhttp.encode_request(bhttp.Request(b"GET", b"https", b"a", b"/", ((b"x", b"y"),), b"body", ((b"t", b"v"),)))
]


def _mutate(seeds: list[bytes]) -> st.SearchStrategy[bytes]:
    def edit(seed: bytes, draw_ops: list[tuple[int, int, bytes]]) -> bytes:
        data = bytearray(seed)
        for kind, position, blob in draw_ops:
            at = position % (len(data) + 1)
            if kind == 0 and data:
                data[at % len(data)] ^= blob[0] if blob else 1
            elif kind == 1:
                del data[at:]
            elif kind == 2:
                data[at:at] = blob
            else:
                del data[at : at + len(blob) + 1]
        return bytes(data)

    ops = st.lists(st.tuples(st.integers(0, 3), st.integers(0, 1 << 16), st.binary(max_size=8)), max_size=4)
    return st.builds(edit, st.sampled_from(seeds), ops)


def _any(seeds: list[bytes]) -> st.SearchStrategy[bytes]:
    return st.one_of(st.binary(max_size=512), _mutate(seeds))


def _holds(call: Callable[[], object], error: type[Exception]) -> None:
    """Run ``call``: returning or raising ``error`` is fine; anything else fails the test."""
    with contextlib.suppress(error):
        call()


@SETTINGS
@given(_any(BHTTP_SEEDS))
def test_bhttp_decoders(data: bytes) -> None:
    _holds(lambda: bhttp.decode_request(data), BhttpError)
    _holds(lambda: bhttp.decode_response(data), BhttpError)
    _holds(lambda: bhttp.decode_varint(data), BhttpError)


@SETTINGS
@given(_any(BHTTP_SEEDS), st.lists(st.integers(1, 64), max_size=16))
def test_bhttp_stream_decoder(data: bytes, cuts: list[int]) -> None:
    decoder = bhttp.ResponseStreamDecoder()

    def run() -> None:
        rest = data
        for cut in cuts:
            decoder.feed(rest[:cut])
            rest = rest[cut:]
        decoder.feed(rest)
        decoder.finish()

    _holds(run, BhttpError)


@SETTINGS
@given(_any(BHTTP_SEEDS), st.lists(st.integers(1, 64), max_size=8))
def test_bhttp_stream_decoder_agrees_with_whole_decoder(data: bytes, cuts: list[int]) -> None:
    try:
        whole: bhttp.Response | None = bhttp.decode_response(data)
    except BhttpError:
        whole = None
    decoder = bhttp.ResponseStreamDecoder()
    events: list[bhttp.ResponseEvent] = []
    try:
        rest = data
        for cut in cuts:
            events += decoder.feed(rest[:cut])
            rest = rest[cut:]
        events += decoder.feed(rest)
        events += decoder.finish()
    except BhttpError:
        assert whole is None
        return
    assert whole is not None
    head, end = events[0], events[-1]
    assert isinstance(head, bhttp.ResponseHead) and isinstance(end, bhttp.ResponseEnd)
    content = b"".join(e.data for e in events if isinstance(e, bhttp.ResponseData))
    assert bhttp.Response(head.status, head.headers, content, end.trailers, head.informational) == whole


CONFIG_SEEDS = [GATEWAY.config.encode(), unhex(load_vector("rfc9458_appendix_a.json")["key_config"])]
LIST_SEEDS = [encode_key_configs([GATEWAY.config]), encode_key_configs([GATEWAY.config, generate_key(2).config])]


@SETTINGS
@given(_any(CONFIG_SEEDS), _any(LIST_SEEDS))
def test_key_config_decoders(one: bytes, many: bytes) -> None:
    _holds(lambda: KeyConfig.decode(one), KeyConfigError)
    _holds(lambda: decode_key_configs(many), KeyConfigError)


ENC_REQUEST, OPENER = ohttp.encapsulate_request(GATEWAY.config, b"\x00\x03GET\x05https\x00\x01/")
_, SEALER = ohttp.decapsulate_request(GATEWAY, ENC_REQUEST)
ENC_RESPONSE = SEALER.seal(b"\x01\x40\xc8")
CHUNKED_REQUEST, _CHUNKED_OPENER = ohttp.encapsulate_chunked_request(GATEWAY.config, b"x" * 40)


@SETTINGS
@given(_any([ENC_REQUEST, CHUNKED_REQUEST]))
def test_gateway_decapsulation(data: bytes) -> None:
    _holds(lambda: ohttp.decapsulate_request(GATEWAY, data), SealError)
    _holds(lambda: ohttp.decapsulate_chunked_request(GATEWAY, data), SealError)


@SETTINGS
@given(_any([ENC_RESPONSE]))
def test_client_response_opening(data: bytes) -> None:
    _holds(lambda: OPENER.open(data), SealError)


@SETTINGS
@given(st.binary(max_size=400), st.lists(st.integers(1, 40), max_size=8))
def test_chunked_response_opening(data: bytes, cuts: list[int]) -> None:
    sealer = ohttp.ChunkedRequestSealer(GATEWAY.config)
    sealer.close(b"r")
    opener = sealer.response_opener()

    def run() -> None:
        rest = data
        for cut in cuts:
            opener.feed(rest[:cut])
            rest = rest[cut:]
        opener.feed(rest)
        opener.finish()

    _holds(run, SealError)


@SETTINGS
@given(st.binary(max_size=600))
def test_key_file_parser(data: bytes) -> None:
    _holds(lambda: _parse_key_file(data, "fuzz"), KeyConfigError)


@SETTINGS
@given(st.one_of(st.binary(max_size=80), st.text(max_size=80)))
def test_date_check(value: bytes | str) -> None:
    _holds(lambda: ReplayGuard(60).check_date(value), SealError)
