"""Tiny valid audio files made in code for tests (no downloads): WAV, MP3, and the other containers' heads."""

from __future__ import annotations

import io
import struct
import wave

__all__ = ["wav", "mp3", "flac", "ogg_opus", "m4a", "webm"]


def wav(seconds: float = 1.0, rate: int = 16000) -> bytes:
    """A mono 16-bit PCM WAV of silence."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(b"\0\0" * int(seconds * rate))
    return buffer.getvalue()


def mp3(frames: int = 40, id3: bool = True) -> bytes:
    """MPEG-1 Layer III frames of silence at 128 kbit/s, 44.1 kHz (417 bytes each), after an ID3v2 tag."""
    frame = b"\xff\xfb\x90\x64" + b"\0" * 413
    tag = b"ID3\x04\x00\x00\x00\x00\x00\x0a" + b"\0" * 10 if id3 else b""
    return tag + frame * frames


def flac(seconds: int = 2, rate: int = 16000) -> bytes:
    """The head of a FLAC stream: the magic and a STREAMINFO block naming its length."""
    packed = (rate << 44) | (0 << 41) | (15 << 36) | (seconds * rate)
    info = struct.pack(">HH", 4096, 4096) + b"\0" * 6 + packed.to_bytes(8, "big") + b"\0" * 16
    return b"fLaC" + b"\x80" + len(info).to_bytes(3, "big") + info


def ogg_opus(seconds: int = 3) -> bytes:
    """An Ogg page with an OpusHead packet, then a last page whose granule position is the length."""
    first = b"OggS\x00\x02" + (0).to_bytes(8, "little") + b"\0" * 12 + b"\x01\x13OpusHead\x01\x01" + b"\0" * 10
    last = b"OggS\x00\x04" + (seconds * 48000).to_bytes(8, "little") + b"\0" * 12
    return first + last


def m4a(seconds: int = 4) -> bytes:
    """An ftyp box and a moov box holding a version-0 mvhd with a 1000 Hz time scale."""
    ftyp = struct.pack(">I4s4sI", 16, b"ftyp", b"M4A ", 0)
    mvhd_body = b"\0" * 4 + b"\0" * 8 + struct.pack(">II", 1000, seconds * 1000) + b"\0" * 80
    mvhd = struct.pack(">I4s", 8 + len(mvhd_body), b"mvhd") + mvhd_body
    moov = struct.pack(">I4s", 8 + len(mvhd), b"moov") + mvhd
    return ftyp + moov


def webm() -> bytes:
    """The EBML magic and a little more (its length is not read)."""
    return b"\x1a\x45\xdf\xa3" + b"\x9f\x42\x86\x81\x01" + b"\0" * 32
