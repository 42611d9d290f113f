"""Audio containers told by their leading bytes, and their length where the header says it.

The audio routes accept a file only if its first bytes are one of the
containers speech models read: WAV (``RIFF....WAVE``), MP3 (an ID3v2 tag or
an MPEG audio frame sync), FLAC (``fLaC``), Ogg (``OggS``), WebM/Matroska
(the EBML magic) and MP4/M4A (an ``ftyp`` box).  The client's file name and
declared type are never looked at.

The length in seconds is read from the container's own header where that is
cheap and bounded (WAV, FLAC, Ogg Vorbis/Opus, MP4 ``mvhd``, constant
bit-rate MP3); elsewhere it is None and the audio is metered by tokens only.
Nothing here decodes audio, and every read is bounded by the data's length.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from ._limits import _NOT_JSON
from .errors import BodyRejected

__all__ = ["AudioInfo", "sniff_audio", "MAX_AUDIO_SECONDS"]

# Longer claims than a day are not real audio (a header can say anything);
# the length is clamped to this rather than trusted.
MAX_AUDIO_SECONDS: Final = 24 * 3600.0

# The most bytes the walk over MP4 boxes and Ogg pages looks at from the end.
_TAIL_SCAN: Final = 64 * 1024
# The most MP4 boxes walked at one level.
_MAX_BOXES: Final = 64

# MPEG-1 Layer III bit rates (kbit/s) by the header's 4-bit index, and sample rates.
_MP3_BITRATES: Final = (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 0)
_MP3_V2_BITRATES: Final = (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160, 0)


@dataclass(frozen=True, slots=True)
class AudioInfo:
    """What the gate knows of an audio file: its container, and its length if the header says it."""

    kind: str  # "wav", "mp3", "flac", "ogg", "webm", "m4a"
    media_type: str  # the type the gate sends for it
    seconds: float | None


def _not_audio() -> BodyRejected:
    return BodyRejected("not_audio", _NOT_JSON)


def _bounded(seconds: float | None) -> float | None:
    if seconds is None or seconds != seconds or seconds < 0:  # NaN is not a length
        return None
    return min(seconds, MAX_AUDIO_SECONDS)


def _wav_seconds(data: bytes) -> float | None:
    """data chunk bytes / the fmt chunk's byte rate, walking the RIFF chunks in order."""
    at, byte_rate = 12, 0
    for _ in range(_MAX_BOXES):
        if at + 8 > len(data):
            return None
        chunk, size = data[at : at + 4], struct.unpack_from("<I", data, at + 4)[0]
        if chunk == b"fmt " and size >= 16 and at + 24 <= len(data):
            byte_rate = struct.unpack_from("<I", data, at + 16)[0]
        elif chunk == b"data":
            size = min(size, len(data) - at - 8)
            return size / byte_rate if byte_rate else None
        at += 8 + size + (size & 1)
    return None


def _id3_end(data: bytes) -> int:
    """Where the audio after an ID3v2 tag starts (its size is four 7-bit bytes)."""
    if len(data) < 10 or any(b & 0x80 for b in data[6:10]):
        raise _not_audio()
    size = (data[6] << 21) | (data[7] << 14) | (data[8] << 7) | data[9]
    return 10 + size + (10 if data[5] & 0x10 else 0)


def _mp3_frame_seconds(data: bytes, at: int) -> float | None:
    """The length at a constant bit rate, from the first frame header at ``at``."""
    if at + 4 > len(data):
        return None
    b1, b2 = data[at + 1], data[at + 2]
    version, layer = (b1 >> 3) & 3, (b1 >> 1) & 3
    index = b2 >> 4
    if layer != 1 or version == 1:  # Layer III only; version 1 is reserved
        return None
    kbps = (_MP3_BITRATES if version == 3 else _MP3_V2_BITRATES)[index]
    return (len(data) - at) * 8 / (kbps * 1000) if kbps else None


def _is_frame_sync(data: bytes, at: int) -> bool:
    return at + 2 <= len(data) and data[at] == 0xFF and data[at + 1] & 0xE0 == 0xE0 and (data[at + 1] >> 1) & 3 != 0


def _flac_seconds(data: bytes) -> float | None:
    """STREAMINFO (the first metadata block): 20-bit sample rate and 36-bit sample count."""
    if len(data) < 42 or data[4] & 0x7F != 0:
        return None
    packed = int.from_bytes(data[18:26], "big")
    rate, samples = packed >> 44, packed & ((1 << 36) - 1)
    return samples / rate if rate and samples else None


def _ogg_seconds(data: bytes) -> float | None:
    """The last page's granule position over the codec's rate (Vorbis: its header; Opus: 48 kHz)."""
    head = data[:_TAIL_SCAN]
    if b"OpusHead" in head:
        rate = 48000
    else:
        at = head.find(b"\x01vorbis")
        if at < 0 or at + 16 > len(head):
            return None
        rate = struct.unpack_from("<I", head, at + 12)[0]
    last = data.rfind(b"OggS", max(0, len(data) - _TAIL_SCAN))
    if not rate or last < 0 or last + 14 > len(data):
        return None
    granule = struct.unpack_from("<q", data, last + 6)[0]
    return granule / rate if granule > 0 else None


def _mp4_seconds(data: bytes) -> float | None:
    """The movie header (moov > mvhd): its duration over its time scale."""
    at = 0
    for _ in range(_MAX_BOXES):
        if at + 8 > len(data):
            return None
        size, kind = struct.unpack_from(">I4s", data, at)
        if kind == b"moov":
            inner = at + 8
            end = min(at + size, len(data)) if size >= 8 else len(data)
            for _ in range(_MAX_BOXES):
                if inner + 8 > end:
                    return None
                child, child_kind = struct.unpack_from(">I4s", data, inner)
                if child_kind == b"mvhd":
                    version = data[inner + 8] if inner + 8 < end else 255
                    if version == 0 and inner + 28 <= end:
                        scale, duration = struct.unpack_from(">II", data, inner + 20)
                    elif version == 1 and inner + 40 <= end:
                        scale, duration = struct.unpack_from(">IQ", data, inner + 28)
                    else:
                        return None
                    return duration / scale if scale else None
                if child < 8:
                    return None
                inner += child
            return None
        if size < 8:
            return None
        at += size
    return None


def sniff_audio(data: bytes) -> AudioInfo:
    """The container of ``data`` by its leading bytes; ``not_audio`` when it is none of them."""
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        return AudioInfo("wav", "audio/wav", _bounded(_wav_seconds(data)))
    if data[:4] == b"fLaC":
        return AudioInfo("flac", "audio/flac", _bounded(_flac_seconds(data)))
    if data[:4] == b"OggS":
        return AudioInfo("ogg", "audio/ogg", _bounded(_ogg_seconds(data)))
    if data[:4] == b"\x1a\x45\xdf\xa3":
        return AudioInfo("webm", "audio/webm", None)
    if data[4:8] == b"ftyp":
        return AudioInfo("m4a", "audio/mp4", _bounded(_mp4_seconds(data)))
    if data[:3] == b"ID3":
        start = _id3_end(data)
        if not _is_frame_sync(data, start):
            raise _not_audio()
        return AudioInfo("mp3", "audio/mpeg", _bounded(_mp3_frame_seconds(data, start)))
    if _is_frame_sync(data, 0) and (data[1] >> 1) & 3 == 1:
        return AudioInfo("mp3", "audio/mpeg", _bounded(_mp3_frame_seconds(data, 0)))
    raise _not_audio()
