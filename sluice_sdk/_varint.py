"""QUIC variable-length integers (RFC 9000 Section 16), shared by bhttp and ohttp.

The two most significant bits of the first byte give the length (1, 2, 4 or 8
bytes); the rest is the value in network byte order, so values run to
2**62 - 1.  Encoding always uses the shortest form.  Decoding accepts longer
forms too: RFC 9292 Section 3 says integers "do not need to be encoded on the
minimum number of bytes necessary", and the chunked OHTTP draft leaves the
choice of encoding of chunk lengths unauthenticated on purpose.

Neither function raises for bad input bytes: :func:`decode` returns ``None``
when the buffer ends inside the integer, and each caller turns that into its
own error type.
"""

from __future__ import annotations

__all__ = ["MAX_VARINT", "encode", "decode"]

MAX_VARINT = (1 << 62) - 1


def encode(value: int) -> bytes:
    """Shortest encoding of ``value``; ``ValueError`` outside 0..2**62-1."""
    if value < 0 or value > MAX_VARINT:
        raise ValueError("varint out of range")
    if value < 1 << 6:
        return value.to_bytes(1, "big")
    if value < 1 << 14:
        return (value | 0x4000).to_bytes(2, "big")
    if value < 1 << 30:
        return (value | 0x8000_0000).to_bytes(4, "big")
    return (value | 0xC000_0000_0000_0000).to_bytes(8, "big")


def decode(buf: bytes | bytearray | memoryview, offset: int = 0, end: int | None = None) -> tuple[int, int] | None:
    """``(value, offset after it)``, or ``None`` if the integer does not end before ``end``.

    ``end`` defaults to ``len(buf)``; nothing is copied beyond the integer itself.
    """
    limit = len(buf) if end is None else min(end, len(buf))
    if offset >= limit:
        return None
    length = 1 << (buf[offset] >> 6)
    stop = offset + length
    if stop > limit:
        return None
    value = int.from_bytes(bytes(buf[offset:stop]), "big") & ((1 << (8 * length - 2)) - 1)
    return value, stop
