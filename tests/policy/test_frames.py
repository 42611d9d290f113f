"""The mux frame layout: encode, decode whole and byte by byte, reject the rest."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from policy.errors import Disallowed
from policy.frames import CLIENT_KINDS, GATE_KINDS, HEADER, MAX_PAYLOAD, Frame, FrameDecoder, Kind, encode

FRAMES = [
    Frame(Kind.OPEN, 1, b"call chat m 5"),
    Frame(Kind.DATA, 1, b"hello"),
    Frame(Kind.CANCEL, 1, b""),
    Frame(Kind.OPEN, 2**31 - 1, b"ping"),
    Frame(Kind.DATA, 3, b"x" * MAX_PAYLOAD),
]


def _wire(frames: list[Frame]) -> bytes:
    return b"".join(encode(f.kind, f.stream, f.payload) for f in frames)


def test_whole() -> None:
    assert FrameDecoder(CLIENT_KINDS).feed(_wire(FRAMES)) == FRAMES


def test_byte_by_byte() -> None:
    decoder = FrameDecoder(CLIENT_KINDS)
    got: list[Frame] = []
    for byte in _wire(FRAMES):
        got += decoder.feed(bytes([byte]))
    assert got == FRAMES
    assert decoder.buffered == 0


def test_trailing_partial_frame_waits() -> None:
    decoder = FrameDecoder(CLIENT_KINDS)
    wire = _wire(FRAMES)
    assert decoder.feed(wire + b"\x02\x00") == FRAMES
    assert decoder.buffered == 2


def test_gate_kinds() -> None:
    frames = [Frame(Kind.HEAD, 1, b"200 sse"), Frame(Kind.BODY, 1, b"data: x\n\n"), Frame(Kind.END, 1, b"")]
    frames.append(Frame(Kind.GOAWAY, 0, b"disallowed"))
    assert FrameDecoder(GATE_KINDS).feed(_wire(frames)) == frames


def _raw(kind: int, stream: int, payload: bytes, length: int | None = None) -> bytes:
    return HEADER.pack(kind, stream, len(payload) if length is None else length) + payload


@pytest.mark.parametrize(
    ("wire", "code"),
    [
        (_raw(Kind.HEAD, 1, b"200 json"), "frame_kind"),  # a gate kind sent to the gate
        (_raw(0x00, 1, b""), "frame_kind"),
        (_raw(0x7F, 1, b"x"), "frame_kind"),
        (_raw(Kind.OPEN, 0, b"ping"), "frame_stream"),
        (_raw(Kind.OPEN, 2**31, b"ping"), "frame_stream"),
        (_raw(Kind.OPEN, 1, b""), "frame_length"),
        (_raw(Kind.DATA, 1, b""), "frame_length"),
        (_raw(Kind.CANCEL, 1, b"x"), "frame_length"),
        (HEADER.pack(Kind.DATA, 1, MAX_PAYLOAD + 1), "frame_length"),  # rejected from the header alone
        (HEADER.pack(Kind.OPEN, 1, 2**32 - 1), "frame_length"),
    ],
)
def test_reject_bad_frames(wire: bytes, code: str) -> None:
    with pytest.raises(Disallowed) as info:
        FrameDecoder(CLIENT_KINDS).feed(wire)
    assert info.value.code == code


def test_usage_frame_before_an_error() -> None:
    """USAGE (0x86): the usage so far of a stream, right before its ERROR; gate to appliance only."""
    frames = [Frame(Kind.USAGE, 3, b'{"prompt_tokens":1,"completion_tokens":2}'), Frame(Kind.ERROR, 3, b"504 backend_timeout")]
    assert FrameDecoder(GATE_KINDS).feed(_wire(frames)) == frames
    with pytest.raises(Disallowed):
        FrameDecoder(CLIENT_KINDS).feed(_raw(Kind.USAGE, 1, b"{}"))
    for payload in (b"", b"x" * 513):
        with pytest.raises(ValueError):
            encode(Kind.USAGE, 1, payload)
    assert "0x86 | USAGE" in (Path(__file__).resolve().parents[2] / "policy" / "FRAMES.md").read_text()


def test_reject_client_kind_at_appliance() -> None:
    with pytest.raises(Disallowed):
        FrameDecoder(GATE_KINDS).feed(_raw(Kind.OPEN, 1, b"ping"))


def test_reject_goaway_on_a_stream() -> None:
    with pytest.raises(Disallowed):
        FrameDecoder(GATE_KINDS).feed(_raw(Kind.GOAWAY, 3, b"x"))


def test_encode_refuses_out_of_bounds() -> None:
    with pytest.raises(ValueError):
        encode(Kind.DATA, 1, b"x" * (MAX_PAYLOAD + 1))
    with pytest.raises(ValueError):
        encode(Kind.CANCEL, 1, b"x")


def test_header_layout_is_documented() -> None:
    assert HEADER.size == 9
    assert encode(Kind.OPEN, 258, b"ping") == struct.pack("!BII", 1, 258, 4) + b"ping"
