"""The stand-in's "model": deterministic words and vectors from hashes.

A reply is a pure function of the prompt: the prompt's SHA-256 picks the
reply's natural length and seeds a stream of words from a fixed vocabulary.
One word is one token.  An embedding is a unit vector drawn from the SHA-256
of its input.  Nothing here looks at time, randomness or the network, so tests
can predict every answer.
"""

from __future__ import annotations

import hashlib
import math
import struct

__all__ = [
    "VOCABULARY",
    "MIN_REPLY_WORDS",
    "MAX_REPLY_WORDS",
    "count_words",
    "natural_length",
    "reply_words",
    "embed",
]

VOCABULARY: tuple[str, ...] = tuple(
    """
    alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike
    november oscar papa quebec romeo sierra tango uniform victor whiskey xray yankee
    zulu amber basalt cedar dune ember fjord glacier harbor island jasper kelp
    lagoon meadow nectar orchid pebble quartz river summit tundra umber valley
    willow xenon yarrow zephyr aurora breeze canyon dawn estuary fern grove
    heron iris juniper koala lotus
    """.split()
)
"""64 words: one byte of hash picks one word (``byte & 63``)."""

MIN_REPLY_WORDS = 8
MAX_REPLY_WORDS = 4096
"""Bounds of a reply's natural length (before max_tokens cuts it): up to the
max_tokens cap, so that max_tokens is what usually ends a reply ("length"),
as with a real model asked for a long answer, while some prompts end sooner
("stop") and tests can find them with :func:`natural_length`."""

_WORD_MASK = len(VOCABULARY) - 1
if len(VOCABULARY) != 64:  # the mask above relies on a power of two
    raise RuntimeError("VOCABULARY must hold 64 words")


def count_words(text: str) -> int:
    """Tokens of a text: its whitespace-separated words."""
    return len(text.split())


def _seed(prompt: str) -> bytes:
    return hashlib.sha256(prompt.encode("utf-8", "surrogatepass")).digest()


def natural_length(prompt: str) -> int:
    """How many words the reply to ``prompt`` has when max_tokens allows."""
    span = MAX_REPLY_WORDS - MIN_REPLY_WORDS + 1
    return MIN_REPLY_WORDS + int.from_bytes(_seed(prompt)[:4], "big") % span


def reply_words(prompt: str, max_tokens: int) -> tuple[list[str], str]:
    """The reply's words and its finish_reason ("stop" or "length")."""
    seed = _seed(prompt)
    span = MAX_REPLY_WORDS - MIN_REPLY_WORDS + 1
    natural = MIN_REPLY_WORDS + int.from_bytes(seed[:4], "big") % span
    count = min(natural, max_tokens)
    words: list[str] = []
    block = 0
    while len(words) < count:
        digest = hashlib.sha256(seed + block.to_bytes(4, "big")).digest()
        words.extend(VOCABULARY[byte & _WORD_MASK] for byte in digest)
        block += 1
    return words[:count], ("length" if count < natural else "stop")


def embed(key: bytes, dimensions: int) -> list[float]:
    """A unit vector of ``dimensions`` float32 values drawn from SHA-256 of ``key``.

    The values are rounded through float32, so the JSON floats and the
    base64 form (little-endian float32) carry exactly the same numbers.
    """
    seed = hashlib.sha256(key).digest()
    raw: list[float] = []
    block = 0
    while len(raw) < dimensions:
        digest = hashlib.sha256(seed + block.to_bytes(4, "big")).digest()
        raw.extend(value / 32767.5 - 1.0 for value in struct.unpack(">16H", digest))
        block += 1
    raw = raw[:dimensions]
    norm = math.sqrt(sum(value * value for value in raw)) or 1.0
    packed = struct.pack(f"<{dimensions}f", *(value / norm for value in raw))
    return list(struct.unpack(f"<{dimensions}f", packed))
