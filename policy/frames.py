"""The mux frame layout (policy/FRAMES.md), as a sans-IO encoder and decoder.

A frame is a 9-byte header -- kind (u8), stream id (u32), payload length
(u32), all big-endian -- followed by the payload.  Each direction has its own
closed set of kinds; a kind from the other direction, an over-long payload or
a stream id out of range is a :class:`~policy.errors.Disallowed`.  The decoder
takes bytes and returns frames; it never touches a socket or a pipe.
"""

from __future__ import annotations

import struct
from enum import IntEnum
from typing import Final, NamedTuple, Protocol

from .errors import Disallowed
from .grammar import MAX_COMMAND_LINE

__all__ = [
    "HEADER",
    "MAX_PAYLOAD",
    "MAX_STREAM_ID",
    "MAX_STREAMS",
    "Kind",
    "Frame",
    "FrameDecoder",
    "FrameWriter",
    "encode",
    "CLIENT_KINDS",
    "GATE_KINDS",
]

HEADER: Final = struct.Struct("!BII")

# 64 KiB per frame: large enough that a body costs few frames, small enough
# that one stream cannot hold the channel for long (fairness between streams).
MAX_PAYLOAD: Final = 64 * 1024

# Stream ids are 31-bit and nonzero; 0 names the session itself (GOAWAY).
MAX_STREAM_ID: Final = 2**31 - 1

# Concurrent streams in one session, enforced by the gate: far above what one
# appliance session needs (the appliance caps its own streams per session below
# this and spreads the rest), low enough to bound the gate's memory.  A stream
# past it is refused on its own (ERROR ``503 too_many_streams``), the session lives on.
MAX_STREAMS: Final = 256

# The longest error or status payload the gate sends: short codes only.
MAX_CODE: Final = 64

# Usage metadata is a small JSON object of integers.
MAX_USAGE: Final = 512


class Kind(IntEnum):
    # appliance -> gate
    OPEN = 0x01  # payload: a `stream-command` line of request.abnf
    DATA = 0x02  # payload: request body bytes (1..MAX_PAYLOAD)
    CANCEL = 0x03  # payload: empty; the appliance gives up on the stream
    # gate -> appliance
    HEAD = 0x81  # payload: "<3-digit status> <media>", media in MEDIA_TYPES
    BODY = 0x82  # payload: response body bytes (1..MAX_PAYLOAD)
    END = 0x83  # payload: usage JSON object, or empty; also the answer to a CANCEL
    ERROR = 0x84  # payload: a short error code; ends the stream
    GOAWAY = 0x85  # stream 0, payload: a short error code; ends the session
    USAGE = 0x86  # payload: usage JSON object (usage so far), just before an ERROR


CLIENT_KINDS: Final = frozenset({Kind.OPEN, Kind.DATA, Kind.CANCEL})
GATE_KINDS: Final = frozenset({Kind.HEAD, Kind.BODY, Kind.END, Kind.ERROR, Kind.GOAWAY, Kind.USAGE})

# The largest payload each kind may carry, and the smallest.
_PAYLOAD_BOUNDS: Final = {
    Kind.OPEN: (1, MAX_COMMAND_LINE),
    Kind.DATA: (1, MAX_PAYLOAD),
    Kind.CANCEL: (0, 0),
    Kind.HEAD: (5, 32),
    Kind.BODY: (1, MAX_PAYLOAD),
    Kind.END: (0, MAX_USAGE),
    Kind.ERROR: (1, MAX_CODE),
    Kind.GOAWAY: (1, MAX_CODE),
    Kind.USAGE: (2, MAX_USAGE),
}


class Frame(NamedTuple):
    kind: Kind
    stream: int
    payload: bytes


def encode(kind: Kind, stream: int, payload: bytes = b"") -> bytes:
    """One frame as bytes.  Callers split bodies into MAX_PAYLOAD pieces."""
    low, high = _PAYLOAD_BOUNDS[kind]
    if not low <= len(payload) <= high:
        raise ValueError(f"{kind.name} payload of {len(payload)} bytes")
    return HEADER.pack(kind, stream, len(payload)) + payload


class FrameWriter(Protocol):
    """Where a session's frames are written: an :class:`asyncio.StreamWriter`, an SSH
    channel's stdin (appliance side), or the gate's stdout when it is a file."""

    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...

    def close(self) -> None: ...

    def is_closing(self) -> bool: ...


class FrameDecoder:
    """Turns a byte stream into frames of one direction's kinds.

    ``accept`` is the set of kinds this side may receive.  Any violation
    raises :class:`Disallowed`; after that the decoder must not be used again.
    """

    __slots__ = ("_accept", "_buffer")

    def __init__(self, accept: frozenset[Kind]) -> None:
        self._accept = {int(k): k for k in accept}  # the kind's number -> the kind
        self._buffer = bytearray()

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a whole frame."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[Frame]:
        """Add ``data`` and return every frame it completes, in order."""
        buffer = self._buffer
        buffer += data
        frames: list[Frame] = []
        offset = 0
        size = len(buffer)
        header_size = HEADER.size
        accept = self._accept
        while size - offset >= header_size:
            number, stream, length = HEADER.unpack_from(buffer, offset)
            kind = accept.get(number)
            if kind is None:
                raise Disallowed("frame_kind")
            low, high = _PAYLOAD_BOUNDS[kind]
            if not low <= length <= high:
                raise Disallowed("frame_length")
            if kind == Kind.GOAWAY:
                if stream != 0:
                    raise Disallowed("frame_stream")
            elif not 1 <= stream <= MAX_STREAM_ID:
                raise Disallowed("frame_stream")
            end = offset + header_size + length
            if end > size:
                break
            frames.append(Frame(kind, stream, bytes(buffer[offset + header_size : end])))
            offset = end
        if offset:
            del buffer[:offset]
        return frames
