"""The stand-in's speech to text: ``/v1/audio/transcriptions`` and ``/v1/audio/translations``.

The "transcript" is a pure function of the audio bytes: words from their
SHA-256, about 2.5 words per second of audio where the container says its
length (8 words where it does not).  Every ``response_format`` vLLM serves is
answered (json, text, srt, vtt, verbose_json), and ``stream`` gets vLLM's
``transcription.chunk`` events, one word each, then a usage event when asked.
Nothing is kept: the audio is hashed and dropped.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from typing import Any

from cluster.standin._model import reply_words
from policy.bodies import load_routes
from policy.errors import BodyRejected, PeerError
from policy.multipart import parse_form

__all__ = ["WORDS_PER_SECOND", "DEFAULT_WORDS", "MAX_WORDS", "AudioError", "transcribe"]

WORDS_PER_SECOND = 2.5
"""Speech rate of the "transcript" (a typical speaking rate)."""

DEFAULT_WORDS = 8
"""Words when the audio's length is unknown."""

MAX_WORDS = 512
"""Most words in one transcript: bounds the answer whatever the header claims."""

_ROUTES = load_routes()
_SPECS = {path: route.form for route in _ROUTES.routes.values() if route.form is not None for path in [route.path]}


class AudioError(PeerError):
    """A request the stand-in refuses; its one argument is a fixed code."""


def _timestamp(seconds: float, separator: str) -> str:
    ms = round(seconds * 1000)
    return f"{ms // 3600000:02d}:{ms // 60000 % 60:02d}:{ms // 1000 % 60:02d}{separator}{ms % 1000:03d}"


def transcribe(path: str, body: bytes, model: str, new_id: Any) -> tuple[str, bytes] | Iterator[bytes]:
    """(content type, body) of a plain answer, or the events of a streamed one."""
    spec = _SPECS.get(path)
    if spec is None:
        raise AudioError("not_found")
    try:
        form = parse_form(body, spec)
    except BodyRejected as exc:
        raise AudioError(exc.code) from None
    fields: dict[str, str] = dict(form.fields)
    if fields.get("model", model) != model:
        raise AudioError("model_not_found")
    seconds = form.file.audio.seconds
    count = DEFAULT_WORDS if seconds is None else max(1, min(MAX_WORDS, round(seconds * WORDS_PER_SECOND)))
    seed = hashlib.sha256(form.file.data).hexdigest() + ("\ntranslate" if path.endswith("translations") else "")
    words, _ = reply_words(seed, count)
    text = " ".join(words)
    duration = seconds if seconds is not None else count / WORDS_PER_SECOND
    usage = {"type": "tokens", "input_tokens": 0, "output_tokens": len(words), "total_tokens": len(words)}
    if fields.get("stream") == "true":
        return _events(words, model, new_id("trsc"), fields.get("stream_include_usage") == "true")
    response_format = fields.get("response_format", "json")
    if response_format == "text":
        return "text/plain; charset=utf-8", (text + "\n").encode()
    if response_format == "srt":
        cue = f"1\n{_timestamp(0, ',')} --> {_timestamp(duration, ',')}\n{text}\n\n"
        return "text/plain; charset=utf-8", cue.encode()
    if response_format == "vtt":
        cue = f"WEBVTT\n\n{_timestamp(0, '.')} --> {_timestamp(duration, '.')}\n{text}\n\n"
        return "text/plain; charset=utf-8", cue.encode()
    if response_format == "verbose_json":
        segment = {
            "id": 0,
            "seek": 0,
            "start": 0.0,
            "end": round(duration, 3),
            "text": text,
            "tokens": [],
            "temperature": 0.0,
            "avg_logprob": 0.0,
            "compression_ratio": 1.0,
            "no_speech_prob": 0.0,
        }
        document: dict[str, Any] = {
            "task": "translate" if path.endswith("translations") else "transcribe",
            "language": "english" if path.endswith("translations") else fields.get("language", "en"),
            "duration": round(duration, 3),
            "text": text,
            "segments": [segment],
            "usage": usage,
        }
        granularities = [value for name, value in form.fields if name == "timestamp_granularities[]"]
        if "word" in granularities:
            step = duration / len(words)
            document["words"] = [
                {"word": w, "start": round(i * step, 3), "end": round((i + 1) * step, 3)} for i, w in enumerate(words)
            ]
        return "application/json", json.dumps(document, separators=(",", ":")).encode()
    return "application/json", json.dumps({"text": text, "usage": usage}, separators=(",", ":")).encode()


def _events(words: list[str], model: str, ident: str, include_usage: bool) -> Iterator[bytes]:
    created = int(time.time())

    def chunk(choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> bytes:
        obj: dict[str, Any] = {
            "id": ident,
            "object": "transcription.chunk",
            "created": created,
            "model": model,
            "choices": choices,
        }
        if usage is not None:
            obj["usage"] = usage
        return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"

    for index, word in enumerate(words):
        last = index == len(words) - 1
        yield chunk(
            [
                {
                    "delta": {"content": word if index == 0 else " " + word},
                    "finish_reason": "stop" if last else None,
                    "stop_reason": None,
                }
            ]
        )
    if include_usage:
        yield chunk([], {"prompt_tokens": 0, "completion_tokens": len(words), "total_tokens": len(words)})
    yield b"data: [DONE]\n\n"
