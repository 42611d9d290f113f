"""The stand-in's OpenAI-compatible endpoints, as vLLM shapes them.

:class:`StandinApp` maps one parsed request (method, path, Authorization
value, body bytes) to either a complete :class:`Reply` or an
:class:`EventStream` that the server paces and sends.  No I/O here and no
logging: prompts and completions are never written anywhere.

Errors are short OpenAI-style JSON objects whose message is a fixed code,
never an echo of the input.
"""

from __future__ import annotations

import base64
import hmac
import json
import re
import secrets
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import count
from typing import Any

from cluster.standin._audio import AudioError, transcribe
from cluster.standin._model import count_words, embed, reply_words
from cluster.standin._responses import input_texts, response_events, response_object
from cluster.standin._scoring import ScoringError, rerank_reply, score_reply
from cluster.standin._tools import ToolCall, tool_calls

__all__ = [
    "KINDS",
    "DEFAULT_MAX_TOKENS",
    "MAX_TOKENS_CAP",
    "MAX_INPUTS",
    "StandinConfig",
    "Reply",
    "EventStream",
    "StandinApp",
    "error_reply",
]

KINDS = ("chat", "embeddings")

STANDIN_VERSION = "sluice-standin-1"
"""What ``GET /version`` says (vLLM answers its own version there)."""

DEFAULT_MAX_TOKENS = 16
"""Tokens generated when a request names no max_tokens (vLLM's default is
the context; a small default keeps careless demo requests quick)."""

MAX_TOKENS_CAP = 4096
"""max_tokens above this is cut to it: bounds the work and the stream one
request can ask of the stand-in."""

MAX_INPUTS = 2048
"""Most inputs in one request: embedding inputs or completion prompts
(OpenAI's own limit for embeddings)."""

_JSON = "application/json"
_DONE_EVENT = b"data: [DONE]\n\n"
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    411: "invalid_request_error",
    413: "invalid_request_error",
    431: "invalid_request_error",
    500: "internal_error",
    501: "invalid_request_error",
}


@dataclass(frozen=True, slots=True)
class StandinConfig:
    """What one stand-in serves; validated once, at start."""

    model: str
    kind: str
    token_delay: float = 0.0
    dimensions: int = 32
    token: str | None = field(default=None, repr=False)
    """Bearer token required on every endpoint but /health (from the
    environment, never the command line); None: no authentication."""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError("kind must be 'chat' or 'embeddings'")
        if not self.model:
            raise ValueError("model must not be empty")
        if not 0 <= self.token_delay <= 60:
            raise ValueError("token_delay must be between 0 and 60 seconds")
        if not 1 <= self.dimensions <= 8192:
            raise ValueError("dimensions must be between 1 and 8192")
        if self.token is not None and not self.token:
            raise ValueError("token must not be empty when set")


@dataclass(frozen=True, slots=True)
class Reply:
    """A complete response."""

    status: int
    body: bytes
    content_type: str = _JSON
    extra: tuple[tuple[str, str], ...] = ()


@dataclass(slots=True)
class EventStream:
    """A streamed (SSE) response: one event per token, then the tail.

    The server sends ``token_events`` paced by the token delay, then every
    event of ``tail`` at once.  ``served`` counts as done only if all went out.
    """

    token_events: Iterator[bytes]
    tail: list[bytes]


class _Invalid(Exception):
    """A request the stand-in answers with an error reply."""

    def __init__(self, status: int, code: str) -> None:
        super().__init__(code)
        self.status = status
        self.code = code


