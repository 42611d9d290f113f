"""httpx2 transports that seal the official ``openai`` client's requests to the cluster's gate.

:class:`SealedTransport` (and :class:`AsyncSealedTransport`) sit under an
``httpx2.Client`` that the ``openai`` client is given.  For each request:

* ``POST {base}/chat/completions``, ``{base}/completions``,
  ``{base}/embeddings``, ``{base}/responses``, ``{base}/rerank``,
  ``{base}/score`` and ``{base}/audio/transcriptions|translations`` (a
  multipart form, sealed with its own Content-Type) are *sealed*: the JSON body the ``openai`` client
  built becomes the content of a Binary HTTP request (RFC 9292) for
  ``https://sluice/v1/...``, dated, padded, and encapsulated (RFC 9458, or
  chunked OHTTP when the body says ``"stream": true``) to the gate's pinned
  key; it goes to ``{base}/sealed/...`` with only ``Authorization``,
  ``Sluice-Model`` and ``Content-Type`` in the clear.  The answer is opened
  and handed back as an ordinary response (status, ``content-type``, body);
  a streamed answer is opened chunk by chunk as it arrives.
* ``GET`` and ``HEAD`` requests without a body (``/models``) pass through
  unchanged: they carry metadata only.
* Anything else is refused with :class:`UnsealableRequestError` *before*
  anything is sent, because its body could hold a prompt and it cannot be
  sealed (fail closed: a route that is not sealed is never sent in the clear
  by this transport).

Trust: the key configuration is fetched from ``{base}/sealed/keys`` (through
the appliance, which is not trusted) and used only if its SHA-256 fingerprint
is one of ``pinned_fingerprints``, which come out of band from the gate's
operator.  There is no trust on first use here.  A served key that is not
pinned raises :class:`~sluice_sdk.errors.KeyConfigError`.  The configuration
is fetched again every :data:`KEY_REFRESH_SECONDS` and after the appliance
reports ``sealed_invalid``, so a client follows the gate's key rotation once
the new key is pinned too.  Until then (and while the keys cannot be fetched)
it keeps sealing to the pinned key it has, which the gate accepts for its
overlap window, and logs a warning; once the gate refuses that key, the next
request fetches again and raises the error naming the served fingerprint.

Failing closed on answers: a sealed request's answer is either a ``200`` of
the expected sealed media type, which is opened (any failure to authenticate
or decode it raises the message-less :class:`~sluice_sdk.errors.SealError`,
for streams at the chunk that fails or at the end of a truncated stream), or
a 4xx/5xx error in the clear about metadata (authentication, model, quota,
cluster), returned as is so that the ``openai`` client raises its usual
exception.  Any other answer raises :class:`SealError`; unauthenticated bytes
are never returned as an answer.

Padding: the Binary HTTP request is padded with zero bytes (RFC 9292 Section
3.8) to a multiple of ``pad_to`` bytes (default :data:`DEFAULT_PAD_TO`), so
that the sealed request's size shows the prompt's size only to that
granularity.  ``pad_to=0`` turns padding off.  Responses are sized by the gate.

This is the only module of the SDK that imports ``httpx2``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Final

import httpx2

from ._form import FORM_MEDIA_TYPE, form_model_and_stream
from .bhttp import (
    DEFAULT_LIMITS,
    Request,
    ResponseData,
    ResponseEnd,
    ResponseEvent,
    ResponseHead,
    ResponseStreamDecoder,
    decode_response,
    encode_request,
)
from .client import with_date
from .errors import BhttpError, KeyConfigError, SdkError, SealError
from .keyconfig import KEYS_MEDIA_TYPE, KeyConfig, decode_key_configs, select_key_config
from .ohttp import (
    CHUNKED_REQUEST_MEDIA_TYPE,
    CHUNKED_RESPONSE_MEDIA_TYPE,
    REQUEST_MEDIA_TYPE,
    RESPONSE_MEDIA_TYPE,
    ChunkedResponseOpener,
    ResponseOpener,
    encapsulate_chunked_request,
    encapsulate_request,
)

__all__ = [
    "SealedTransport",
    "AsyncSealedTransport",
    "UnsealableRequestError",
    "SEALED_ROUTES",
    "DEFAULT_PAD_TO",
    "MAX_PAD_TO",
    "KEY_REFRESH_SECONDS",
    "fetch_key_configs",
    "sealed_http_client",
    "sealed_async_http_client",
]

_log = logging.getLogger(__name__)

# The routes that are sealed: the path under the base URL -> the inner request's path.
SEALED_ROUTES: Final = {
    "/chat/completions": b"/v1/chat/completions",
    "/completions": b"/v1/completions",
    "/embeddings": b"/v1/embeddings",
    "/responses": b"/v1/responses",
    "/rerank": b"/v1/rerank",
    "/score": b"/v1/score",
    "/audio/transcriptions": b"/v1/audio/transcriptions",
    "/audio/translations": b"/v1/audio/translations",
}
# The inner request's scheme and authority: fixed, the gate ignores them.
_INNER_SCHEME: Final = b"https"
_INNER_AUTHORITY: Final = b"sluice"
_SEALED_PREFIX: Final = "/sealed"
_KEYS_PATH: Final = "/sealed/keys"
_MODEL_HEADER: Final = "Sluice-Model"
# Requests that may pass through in the clear: they carry no body.
_CLEAR_METHODS: Final = frozenset({"GET", "HEAD"})

# 1 KiB buckets hide a prompt's exact length at a cost of at most 1 KiB per
# request; 4 KiB or more hide more (see docs/sealed.md).
DEFAULT_PAD_TO: Final = 1024
# The appliance accepts a sealed body up to the route's limit plus 64 KiB of
# sealing overhead; 32 KiB of padding leaves room for the chunk framing.
MAX_PAD_TO: Final = 32 * 1024
# The largest JSON body sealed: the Binary HTTP content limit the gate decodes with.
MAX_REQUEST_CONTENT: Final = DEFAULT_LIMITS.max_content
# The largest padded Binary HTTP request: what the gate's decoder accepts.
_MAX_INNER_MESSAGE: Final = DEFAULT_LIMITS.max_message
# A whole sealed answer: the largest Binary HTTP message plus the response
# nonce and tag (16 + 16 bytes) with room to spare.
_MAX_SEALED_RESPONSE: Final = DEFAULT_LIMITS.max_message + 1024
# application/ohttp-keys: at most 16 configurations of about 1.3 KiB (X-Wing).
_MAX_KEYS_BODY: Final = 64 * 1024
# A clear error document is a few hundred bytes; longer ones are cut here.
_MAX_CLEAR_ERROR: Final = 64 * 1024
# A model name as the gate's grammar allows it is shorter; this only keeps
# the clear header sane (printable ASCII, no spaces).
_MAX_MODEL: Final = 256
# The gate keeps a rotated-out key for a day (cluster keys rotate --overlap);
# refetching hourly moves clients to the new key well inside that window.
KEY_REFRESH_SECONDS: Final = 3600.0
# Timeout of fetch_key_configs when the caller gives none.
_FETCH_TIMEOUT: Final = 30.0


class UnsealableRequestError(SdkError, ValueError):
    """This transport refused to send a request: it cannot be sealed and must not go in the clear.

    Raised before anything is sent.  The message names the request and why.
    """

    code = "unsealable_request"
    status = 400


# --- the sans-IO core shared by both transports ----------------------------------------------


@dataclass(frozen=True, slots=True)
class _Route:
    """A request to seal: its inner path, and where the sealed request goes."""

    path: bytes  # the inner request's path, /v1/...
    url: httpx2.URL  # {base}/sealed/...


@dataclass(frozen=True, slots=True)
class _Sealed:
    """A sealed request ready to send, and how to open its answer."""

    request: httpx2.Request
    streaming: bool
    opener: ResponseOpener | ChunkedResponseOpener


def _normalize_pins(pinned_fingerprints: Iterable[str] | str) -> tuple[str, ...]:
    pins = (pinned_fingerprints,) if isinstance(pinned_fingerprints, str) else tuple(pinned_fingerprints)
    if not pins:
        raise KeyConfigError(
            "pinned_fingerprints is empty: pin the gate's key fingerprint "
            "(ask the gate's operator; `sluice-seal fingerprint` shows what is served)"
        )
    normalized = []
    for pin in pins:
        if not isinstance(pin, str):
            raise KeyConfigError("pinned_fingerprints holds strings: SHA-256 fingerprints in hex")
        value = pin.strip().lower()
        if len(value) != 64 or not all(c in "0123456789abcdef" for c in value):
            raise KeyConfigError("a pinned fingerprint is a SHA-256 fingerprint: 64 hex digits")
        normalized.append(value)
    return tuple(normalized)


def _base_url(base_url: str | httpx2.URL) -> httpx2.URL:
    url = httpx2.URL(base_url)
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError("base_url must be an http(s) URL such as https://sluice.example.org/v1")
    if url.query or url.fragment:
        raise ValueError("base_url must not have a query or a fragment")
    return url.copy_with(path=url.path.rstrip("/"))


def _media(headers: httpx2.Headers) -> str:
    """The media type of ``content-type``, lowercase, without parameters."""
    value: str = headers.get("content-type", "")
    return value.split(";", 1)[0].strip().lower()


def _padded(message: bytes, pad_to: int) -> bytes:
    """``message`` with zero bytes up to a multiple of ``pad_to`` (RFC 9292 Section 3.8)."""
    if pad_to <= 0 or len(message) >= _MAX_INNER_MESSAGE:
        return message
    target = min(-(-len(message) // pad_to) * pad_to, _MAX_INNER_MESSAGE)
    return message + bytes(target - len(message))


def _refusal(request: httpx2.Request, why: str) -> UnsealableRequestError:
    return UnsealableRequestError(f"refusing {request.method} {request.url.path}: {why}")


def _timeout(extensions: dict[str, object]) -> dict[str, object]:
    """Only the ``timeout`` extension (the openai client's) travels to the outer request."""
    timeout = extensions.get("timeout")
    return {"timeout": timeout} if timeout is not None else {}


def _has_body(request: httpx2.Request) -> bool:
    return "transfer-encoding" in request.headers or request.headers.get("content-length", "0") != "0"


class _Core:
    """What both transports share: routing, the pinned key cache, sealing, reading answers."""

    __slots__ = ("base", "keys_url", "pins", "pad_to", "clock", "lock", "_config", "_fetched_at")

    def __init__(self, base_url: str | httpx2.URL, pinned_fingerprints: Iterable[str] | str, pad_to: int) -> None:
        if isinstance(pad_to, bool) or not isinstance(pad_to, int) or not 0 <= pad_to <= MAX_PAD_TO:
            raise ValueError(f"pad_to must be 0 (no padding) to {MAX_PAD_TO} bytes")
        self.base = _base_url(base_url)
        self.keys_url = self.base.copy_with(path=self.base.path + _KEYS_PATH)
        self.pins = _normalize_pins(pinned_fingerprints)
        self.pad_to = pad_to
        self.clock: Callable[[], float] = time.monotonic
        self._config: KeyConfig | None = None
        self._fetched_at = 0.0
        self.lock = threading.Lock()

    # routing

    def route(self, request: httpx2.Request) -> _Route | None:
        """Where to seal ``request``, None to pass it through; refuses the rest."""
        url = request.url
        same_origin = (url.scheme, url.host, url.port) == (self.base.scheme, self.base.host, self.base.port)
        prefix = self.base.path + "/"
        under = url.path[len(self.base.path) :] if same_origin and url.path.startswith(prefix) else None
        if under is not None and under in SEALED_ROUTES:
            if request.method != "POST":
                raise _refusal(request, "only POST is sealed on this route")
            if url.query:
                raise _refusal(request, "a query string cannot be sealed")
            return _Route(SEALED_ROUTES[under], url.copy_with(path=self.base.path + _SEALED_PREFIX + under))
        if request.method in _CLEAR_METHODS and not _has_body(request):
            return None
        raise _refusal(
            request,
            "only POST to chat/completions, completions, embeddings, responses, rerank, score and audio/* under the "
            "base URL "
            "can be sealed, "
            "and nothing with a body goes in the clear",
        )

    # the pinned key configuration

    def cached(self) -> KeyConfig | None:
        config = self._config
        if config is not None and self.clock() - self._fetched_at < KEY_REFRESH_SECONDS:
            return config
        return None

    def store(self, config: KeyConfig) -> None:
        self._config = config
        self._fetched_at = self.clock()

    def forget(self) -> None:
        """The gate refused a request as ``sealed_invalid``: fetch the key again before the next one."""
        self._config = None

    def keep_stale(self, reason: str) -> KeyConfig | None:
        """A refresh failed: the pinned configuration in use, kept for another period (None if none).

        During a rotation the gate still accepts the old key for its overlap
        window, so a client whose pins do not yet hold the new key keeps
        working until the gate refuses the old one (``sealed_invalid``); then
        the next request fetches again and fails with the served fingerprint.
        """
        config = self._config
        if config is not None:
            self._fetched_at = self.clock()
            _log.warning(
                "%s at %s; still sealing to the pinned key %s until the gate refuses it",
                reason,
                self.keys_url,
                config.fingerprint(),
            )
        return config

    def keys_request(self, extensions: dict[str, object]) -> httpx2.Request:
        return httpx2.Request("GET", self.keys_url, headers={"Accept": KEYS_MEDIA_TYPE}, extensions=_timeout(extensions))

    def accept_keys(self, response: httpx2.Response, body: bytes | None) -> KeyConfig:
        configs = _check_keys_response(self.keys_url, response, body)
        try:
            return select_key_config(configs, self.pins)
        except KeyConfigError:
            served = ", ".join(c.fingerprint() for c in configs if c.usable) or "none usable"
            raise KeyConfigError(
                f"the gate's key served at {self.keys_url} is not pinned (served: {served}): "
                "the gate's key changed, or the appliance substituted one. Ask the gate's operator "
                "for the new fingerprint, check it out of band, and pin it"
            ) from None

    # sealing

    def seal(self, request: httpx2.Request, route: _Route, content: bytes, config: KeyConfig) -> _Sealed:
        if len(content) > MAX_REQUEST_CONTENT:
            raise _refusal(request, f"the body is larger than {MAX_REQUEST_CONTENT} bytes")
        model, streaming = _inspect_body(request, content)
        content_type = request.headers.get("content-type", "")
        media_type = content_type.encode("latin-1") if content_type.lower().startswith(FORM_MEDIA_TYPE) else b"application/json"
        inner = Request(b"POST", _INNER_SCHEME, _INNER_AUTHORITY, route.path, ((b"content-type", media_type),), content)
        message = _padded(encode_request(with_date(inner)), self.pad_to)
        opener: ResponseOpener | ChunkedResponseOpener
        if streaming:
            body, opener = encapsulate_chunked_request(config, message)
        else:
            body, opener = encapsulate_request(config, message)
        media = CHUNKED_REQUEST_MEDIA_TYPE if streaming else REQUEST_MEDIA_TYPE
        headers = [(_MODEL_HEADER, model), ("Content-Type", media)]
        authorization = request.headers.get("authorization")
        if authorization is not None:
            headers.insert(0, ("Authorization", authorization))
        outer = httpx2.Request("POST", route.url, headers=headers, content=body, extensions=_timeout(request.extensions))
        return _Sealed(outer, streaming, opener)

    # answers

    def is_sealed_answer(self, response: httpx2.Response, sealed: _Sealed) -> bool:
        """True: open it; False: a clear error to return as is; SealError: anything else."""
        expected = CHUNKED_RESPONSE_MEDIA_TYPE if sealed.streaming else RESPONSE_MEDIA_TYPE
        if response.status_code == 200 and _media(response.headers) == expected:
            return True
        if 400 <= response.status_code <= 599:
            return False
        raise SealError from None

    def clear_error(self, response: httpx2.Response, body: bytes) -> httpx2.Response:
        """The clear error as a fresh response; ``sealed_invalid`` makes the next request refetch the key."""
        if _error_code(response, body) == "sealed_invalid":
            self.forget()
        framing = ("content-length", "transfer-encoding")
        headers = [(k, v) for k, v in response.headers.multi_items() if k not in framing]
        return httpx2.Response(response.status_code, headers=headers, content=body)


def _refresh_failure(exc: Exception) -> str:
    if isinstance(exc, KeyConfigError):
        return "the served key configuration is not usable or not pinned (the gate's key changed?)"
    return f"cannot fetch the key configuration ({type(exc).__name__})"


def _check_keys_response(url: httpx2.URL, response: httpx2.Response, body: bytes | None) -> tuple[KeyConfig, ...]:
    if response.status_code != 200:
        raise KeyConfigError(
            f"GET {url} answered HTTP {response.status_code}: sealed requests are not served there, or not now "
            "(the base URL is the OpenAI one, ending in /v1)"
        )
    if _media(response.headers) != KEYS_MEDIA_TYPE:
        raise KeyConfigError(f"GET {url} did not answer {KEYS_MEDIA_TYPE}")
    if body is None:
        raise KeyConfigError(f"GET {url} answered more than {_MAX_KEYS_BODY} bytes: not a key configuration list")
    try:
        return decode_key_configs(body)
    except KeyConfigError as exc:
        raise KeyConfigError(f"the key configurations served at {url} are malformed: {exc}") from None


def _inspect_body(request: httpx2.Request, content: bytes) -> tuple[str, bool]:
    """``(model, streaming)`` from the JSON body (or the audio form) the openai client built."""
    content_type = request.headers.get("content-type", "")
    if content_type.lower().startswith(FORM_MEDIA_TYPE):
        form_model, form_stream = form_model_and_stream(content_type, content)
        return _checked_model(request, form_model), form_stream
    try:
        document = json.loads(content)
    except (UnicodeDecodeError, ValueError):
        raise _refusal(request, "the body is not JSON") from None
    if not isinstance(document, dict):
        raise _refusal(request, "the body is not a JSON object")
    return _checked_model(request, document.get("model")), document.get("stream") is True


def _checked_model(request: httpx2.Request, model: object) -> str:
    """``model`` if it can travel in the clear as ``Sluice-Model``; a refusal otherwise."""
    if not isinstance(model, str) or not 0 < len(model) <= _MAX_MODEL or not all("\x21" <= c <= "\x7e" for c in model):
        raise _refusal(request, "the body names no valid model (printable ASCII, no spaces)")
    return model


def _error_code(response: httpx2.Response, body: bytes) -> object:
    if _media(response.headers) != "application/json" or "content-encoding" in response.headers:
        return None
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        return None
    error = document.get("error") if isinstance(document, dict) else None
    return error.get("code") if isinstance(error, dict) else None


def _opened_response(response: bytes) -> httpx2.Response:
    """The plaintext response of a whole answer; SealError if it does not decode."""
    try:
        inner = decode_response(response)
    except BhttpError:
        raise SealError from None
    return httpx2.Response(inner.status, headers=_inner_headers(inner.headers), content=inner.content)


def _inner_headers(fields: tuple[tuple[bytes, bytes], ...]) -> list[tuple[bytes, bytes]]:
    """The inner response's ``content-type``: the only header handed on."""
    return [(b"content-type", value) for name, value in fields if name == b"content-type"][:1]


class _StreamReader:
    """Sans-IO: sealed chunks in, the inner response's head and content pieces out."""

    __slots__ = ("_opener", "_decoder", "head", "_ended")

    def __init__(self, opener: ChunkedResponseOpener) -> None:
        self._opener = opener
        self._decoder = ResponseStreamDecoder()
        self.head: ResponseHead | None = None
        self._ended = False

    def feed(self, data: bytes) -> list[bytes]:
        try:
            return self._take([e for plaintext in self._opener.feed(data) for e in self._decoder.feed(plaintext)])
        except BhttpError:
            raise SealError from None

    def finish(self) -> list[bytes]:
        try:
            events = self._decoder.feed(self._opener.finish())
            events += self._decoder.finish()
        except BhttpError:
            raise SealError from None
        pieces = self._take(events)
        if self.head is None or not self._ended:
            raise SealError from None
        return pieces

    def _take(self, events: list[ResponseEvent]) -> list[bytes]:
        pieces: list[bytes] = []
        for event in events:
            if isinstance(event, ResponseHead):
                self.head = event
            elif isinstance(event, ResponseData):
                if event.data:
                    pieces.append(event.data)
            elif isinstance(event, ResponseEnd):
                self._ended = True
        return pieces

    def response(self, stream: httpx2.SyncByteStream | httpx2.AsyncByteStream) -> httpx2.Response:
        if self.head is None:  # pragma: no cover - callers only ask once the head arrived
            raise SealError from None
        return httpx2.Response(self.head.status, headers=_inner_headers(self.head.headers), stream=stream)


# --- sync ------------------------------------------------------------------------------------------


def _raw(response: httpx2.Response) -> Iterator[bytes]:
    """The transport-level body as it arrives (``iter_raw`` refuses a body already loaded)."""
    stream = response.stream
    if not isinstance(stream, httpx2.SyncByteStream):
        raise TypeError("the inner transport of SealedTransport must be synchronous")
    yield from stream


async def _araw(response: httpx2.Response) -> AsyncIterator[bytes]:
    stream = response.stream
    if not isinstance(stream, httpx2.AsyncByteStream):
        raise TypeError("the inner transport of AsyncSealedTransport must be asynchronous")
    async for part in stream:
        yield part


def _read_sync(response: httpx2.Response, limit: int) -> bytes | None:
    """The raw body, or None (and the response closed) if it is longer than ``limit``."""
    parts: list[bytes] = []
    size = 0
    try:
        for part in _raw(response):
            size += len(part)
            if size > limit:
                return None
            parts.append(part)
    finally:
        response.close()
    return b"".join(parts)


class _OpenedSyncStream(httpx2.SyncByteStream):
    def __init__(self, outer: httpx2.Response, chunks: Iterator[bytes], reader: _StreamReader, first: list[bytes]) -> None:
        self._outer = outer
        self._chunks = chunks
        self._reader = reader
        self._first = first

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self._first
            for data in self._chunks:
                yield from self._reader.feed(data)
            yield from self._reader.finish()
        finally:
            self._outer.close()

    def close(self) -> None:
        self._outer.close()


class SealedTransport(httpx2.BaseTransport):
    """Seals chat completions, completions and embeddings to the gate's pinned key (see the module doc).

    ``base_url`` is the OpenAI base URL of the appliance (``.../v1``);
    ``pinned_fingerprints`` the gate key fingerprints to accept (required,
    never empty: there is no trust on first use); ``transport`` the transport
    that reaches the appliance (default: a new ``httpx2.HTTPTransport()``);
    ``pad_to`` the padding bucket in bytes (0: no padding).
    """

    def __init__(
        self,
        base_url: str | httpx2.URL,
        *,
        pinned_fingerprints: Iterable[str] | str,
        transport: httpx2.BaseTransport | None = None,
        pad_to: int = DEFAULT_PAD_TO,
    ) -> None:
        self._core = _Core(base_url, pinned_fingerprints, pad_to)
        self._inner = transport if transport is not None else httpx2.HTTPTransport()

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        route = self._core.route(request)
        if route is None:
            return self._inner.handle_request(request)
        content = request.read()
        sealed = self._core.seal(request, route, content, self._key_config(request.extensions))
        outer = self._inner.handle_request(sealed.request)
        try:
            is_sealed = self._core.is_sealed_answer(outer, sealed)
        except SealError:
            outer.close()
            raise SealError from None
        if not is_sealed:
            body = _read_sync(outer, _MAX_CLEAR_ERROR)
            return self._core.clear_error(outer, body if body is not None else b"")
        if isinstance(sealed.opener, ResponseOpener):
            body = _read_sync(outer, _MAX_SEALED_RESPONSE)
            if body is None:
                raise SealError from None
            return _opened_response(sealed.opener.open(body))
        return self._open_stream(outer, sealed.opener)

    def _open_stream(self, outer: httpx2.Response, opener: ChunkedResponseOpener) -> httpx2.Response:
        reader = _StreamReader(opener)
        chunks = _raw(outer)
        first: list[bytes] = []
        try:
            for data in chunks:
                first += reader.feed(data)
                if reader.head is not None:
                    return reader.response(_OpenedSyncStream(outer, chunks, reader, first))
            first += reader.finish()  # a stream that ended before or with its head
        except BaseException:
            outer.close()
            raise
        outer.close()
        return reader.response(httpx2.ByteStream(b"".join(first)))

    def _key_config(self, extensions: dict[str, object]) -> KeyConfig:
        with self._core.lock:
            config = self._core.cached()
            if config is not None:
                return config
            try:
                response = self._inner.handle_request(self._core.keys_request(extensions))
                config = self._core.accept_keys(response, _read_sync(response, _MAX_KEYS_BODY))
            except (KeyConfigError, httpx2.TransportError) as exc:
                stale = self._core.keep_stale(_refresh_failure(exc))
                if stale is None:
                    raise
                return stale
            self._core.store(config)
            return config

    def close(self) -> None:
        self._inner.close()


# --- async -----------------------------------------------------------------------------------------


async def _read_async(response: httpx2.Response, limit: int) -> bytes | None:
    parts: list[bytes] = []
    size = 0
    try:
        async for part in _araw(response):
            size += len(part)
            if size > limit:
                return None
            parts.append(part)
    finally:
        await response.aclose()
    return b"".join(parts)


class _OpenedAsyncStream(httpx2.AsyncByteStream):
    def __init__(self, outer: httpx2.Response, chunks: AsyncIterator[bytes], reader: _StreamReader, first: list[bytes]) -> None:
        self._outer = outer
        self._chunks = chunks
        self._reader = reader
        self._first = first

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            for piece in self._first:
                yield piece
            async for data in self._chunks:
                for piece in self._reader.feed(data):
                    yield piece
            for piece in self._reader.finish():
                yield piece
        finally:
            await self._outer.aclose()

    async def aclose(self) -> None:
        await self._outer.aclose()


class AsyncSealedTransport(httpx2.AsyncBaseTransport):
    """The asyncio/trio twin of :class:`SealedTransport`, for ``httpx2.AsyncClient`` and ``openai.AsyncOpenAI``."""

    def __init__(
        self,
        base_url: str | httpx2.URL,
        *,
        pinned_fingerprints: Iterable[str] | str,
        transport: httpx2.AsyncBaseTransport | None = None,
        pad_to: int = DEFAULT_PAD_TO,
    ) -> None:
        self._core = _Core(base_url, pinned_fingerprints, pad_to)
        self._inner = transport if transport is not None else httpx2.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        route = self._core.route(request)
        if route is None:
            return await self._inner.handle_async_request(request)
        content = await request.aread()
        sealed = self._core.seal(request, route, content, await self._key_config(request.extensions))
        outer = await self._inner.handle_async_request(sealed.request)
        try:
            is_sealed = self._core.is_sealed_answer(outer, sealed)
        except SealError:
            await outer.aclose()
            raise SealError from None
        if not is_sealed:
            body = await _read_async(outer, _MAX_CLEAR_ERROR)
            return self._core.clear_error(outer, body if body is not None else b"")
        if isinstance(sealed.opener, ResponseOpener):
            body = await _read_async(outer, _MAX_SEALED_RESPONSE)
            if body is None:
                raise SealError from None
            return _opened_response(sealed.opener.open(body))
        return await self._open_stream(outer, sealed.opener)

    async def _open_stream(self, outer: httpx2.Response, opener: ChunkedResponseOpener) -> httpx2.Response:
        reader = _StreamReader(opener)
        chunks = _araw(outer)
        first: list[bytes] = []
        try:
            async for data in chunks:
                first += reader.feed(data)
                if reader.head is not None:
                    return reader.response(_OpenedAsyncStream(outer, chunks, reader, first))
            first += reader.finish()
        except BaseException:
            await outer.aclose()
            raise
        await outer.aclose()
        return reader.response(httpx2.ByteStream(b"".join(first)))

    async def _key_config(self, extensions: dict[str, object]) -> KeyConfig:
        # No lock: two first requests may both fetch, and both check the pins.
        config = self._core.cached()
        if config is not None:
            return config
        try:
            response = await self._inner.handle_async_request(self._core.keys_request(extensions))
            config = self._core.accept_keys(response, await _read_async(response, _MAX_KEYS_BODY))
        except (KeyConfigError, httpx2.TransportError) as exc:
            stale = self._core.keep_stale(_refresh_failure(exc))
            if stale is None:
                raise
            return stale
        self._core.store(config)
        return config

    async def aclose(self) -> None:
        await self._inner.aclose()


# --- helpers for the recipes (sluice_sdk.connect) and the CLI -----------------------------------


def fetch_key_configs(
    base_url: str | httpx2.URL, *, transport: httpx2.BaseTransport | None = None, timeout: float = _FETCH_TIMEOUT
) -> tuple[KeyConfig, ...]:
    """The key configurations served at ``{base_url}/sealed/keys`` (unverified: compare before pinning).

    :class:`~sluice_sdk.errors.KeyConfigError` if none are served or they are
    malformed; ``ConnectionError`` if the appliance cannot be reached.
    """
    keys_url = _base_url(base_url)
    keys_url = keys_url.copy_with(path=keys_url.path + _KEYS_PATH)
    request = httpx2.Request(
        "GET", keys_url, headers={"Accept": KEYS_MEDIA_TYPE}, extensions={"timeout": httpx2.Timeout(timeout).as_dict()}
    )
    inner = transport if transport is not None else httpx2.HTTPTransport()
    try:
        response = inner.handle_request(request)
        body = _read_sync(response, _MAX_KEYS_BODY)
    except httpx2.TransportError as exc:
        raise ConnectionError(f"cannot fetch {keys_url}: {type(exc).__name__}") from exc
    finally:
        if transport is None:
            inner.close()
    return _check_keys_response(keys_url, response, body)


def sealed_http_client(
    base_url: str,
    pinned_fingerprints: Iterable[str] | str,
    *,
    pad_to: int = DEFAULT_PAD_TO,
    transport: httpx2.BaseTransport | None = None,
) -> httpx2.Client:
    """An ``httpx2.Client`` whose every request goes through a :class:`SealedTransport`."""
    sealed = SealedTransport(base_url, pinned_fingerprints=pinned_fingerprints, transport=transport, pad_to=pad_to)
    return httpx2.Client(transport=sealed, trust_env=False)


def sealed_async_http_client(
    base_url: str,
    pinned_fingerprints: Iterable[str] | str,
    *,
    pad_to: int = DEFAULT_PAD_TO,
    transport: httpx2.AsyncBaseTransport | None = None,
) -> httpx2.AsyncClient:
    """An ``httpx2.AsyncClient`` whose every request goes through an :class:`AsyncSealedTransport`."""
    sealed = AsyncSealedTransport(base_url, pinned_fingerprints=pinned_fingerprints, transport=transport, pad_to=pad_to)
    return httpx2.AsyncClient(transport=sealed, trust_env=False)