def _dumps(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode("ascii")


def _event(obj: object) -> bytes:
    return b"data: " + _dumps(obj) + b"\n\n"


def error_reply(status: int, code: str) -> Reply:
    """A short OpenAI-style error; ``code`` is a fixed string of ours."""
    body = {
        "error": {
            "message": code,
            "type": _ERROR_TYPES.get(status, "invalid_request_error"),
            "param": None,
            "code": status,
        }
    }
    return Reply(status, _dumps(body))


def _reject_constant(name: str) -> None:
    raise ValueError("non-finite number")


def _load_object(body: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(body, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        raise _Invalid(400, "invalid_json") from None
    if not isinstance(obj, dict):
        raise _Invalid(400, "invalid_json")
    return obj


def _is_int(value: object) -> bool:
    return type(value) is int


def _max_tokens(obj: dict[str, Any]) -> int:
    value = obj.get("max_completion_tokens", obj.get("max_tokens"))
    if value is None:
        return DEFAULT_MAX_TOKENS
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise _Invalid(400, "invalid_max_tokens")
    return min(value, MAX_TOKENS_CAP)


def _include_usage(obj: dict[str, Any], stream: bool) -> tuple[bool, bool]:
    """``stream_options``: (include_usage, continuous_usage_stats), as vLLM reads them:
    usage so far on every chunk only together with the final usage."""
    options = obj.get("stream_options")
    if options is None:
        return False, False
    if not stream or not isinstance(options, dict):
        raise _Invalid(400, "invalid_stream_options")
    include = options.get("include_usage", False)
    continuous = options.get("continuous_usage_stats", False)
    if not isinstance(include, bool) or not isinstance(continuous, bool):
        raise _Invalid(400, "invalid_stream_options")
    return include, include and continuous


def _stream_flag(obj: dict[str, Any]) -> bool:
    stream = obj.get("stream", False)
    if not isinstance(stream, bool):
        raise _Invalid(400, "invalid_stream")
    return stream


def _is_image_part(part: object) -> bool:
    """An inline image (``{"type": "image_url", "image_url": {"url": "data:image/..."}}``), as vision models take."""
    if not isinstance(part, dict) or part.get("type") != "image_url" or not isinstance(part.get("image_url"), dict):
        return False
    url = part["image_url"].get("url")
    return isinstance(url, str) and url.startswith("data:image/")


def _message_text(content: object) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if _is_image_part(part):
                continue  # the stand-in does not look at images; their text parts decide the reply
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise _Invalid(400, "invalid_content")
            texts.append(part["text"])
        return "\n".join(texts)
    raise _Invalid(400, "invalid_content")


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _chat_call(call: ToolCall) -> dict[str, Any]:
    """A whole tool call in a chat message."""
    return {"id": call.call_id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}


def _chat_call_deltas(position: int, call: ToolCall) -> Iterator[dict[str, Any]]:
    """A tool call as vLLM streams it: id and name first, then the arguments piece by piece."""
    head = {"index": position, "id": call.call_id, "type": "function", "function": {"name": call.name, "arguments": ""}}
    yield {"role": "assistant", "content": None, "tool_calls": [head]} if position == 0 else {"tool_calls": [head]}
    for piece in call.pieces:
        yield {"tool_calls": [{"index": position, "function": {"arguments": piece}}]}


def _token_texts(words: list[str]) -> Iterator[str]:
    if words:
        yield words[0]
        for word in words[1:]:
            yield " " + word


ECHO_PREFIX = "/echo "
"""A last message that starts with this is answered with the rest of it, verbatim, one
whitespace-led word per token: the test-only way to make the stand-in emit given text
(the web chat's tests feed it hostile markup this way).  A real model has no such rule."""


def _echo_tokens(text: str, max_tokens: int) -> tuple[list[str], str] | None:
    if not text.startswith(ECHO_PREFIX):
        return None
    tokens = re.findall(r"\s*\S+\s*?", text[len(ECHO_PREFIX) :]) or [""]
    return tokens[:max_tokens], ("length" if len(tokens) > max_tokens else "stop")


class StandinApp:
    """The endpoints of one stand-in server."""

    def __init__(self, config: StandinConfig, stats: Callable[[], dict[str, int]]) -> None:
        self.config = config
        self._stats = stats
        self._expected = None if config.token is None else ("Bearer " + config.token).encode("utf-8")
        self._ids = count(1)
        self._id_prefix = secrets.token_hex(4)
        self._created = int(time.time())
        self._routes: dict[str, tuple[str, str | None, Callable[[bytes], Reply | EventStream]]] = {
            "/health": ("GET", None, self._health),
            "/stats": ("GET", None, self._stats_reply),
            "/v1/models": ("GET", None, self._models),
            "/version": ("GET", None, self._version),
            "/v1/chat/completions": ("POST", "chat", self._chat),
            "/v1/completions": ("POST", "chat", self._completions),
            "/v1/responses": ("POST", "chat", self._responses),
            "/v1/embeddings": ("POST", "embeddings", self._embeddings),
            "/v1/audio/transcriptions": ("POST", "chat", self._transcriptions),
            "/v1/audio/translations": ("POST", "chat", self._translations),
            "/v1/rerank": ("POST", "embeddings", self._rerank),
            "/v1/score": ("POST", "embeddings", self._score),
        }

    # ---------------------------------------------------------------- dispatch

    def handle(self, method: str, path: str, authorization: bytes | None, body: bytes) -> Reply | EventStream:
        """Route one request; every failure becomes an error reply."""
        if path != "/health" and not self._authorized(authorization):
            return error_reply(401, "unauthorized")
        route = self._routes.get(path)
        if route is None or (route[1] is not None and route[1] != self.config.kind):
            return error_reply(404, "not_found")
        allowed, _, handler = route
        if method != allowed:
            reply = error_reply(405, "method_not_allowed")
            return Reply(reply.status, reply.body, extra=(("allow", allowed),))
        try:
            return handler(body)
        except _Invalid as exc:
            return error_reply(exc.status, exc.code)

    def is_model_route(self, path: str) -> bool:
        """Whether ``path`` runs the model (counted in active_requests/served)."""
        route = self._routes.get(path)
        return route is not None and route[1] is not None

    def _authorized(self, authorization: bytes | None) -> bool:
        if self._expected is None:
            return True
        if authorization is None:
            return False
        return hmac.compare_digest(authorization, self._expected)

    def _new_id(self, prefix: str) -> str:
        return f"{prefix}-{self._id_prefix}{next(self._ids):012x}"

    def _check_model(self, obj: dict[str, Any]) -> None:
        model = obj.get("model", self.config.model)
        if not isinstance(model, str):
            raise _Invalid(400, "invalid_model")
        if model != self.config.model:
            raise _Invalid(404, "model_not_found")

    # ---------------------------------------------------------------- GET

    def _health(self, body: bytes) -> Reply:
        return Reply(200, b"", content_type="text/plain")

    def _version(self, body: bytes) -> Reply:
        return Reply(200, _dumps({"version": STANDIN_VERSION}))

    def _stats_reply(self, body: bytes) -> Reply:
        return Reply(200, _dumps(self._stats()))

    def _models(self, body: bytes) -> Reply:
        card = {
            "id": self.config.model,
            "object": "model",
            "created": self._created,
            "owned_by": "sluice-standin",
            "root": self.config.model,
            "parent": None,
        }
        return Reply(200, _dumps({"object": "list", "data": [card]}))

    # ---------------------------------------------------------------- chat

    def _chat(self, body: bytes) -> Reply | EventStream:
        obj = _load_object(body)
        self._check_model(obj)
        messages = obj.get("messages")
        if not isinstance(messages, list) or not messages:
            raise _Invalid(400, "invalid_messages")
        texts = []
        for item in messages:
            if not isinstance(item, dict) or not isinstance(item.get("role"), str):
                raise _Invalid(400, "invalid_messages")
            texts.append(_message_text(item.get("content")))
        max_tokens = _max_tokens(obj)
        stream = _stream_flag(obj)
        include_usage, continuous = _include_usage(obj, stream)
        prompt_tokens = sum(count_words(text) for text in texts)
        calls = tool_calls(obj, "\n".join(texts))
        echoed = _echo_tokens(texts[-1], max_tokens)
        if calls:
            pieces, finish = [], "tool_calls"
        elif echoed is None:
            words, finish = reply_words("\n".join(texts), max_tokens)
            pieces = list(_token_texts(words))
        else:
            pieces, finish = echoed
        usage = _usage(prompt_tokens, len(pieces) + sum(len(call.pieces) for call in calls))
        ident = self._new_id("chatcmpl")
        created = int(time.time())
        model = self.config.model
        if not stream:
            message: dict[str, Any] = {"role": "assistant", "content": "".join(pieces)}
            if calls:
                message = {"role": "assistant", "content": None, "tool_calls": [_chat_call(c) for c in calls]}
            choice = {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": finish,
            }
            reply = {
                "id": ident,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [choice],
                "usage": usage,
            }
            return Reply(200, _dumps(reply))

        def chunk(choices: list[dict[str, Any]], usage_value: dict[str, int] | None = None) -> bytes:
            obj: dict[str, Any] = {
                "id": ident,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": choices,
            }
            if include_usage:
                obj["usage"] = usage_value
            return _event(obj)

        def token_events() -> Iterator[bytes]:
            for index, text in enumerate(pieces):
                delta = {"role": "assistant", "content": text} if index == 0 else {"content": text}
                so_far = _usage(prompt_tokens, index + 1) if continuous else None
                yield chunk([{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}], so_far)
            for position, call in enumerate(calls):
                for delta in _chat_call_deltas(position, call):
                    yield chunk([{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}])

        tail = [chunk([{"index": 0, "delta": {}, "logprobs": None, "finish_reason": finish}], usage if continuous else None)]
        if include_usage:
            tail.append(chunk([], usage))
        tail.append(_DONE_EVENT)
        return EventStream(token_events(), tail)

    # ---------------------------------------------------------------- responses

    def _responses(self, body: bytes) -> Reply | EventStream:
        obj = _load_object(body)
        self._check_model(obj)
        if obj.get("store") is not False or obj.get("previous_response_id") is not None:
            raise _Invalid(400, "stateless_only")  # the gate always forwards store: false
        texts = input_texts(obj)
        if texts is None:
            raise _Invalid(400, "invalid_input")
        max_tokens = _max_tokens({"max_tokens": obj.get("max_output_tokens")})
        if _stream_flag(obj):
            return EventStream(response_events(obj, texts, max_tokens, self.config.model, self._new_id), [])
        return Reply(200, _dumps(response_object(obj, texts, max_tokens, self.config.model, self._new_id)))

    # ---------------------------------------------------------------- completions

    def _completions(self, body: bytes) -> Reply | EventStream:
        obj = _load_object(body)
        self._check_model(obj)
        prompts = self._prompts(obj.get("prompt"))
        max_tokens = _max_tokens(obj)
        stream = _stream_flag(obj)
        include_usage, continuous = _include_usage(obj, stream)
        results = []
        prompt_tokens = 0
        for text, tokens in prompts:
            prompt_tokens += tokens
            results.append(reply_words(text, max_tokens))
        usage = _usage(prompt_tokens, sum(len(words) for words, _ in results))
        ident = self._new_id("cmpl")
        created = int(time.time())
        model = self.config.model
        if not stream:
            choices = [
                {"index": index, "text": " ".join(words), "logprobs": None, "finish_reason": finish}
                for index, (words, finish) in enumerate(results)
            ]
            reply = {
                "id": ident,
                "object": "text_completion",
                "created": created,
                "model": model,
                "choices": choices,
                "usage": usage,
            }
            return Reply(200, _dumps(reply))

        def chunk(choices: list[dict[str, Any]], usage_value: dict[str, int] | None = None) -> bytes:
            obj: dict[str, Any] = {
                "id": ident,
                "object": "text_completion",
                "created": created,
                "model": model,
                "choices": choices,
            }
            if include_usage:
                obj["usage"] = usage_value
            return _event(obj)

        def token_events() -> Iterator[bytes]:
            delivered = 0
            for index, (words, _) in enumerate(results):
                for text in _token_texts(words):
                    delivered += 1
                    so_far = _usage(prompt_tokens, delivered) if continuous else None
                    yield chunk([{"index": index, "text": text, "logprobs": None, "finish_reason": None}], so_far)

        tail = [
            chunk([{"index": index, "text": "", "logprobs": None, "finish_reason": finish}], usage if continuous else None)
            for index, (_, finish) in enumerate(results)
        ]
        if include_usage:
            tail.append(chunk([], usage))
        tail.append(_DONE_EVENT)
        return EventStream(token_events(), tail)

    @staticmethod
    def _prompts(prompt: object) -> list[tuple[str, int]]:
        """(text to hash, prompt tokens) per prompt: a string, strings, ids or lists of ids."""
        if isinstance(prompt, str):
            return [(prompt, count_words(prompt))]
        if isinstance(prompt, list) and prompt and len(prompt) <= MAX_INPUTS:
            if all(isinstance(item, str) for item in prompt):
                return [(item, count_words(item)) for item in prompt]
            if all(_is_int(item) for item in prompt):
                return [(" ".join(map(str, prompt)), len(prompt))]
            if all(isinstance(item, list) and item and all(_is_int(i) for i in item) for item in prompt):
                return [(" ".join(map(str, item)), len(item)) for item in prompt]
        raise _Invalid(400, "invalid_prompt")

    # ---------------------------------------------------------------- audio

    def _audio(self, path: str, body: bytes) -> Reply | EventStream:
        try:
            answer = transcribe(path, body, self.config.model, self._new_id)
        except AudioError as exc:
            code = str(exc)
            raise _Invalid(404 if code == "model_not_found" else 400, code) from None
        if isinstance(answer, tuple):
            return Reply(200, answer[1], content_type=answer[0])
        return EventStream(answer, [])

    def _transcriptions(self, body: bytes) -> Reply | EventStream:
        return self._audio("/v1/audio/transcriptions", body)

    def _translations(self, body: bytes) -> Reply | EventStream:
        return self._audio("/v1/audio/translations", body)

    # ---------------------------------------------------------------- scoring

    def _rerank(self, body: bytes) -> Reply:
        obj = _load_object(body)
        self._check_model(obj)
        try:
            return Reply(200, _dumps(rerank_reply(obj, self.config.model, self._new_id("rerank"))))
        except ScoringError as exc:
            raise _Invalid(400, str(exc)) from None

    def _score(self, body: bytes) -> Reply:
        obj = _load_object(body)
        self._check_model(obj)
        try:
            return Reply(200, _dumps(score_reply(obj, self.config.model, self._new_id("score"), int(time.time()))))
        except ScoringError as exc:
            raise _Invalid(400, str(exc)) from None

    # ---------------------------------------------------------------- embeddings

    def _embeddings(self, body: bytes) -> Reply:
        obj = _load_object(body)
        self._check_model(obj)
        inputs = self._embedding_inputs(obj.get("input"))
        encoding = obj.get("encoding_format", "float")
        if encoding not in ("float", "base64"):
            raise _Invalid(400, "invalid_encoding_format")
        dimensions = obj.get("dimensions", self.config.dimensions)
        if not _is_int(dimensions) or dimensions != self.config.dimensions:
            raise _Invalid(400, "invalid_dimensions")
        data = []
        prompt_tokens = 0
        for index, (key, tokens) in enumerate(inputs):
            prompt_tokens += tokens
            vector = embed(key, dimensions)
            value: list[float] | str
            if encoding == "base64":
                value = base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode("ascii")
            else:
                value = vector
            data.append({"object": "embedding", "index": index, "embedding": value})
        reply = {
            "object": "list",
            "data": data,
            "model": self.config.model,
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
        }
        return Reply(200, _dumps(reply))

    @staticmethod
    def _embedding_inputs(value: object) -> list[tuple[bytes, int]]:
        """(hash key, prompt tokens) per input."""
        if isinstance(value, str):
            return [(b"text:" + value.encode("utf-8", "surrogatepass"), count_words(value))]
        if isinstance(value, list) and value and len(value) <= MAX_INPUTS:
            if all(isinstance(item, str) for item in value):
                return [(b"text:" + item.encode("utf-8", "surrogatepass"), count_words(item)) for item in value]
            if all(_is_int(item) for item in value):
                return [(b"ids:" + ",".join(map(str, value)).encode("ascii"), len(value))]
            if all(isinstance(item, list) and item and all(_is_int(i) for i in item) for item in value):
                return [(b"ids:" + ",".join(map(str, item)).encode("ascii"), len(item)) for item in value]
        raise _Invalid(400, "invalid_input")
