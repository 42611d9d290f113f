"""The sealing transports under the official openai client, against a fake appliance + gate.

:class:`FakeAppliance` implements the appliance's HTTP contract for sealed
requests and, behind it, what the gate does (:func:`sluice_sdk.gateway.open_request`
with a :class:`KeyRing` and a :class:`ReplayGuard`, then an answer sealed whole
or chunk by chunk with :class:`ResponseStreamEncoder` and
:class:`ChunkedResponseSealer`), answering like the stand-in model server
would (an echo of the message count).  It records every outer request, so
the tests can say what the appliance saw.  It is reached through
``httpx2.MockTransport`` here and through a real HTTP server on 127.0.0.1
(:func:`serve`) by the recipe and CLI tests.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx2
import openai
import pytest

import sluice_sdk
from sluice_sdk import bhttp, transport
from sluice_sdk.errors import BhttpError, KeyConfigError, SealError
from sluice_sdk.gateway import open_request
from sluice_sdk.keyconfig import encode_key_configs
from sluice_sdk.keys import KeyRing, generate_key
from sluice_sdk.ohttp import ChunkedResponseSealer, ResponseSealer
from sluice_sdk.replay import ReplayGuard
from sluice_sdk.transport import AsyncSealedTransport, SealedTransport, UnsealableRequestError

API_KEY = "sk-test-key"
BASE = "http://appliance.test/v1"
PROMPT = "the launch code is 0000-PROMPT-PROMPT"
CHAT_MODEL = "chat-model"
EMBED_MODEL = "embed-model"
MODELS = {CHAT_MODEL: ("chat", "completions"), EMBED_MODEL: ("embeddings",)}
SEALED = {"/v1/sealed/chat/completions": "chat", "/v1/sealed/completions": "completions", "/v1/sealed/embeddings": "embeddings"}
INNER_PATHS = {"chat": b"/v1/chat/completions", "completions": b"/v1/completions", "embeddings": b"/v1/embeddings"}


@dataclass
class Seen:
    """One outer request, as the appliance saw it."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Answer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes | Iterator[bytes]


def _error(status: int, code: str) -> Answer:
    document = {"error": {"message": f"rejected: {code}", "type": "invalid_request_error", "param": None, "code": code}}
    return Answer(status, [("content-type", "application/json")], json.dumps(document).encode())


@dataclass
class FakeAppliance:
    """The appliance's sealed contract with a gate behind it; every knob is for a test."""

    ring: KeyRing = field(default_factory=lambda: KeyRing(generate_key(1)))
    guard: ReplayGuard = field(default_factory=lambda: ReplayGuard(60))
    seen: list[Seen] = field(default_factory=list)
    inner: list[bhttp.Request] = field(default_factory=list)
    served_keys: bytes | None = None  # None: the ring's; else these bytes (a substituted key)
    keys_status: int = 200
    quota_exhausted: bool = False
    tamper: Callable[[bytes], bytes] | None = None  # applied to a whole sealed answer
    tamper_stream: Callable[[int, bytes], bytes] | None = None  # (piece index, sealed piece) -> piece
    cut_stream_after: int | None = None  # stop a sealed stream after this many SSE events, unsealed end
    clear_answer: Answer | None = None  # answer sealed requests with this instead
    produced: int = 0  # SSE events sealed so far, to see that streams are opened as they arrive

    @property
    def fingerprint(self) -> str:
        return self.ring.current.config.fingerprint()

    def handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Answer:
        self.seen.append(Seen(method, path, headers, body))
        if method == "GET" and path == "/v1/sealed/keys":
            if self.keys_status != 200:
                return _error(self.keys_status, "sealed_unavailable")
            keys = self.served_keys if self.served_keys is not None else self.ring.encoded_configs()
            return Answer(200, [("content-type", "application/ohttp-keys")], keys)
        if headers.get("authorization") != f"Bearer {API_KEY}":
            return _error(401, "invalid_api_key")
        if method == "GET" and path == "/v1/models":
            data = [{"id": m, "object": "model", "created": 0, "owned_by": "sluice"} for m in MODELS]
            return Answer(200, [("content-type", "application/json")], json.dumps({"object": "list", "data": data}).encode())
        route = SEALED.get(path)
        if method != "POST" or route is None:
            return _error(404, "not_found")
        media = headers.get("content-type")
        if media not in ("message/ohttp-req", "message/ohttp-chunked-req"):
            return _error(415, "unsupported_media_type")
        model = headers.get("sluice-model", "")
        if route not in MODELS.get(model, ()):
            return _error(404, "model_not_found")
        if self.quota_exhausted:
            return _error(429, "quota_exceeded")
        if self.clear_answer is not None:
            return self.clear_answer
        return self._gate(route, model, body, chunked=media == "message/ohttp-chunked-req")

    def _gate(self, route: str, model: str, body: bytes, chunked: bool) -> Answer:
        try:
            opened = open_request(self.ring, self.guard, body, chunked=chunked)
        except (SealError, BhttpError):
            return _error(400, "sealed_invalid")
        request = opened.request
        self.inner.append(request)
        if (
            request.method != b"POST"
            or request.scheme != b"https"
            or request.authority != b"sluice"
            or request.path != INNER_PATHS[route]
            or request.header_values(b"content-type") != (b"application/json",)
        ):
            return _error(400, "sealed_route_mismatch")
        document = json.loads(request.content)
        if document.get("model") != model:
            return _error(400, "model_mismatch")
        status, media, events = _model_server(route, document)
        sealer = opened.sealer
        if isinstance(sealer, ResponseSealer):
            content = b"".join(events)
            sealed = sealer.seal(bhttp.encode_response(bhttp.Response(status, ((b"content-type", media),), content)))
            if self.tamper is not None:
                sealed = self.tamper(sealed)
            return Answer(200, [("content-type", "message/ohttp-res")], sealed)
        assert isinstance(sealer, ChunkedResponseSealer)
        return Answer(200, [("content-type", "message/ohttp-chunked-res")], self._stream(sealer, status, media, events))

    def _stream(self, sealer: ChunkedResponseSealer, status: int, media: bytes, events: list[bytes]) -> Iterator[bytes]:
        encoder = bhttp.ResponseStreamEncoder()
        pieces = [sealer.write(encoder.head(status, ((b"content-type", media),)))]
        for index, event in enumerate(events):
            if self.cut_stream_after is not None and index >= self.cut_stream_after:
                break
            pieces.append(sealer.write(encoder.data(event)))
        else:
            pieces.append(sealer.close(encoder.end()))
        for index, piece in enumerate(pieces):
            if self.tamper_stream is not None:
                piece = self.tamper_stream(index, piece)
            self.produced = index
            yield piece


def _model_server(route: str, document: dict[str, Any]) -> tuple[int, bytes, list[bytes]]:
    """What the stand-in model server answers: ``(status, content-type, body pieces)``."""
    model = document["model"]
    if document.get("max_tokens", 0) > 1000:
        error = {"error": {"message": "max_tokens is too large", "type": "BadRequestError", "param": None, "code": 400}}
        return 400, b"application/json", [json.dumps(error).encode()]
    if route == "embeddings":
        inputs = document["input"] if isinstance(document["input"], list) else [document["input"]]
        data = [{"object": "embedding", "index": i, "embedding": [float(len(text)), 0.5]} for i, text in enumerate(inputs)]
        usage = {"prompt_tokens": len(inputs), "total_tokens": len(inputs)}
        return 200, b"application/json", [json.dumps({"object": "list", "data": data, "model": model, "usage": usage}).encode()]
    if route == "completions":
        answer = {
            "id": "cmpl-1",
            "object": "text_completion",
            "created": 0,
            "model": model,
            "choices": [
                {"index": 0, "text": f"prompt of {len(document['prompt'])} characters", "finish_reason": "stop", "logprobs": None}
            ],
        }
        return 200, b"application/json", [json.dumps(answer).encode()]
    words = ["you", " sent", f" {len(document['messages'])}", " messages"]
    if not document.get("stream"):
        answer = {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 0,
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(words)}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": len(words), "total_tokens": 3 + len(words)},
        }
        return 200, b"application/json", [json.dumps(answer).encode()]

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        event = {
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        return b"data: " + json.dumps(event).encode() + b"\n\n"

    events = [chunk({"role": "assistant", "content": ""})]
    events += [chunk({"content": word}) for word in words]
    events += [chunk({}, "stop"), b"data: [DONE]\n\n"]
    return 200, b"text/event-stream", events


# --- adapters: MockTransport (sync and async) and a real HTTP server on 127.0.0.1 ---------------


def mock_transport(fake: FakeAppliance) -> httpx2.MockTransport:
    def handler(request: httpx2.Request) -> httpx2.Response:
        answer = fake.handle(request.method, request.url.path, dict(request.headers), request.read())
        return httpx2.Response(answer.status, headers=answer.headers, content=answer.body)

    return httpx2.MockTransport(handler)


def async_mock_transport(fake: FakeAppliance) -> httpx2.MockTransport:
    async def handler(request: httpx2.Request) -> httpx2.Response:
        answer = fake.handle(request.method, request.url.path, dict(request.headers), await request.aread())
        if isinstance(answer.body, bytes):
            return httpx2.Response(answer.status, headers=answer.headers, content=answer.body)
        pieces = answer.body

        async def stream() -> AsyncIterator[bytes]:
            for piece in pieces:
                yield piece

        return httpx2.Response(answer.status, headers=answer.headers, content=stream())

    return httpx2.MockTransport(handler)


@contextmanager
def serve(fake: FakeAppliance) -> Iterator[str]:
    """``fake`` on a real HTTP server at 127.0.0.1 (an ephemeral port); yields its base URL."""

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("content-length", "0"))
            body = self.rfile.read(length) if length else b""
            headers = {k.lower(): v for k, v in self.headers.items()}
            answer = fake.handle(self.command, self.path, headers, body)
            self.send_response(answer.status)
            for name, value in answer.headers:
                self.send_header(name, value)
            if isinstance(answer.body, bytes):
                self.send_header("content-length", str(len(answer.body)))
                self.end_headers()
                self.wfile.write(answer.body)
                return
            self.end_headers()  # HTTP/1.0: the body runs to the end of the connection
            for piece in answer.body:
                self.wfile.write(piece)
                self.wfile.flush()

        do_GET = do_POST = _answer

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


# --- fixtures -----------------------------------------------------------------------------------


@pytest.fixture
def fake() -> FakeAppliance:
    return FakeAppliance()


@contextmanager
def sealed_client(fake: FakeAppliance, **options: Any) -> Iterator[openai.OpenAI]:
    """The real openai client over a SealedTransport over the fake appliance."""
    pins = options.pop("pins", [fake.fingerprint])
    sealed = SealedTransport(BASE, pinned_fingerprints=pins, transport=mock_transport(fake), **options)
    http_client = httpx2.Client(transport=sealed)
    with openai.OpenAI(base_url=BASE, api_key=API_KEY, http_client=http_client, max_retries=0) as client:  # type: ignore[arg-type]
        yield client


def _set_clock(client: openai.OpenAI, clock: Callable[[], float]) -> None:
    """Drive the transport's key refresh clock (the http client is ours: a SealedTransport)."""
    sealed: Any = client._client._transport
    sealed._core.clock = clock


def _chat(client: openai.OpenAI, **options: Any) -> Any:
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": PROMPT}]
    return client.chat.completions.create(model=CHAT_MODEL, messages=messages, **options)  # type: ignore[arg-type]


def _assert_sealed_only(fake: FakeAppliance) -> None:
    """The appliance never saw the prompt, and saw only the clear metadata of the contract."""
    assert fake.seen
    for seen in fake.seen:
        assert PROMPT.encode() not in seen.body
        assert b"be brief" not in seen.body
        if seen.path.startswith("/v1/sealed/") and seen.method == "POST":
            assert set(seen.headers) == {"host", "authorization", "sluice-model", "content-type", "content-length"}


# --- chat, completions, embeddings, models -------------------------------------------------------


def test_chat_is_sealed_end_to_end(fake: FakeAppliance) -> None:
    with sealed_client(fake) as client:
        reply = _chat(client)
    assert reply.choices[0].message.content == "you sent 2 messages"
    keys, chat = fake.seen
    assert (keys.method, keys.path) == ("GET", "/v1/sealed/keys")
    assert "authorization" not in keys.headers  # the key fetch carries no credentials
    assert (chat.method, chat.path) == ("POST", "/v1/sealed/chat/completions")
    assert chat.headers["sluice-model"] == CHAT_MODEL
    assert chat.headers["authorization"] == f"Bearer {API_KEY}"
    assert chat.headers["content-type"] == "message/ohttp-req"
    _assert_sealed_only(fake)
    (inner,) = fake.inner
    assert json.loads(inner.content)["messages"][1]["content"] == PROMPT
    assert len(inner.header_values(b"date")) == 1


def test_chat_stream_is_opened_as_it_arrives(fake: FakeAppliance) -> None:
    with sealed_client(fake) as client:
        stream = _chat(client, stream=True)
        pieces: list[str] = []
        for chunk in stream:
            if not pieces:
                assert fake.produced < 4  # the first words came out before the gate sealed the rest
            if chunk.choices and chunk.choices[0].delta.content:
                pieces.append(chunk.choices[0].delta.content)
    assert "".join(pieces) == "you sent 2 messages"
    assert fake.seen[-1].headers["content-type"] == "message/ohttp-chunked-req"
    _assert_sealed_only(fake)


def test_completions_and_embeddings(fake: FakeAppliance) -> None:
    with sealed_client(fake) as client:
        completion = client.completions.create(model=CHAT_MODEL, prompt=PROMPT)
        embeddings = client.embeddings.create(model=EMBED_MODEL, input=[PROMPT, "x"])
    assert completion.choices[0].text == f"prompt of {len(PROMPT)} characters"
    assert [e.embedding[0] for e in embeddings.data] == [float(len(PROMPT)), 1.0]
    assert [s.path for s in fake.seen] == ["/v1/sealed/keys", "/v1/sealed/completions", "/v1/sealed/embeddings"]
    assert fake.seen[-1].headers["sluice-model"] == EMBED_MODEL
    _assert_sealed_only(fake)


def test_models_pass_through_in_the_clear(fake: FakeAppliance) -> None:
    with sealed_client(fake) as client:
        models = client.models.list()
    assert [m.id for m in models.data] == list(MODELS)
    (seen,) = fake.seen  # no key fetch needed for a clear request
    assert (seen.method, seen.path) == ("GET", "/v1/models")


def test_key_configuration_fetched_once(fake: FakeAppliance) -> None:
    with sealed_client(fake) as client:
        for _ in range(3):
            _chat(client)
    assert [s.path for s in fake.seen].count("/v1/sealed/keys") == 1


def test_padding_hides_the_exact_length(fake: FakeAppliance) -> None:
    def sizes(pad_to: int) -> set[int]:
        fake.seen.clear()
        with sealed_client(fake, pad_to=pad_to) as client:
            for length in (10, 50, 300):
                client.embeddings.create(model=EMBED_MODEL, input="x" * length)
        return {len(s.body) for s in fake.seen if s.method == "POST"}

    assert len(sizes(1024)) == 1
    assert len(sizes(0)) == 3
    assert fake.inner and all(json.loads(r.content)["model"] == EMBED_MODEL for r in fake.inner)


# --- errors in the clear map to the openai client's exceptions ----------------------------------


def test_clear_errors_become_openai_exceptions(fake: FakeAppliance) -> None:
    sealed = SealedTransport(BASE, pinned_fingerprints=[fake.fingerprint], transport=mock_transport(fake))
    http_client = httpx2.Client(transport=sealed)
    with openai.OpenAI(base_url=BASE, api_key="sk-wrong", http_client=http_client, max_retries=0) as client:  # type: ignore[arg-type]
        with pytest.raises(openai.AuthenticationError) as caught:
            _chat(client)
    assert caught.value.status_code == 401
    assert caught.value.code == "invalid_api_key"
    with sealed_client(fake) as client:
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": PROMPT}])
        with pytest.raises(openai.NotFoundError):
            client.embeddings.create(model=CHAT_MODEL, input=PROMPT)  # model does not serve the route
        fake.quota_exhausted = True
        with pytest.raises(openai.RateLimitError) as limited:
            _chat(client, stream=True)
    assert limited.value.code == "quota_exceeded"
    _assert_sealed_only(fake)


def test_model_server_error_comes_back_sealed(fake: FakeAppliance) -> None:
    with sealed_client(fake) as client:
        with pytest.raises(openai.BadRequestError) as caught:
            _chat(client, max_tokens=5000)
        with pytest.raises(openai.BadRequestError):
            _chat(client, max_tokens=5000, stream=True)
    assert "max_tokens is too large" in str(caught.value)
    assert all(b"max_tokens is too large" not in s.body for s in fake.seen)


# --- pinning ------------------------------------------------------------------------------------


def test_reject_a_changed_key(fake: FakeAppliance) -> None:
    old = fake.fingerprint
    fake.ring = KeyRing(generate_key(2))
    with sealed_client(fake, pins=[old]) as client:
        with pytest.raises(KeyConfigError, match="not pinned") as caught:
            _chat(client)
        assert fake.fingerprint in str(caught.value)  # what is served, to compare with the operator's
        assert "operator" in str(caught.value)
        client.models.list()  # clear requests still work
    assert all(s.method == "GET" for s in fake.seen)  # nothing was sealed to the unpinned key


def test_reject_a_substituted_key(fake: FakeAppliance) -> None:
    fake.served_keys = encode_key_configs([generate_key(1).config])  # same id, the appliance's own key
    with sealed_client(fake) as client:
        with pytest.raises(KeyConfigError, match="not pinned"):
            _chat(client)
    assert [s.path for s in fake.seen] == ["/v1/sealed/keys"]


@pytest.mark.parametrize(
    ("status", "keys", "message"),
    [(503, b"", "HTTP 503"), (200, b"\x00\x05abc", "malformed"), (404, b"", "HTTP 404")],
)
def test_reject_a_bad_key_endpoint(fake: FakeAppliance, status: int, keys: bytes, message: str) -> None:
    fake.keys_status = status
    fake.served_keys = keys
    with sealed_client(fake) as client:
        with pytest.raises(KeyConfigError, match=message):
            _chat(client)


def test_reject_keys_with_the_wrong_media_type() -> None:
    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, headers={"content-type": "text/html"}, content=b"<html>")

    sealed = SealedTransport(BASE, pinned_fingerprints=["a" * 64], transport=httpx2.MockTransport(handler))
    with httpx2.Client(transport=sealed) as client, pytest.raises(KeyConfigError, match="application/ohttp-keys"):
        client.post(f"{BASE}/embeddings", json={"model": "m", "input": "x"})


def test_rotation_with_both_fingerprints_pinned(fake: FakeAppliance) -> None:
    now = [1000.0]
    old = fake.ring.current
    new = generate_key(2)
    with sealed_client(fake, pins=[old.config.fingerprint(), new.config.fingerprint()]) as client:
        _set_clock(client, lambda: now[0])
        _chat(client)
        fake.ring.rotate(new, overlap_seconds=3600)
        _chat(client)  # still sealed to the old key, accepted in the overlap window
        assert fake.seen[-1].body[0] == old.key_id  # the key id leads an encapsulated request
        now[0] += transport.KEY_REFRESH_SECONDS  # the client refetches and moves to the new key
        _chat(client)
        fake.ring = KeyRing(new)  # the old key is gone
        _chat(client)
    assert [s.path for s in fake.seen].count("/v1/sealed/keys") == 2
    assert fake.seen[-1].body[0] == new.key_id


def test_sealed_invalid_makes_the_next_request_refetch(fake: FakeAppliance) -> None:
    old = fake.ring.current
    new = generate_key(2)
    with sealed_client(fake, pins=[old.config.fingerprint(), new.config.fingerprint()]) as client:
        _chat(client)
        fake.ring = KeyRing(new)  # rotated without overlap (say, a compromised key)
        with pytest.raises(openai.BadRequestError) as caught:
            _chat(client)
        assert caught.value.code == "sealed_invalid"
        assert _chat(client).choices[0].message.content == "you sent 2 messages"


# --- failing closed on answers ------------------------------------------------------------------


def test_reject_every_flipped_byte_of_a_whole_answer(fake: FakeAppliance) -> None:
    with sealed_client(fake) as client:
        _chat(client)  # the key configuration is cached; from here on each answer is altered
        for position in [*range(40), -17, -1]:  # nonce, ciphertext, tag

            def flip(sealed: bytes, position: int = position) -> bytes:
                tampered = bytearray(sealed)
                tampered[position] ^= 0x01
                return bytes(tampered)

            fake.tamper = flip
            with pytest.raises(SealError):
                _chat(client)


def test_reject_a_flipped_byte_in_a_stream(fake: FakeAppliance) -> None:
    def flip(index: int, piece: bytes) -> bytes:
        return piece[:-1] + bytes([piece[-1] ^ 1]) if index == 3 else piece

    fake.tamper_stream = flip
    with sealed_client(fake) as client:
        received = []
        with pytest.raises(SealError):
            for chunk in _chat(client, stream=True):
                received.append(chunk)
    assert 0 < len(received) < 4  # what came before the altered chunk, and nothing after


def test_reject_a_truncated_stream(fake: FakeAppliance) -> None:
    fake.cut_stream_after = 3  # the gate's stream stops without its final chunk
    with sealed_client(fake) as client:
        with pytest.raises(SealError):
            list(_chat(client, stream=True))


def test_reject_a_stream_cut_before_its_head(fake: FakeAppliance) -> None:
    fake.tamper_stream = lambda index, piece: piece[:10] if index == 0 else b""
    with sealed_client(fake) as client:
        with pytest.raises(SealError):
            _chat(client, stream=True)


@pytest.mark.parametrize(
    "answer",
    [
        Answer(200, [("content-type", "application/json")], b'{"choices": []}'),  # a clear "answer"
        Answer(200, [("content-type", "message/ohttp-chunked-res")], b"\x00" * 64),  # the other media type
        Answer(302, [("location", "http://elsewhere.test/")], b""),
        Answer(204, [], b""),
    ],
)
def test_reject_anything_but_a_sealed_answer_or_a_clear_error(fake: FakeAppliance, answer: Answer) -> None:
    fake.clear_answer = answer
    with sealed_client(fake) as client:
        with pytest.raises(SealError):
            _chat(client)


def test_seal_error_says_nothing(fake: FakeAppliance) -> None:
    fake.tamper = lambda sealed: sealed[:-1]
    with sealed_client(fake) as client:
        with pytest.raises(SealError) as caught:
            _chat(client)
    assert str(caught.value) == ""
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


# --- what the transport refuses to send ----------------------------------------------------------


def _plain_client(fake: FakeAppliance) -> httpx2.Client:
    sealed = SealedTransport(BASE, pinned_fingerprints=[fake.fingerprint], transport=mock_transport(fake))
    return httpx2.Client(transport=sealed)


@pytest.mark.parametrize(
    ("method", "url", "body"),
    [
        ("POST", f"{BASE}/images/generations", b'{"model": "m", "prompt": "secret"}'),  # not a sealed route
        ("POST", f"{BASE}/sealed/chat/completions", b"{}"),  # not through this transport
        ("PUT", f"{BASE}/chat/completions", b"{}"),
        ("GET", f"{BASE}/chat/completions", b""),
        ("POST", f"{BASE}/chat/completions?x=1", b'{"model": "m"}'),
        ("POST", "http://elsewhere.test/v1/chat/completions", b'{"model": "m"}'),
        ("POST", f"{BASE}/chat/completions", b"not json"),
        ("POST", f"{BASE}/chat/completions", b"[1]"),
        ("POST", f"{BASE}/chat/completions", b'{"model": "a model"}'),
        ("POST", f"{BASE}/chat/completions", b'{"messages": []}'),
        ("GET", f"{BASE}/models", b"a body"),
    ],
)
def test_reject_unsealable_requests(fake: FakeAppliance, method: str, url: str, body: bytes) -> None:
    with _plain_client(fake) as client, pytest.raises(UnsealableRequestError):
        client.request(method, url, content=body)
    assert not [s for s in fake.seen if s.method != "GET" or s.path != "/v1/sealed/keys"]


def test_openai_images_api_is_refused_not_sent(fake: FakeAppliance) -> None:
    with sealed_client(fake) as client, pytest.raises(UnsealableRequestError, match="POST /v1/images/generations"):
        client.images.generate(model=CHAT_MODEL, prompt=PROMPT)
    assert fake.seen == []


@pytest.mark.parametrize(
    ("pins", "error"),
    [([], KeyConfigError), (["abc"], KeyConfigError), ([b"a" * 64], KeyConfigError), ([None], KeyConfigError)],
)
def test_reject_bad_pins(pins: list[Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        SealedTransport(BASE, pinned_fingerprints=pins)


def test_pins_are_normalized(fake: FakeAppliance) -> None:
    with sealed_client(fake, pins=f"  {fake.fingerprint.upper()}\n") as client:
        _chat(client)


@pytest.mark.parametrize("base", ["ftp://x/v1", "http://x/v1?a=b", "/v1"])
def test_reject_bad_base_url(base: str) -> None:
    with pytest.raises(ValueError, match="base_url"):
        SealedTransport(base, pinned_fingerprints=["a" * 64])


@pytest.mark.parametrize("pad_to", [-1, transport.MAX_PAD_TO + 1, True, 1.5])
def test_reject_bad_padding(pad_to: Any) -> None:
    with pytest.raises(ValueError, match="pad_to"):
        SealedTransport(BASE, pinned_fingerprints=["a" * 64], pad_to=pad_to)


def test_base_url_with_a_trailing_slash(fake: FakeAppliance) -> None:
    sealed = SealedTransport(BASE + "/", pinned_fingerprints=[fake.fingerprint], transport=mock_transport(fake))
    with openai.OpenAI(base_url=BASE, api_key=API_KEY, http_client=httpx2.Client(transport=sealed)) as client:  # type: ignore[arg-type]
        assert _chat(client).choices[0].message.content == "you sent 2 messages"


# --- async --------------------------------------------------------------------------------------


def _async_client(fake: FakeAppliance, pins: list[str] | None = None) -> openai.AsyncOpenAI:
    sealed = AsyncSealedTransport(BASE, pinned_fingerprints=pins or [fake.fingerprint], transport=async_mock_transport(fake))
    http_client = httpx2.AsyncClient(transport=sealed)
    return openai.AsyncOpenAI(base_url=BASE, api_key=API_KEY, http_client=http_client, max_retries=0)  # type: ignore[arg-type]


def test_async_chat_stream_and_embeddings(fake: FakeAppliance) -> None:
    async def main() -> tuple[str, str, list[float]]:
        messages: Any = [{"role": "system", "content": "be brief"}, {"role": "user", "content": PROMPT}]
        async with _async_client(fake) as client:
            reply = await client.chat.completions.create(model=CHAT_MODEL, messages=messages)
            stream = await client.chat.completions.create(model=CHAT_MODEL, messages=messages, stream=True)
            pieces = [c.choices[0].delta.content async for c in stream if c.choices and c.choices[0].delta.content]
            embeddings = await client.embeddings.create(model=EMBED_MODEL, input=PROMPT)
            models = await client.models.list()
            assert [m.id for m in models.data] == list(MODELS)
        return reply.choices[0].message.content or "", "".join(pieces), embeddings.data[0].embedding

    reply, streamed, embedding = asyncio.run(main())
    assert reply == streamed == "you sent 2 messages"
    assert embedding[0] == float(len(PROMPT))
    _assert_sealed_only(fake)


def test_async_failures(fake: FakeAppliance) -> None:
    messages: Any = [{"role": "user", "content": PROMPT}]

    async def main() -> None:
        async with _async_client(fake) as client:
            fake.tamper = lambda sealed: sealed[:20] + bytes([sealed[20] ^ 1]) + sealed[21:]
            with pytest.raises(SealError):
                await client.chat.completions.create(model=CHAT_MODEL, messages=messages)
            fake.cut_stream_after = 2
            stream = await client.chat.completions.create(model=CHAT_MODEL, messages=messages, stream=True)
            with pytest.raises(SealError):
                async for _ in stream:
                    pass
            with pytest.raises(openai.NotFoundError):
                await client.chat.completions.create(model="nope", messages=messages)
            with pytest.raises(UnsealableRequestError):
                await client.images.generate(model=CHAT_MODEL, prompt=PROMPT)
        async with _async_client(fake, pins=["0" * 64]) as client:
            with pytest.raises(KeyConfigError, match="not pinned"):
                await client.chat.completions.create(model=CHAT_MODEL, messages=messages)

    asyncio.run(main())
    _assert_sealed_only(fake)


# --- the recipe, over real HTTP on 127.0.0.1 ------------------------------------------------------


def test_recipe_over_real_http(fake: FakeAppliance) -> None:
    with serve(fake) as base:
        fingerprint = sluice_sdk.fetch_fingerprint(base)
        assert fingerprint == fake.fingerprint
        with sluice_sdk.sealed_openai_client(base, API_KEY, fingerprint, max_retries=0) as client:
            assert _chat(client).choices[0].message.content == "you sent 2 messages"
            pieces = [c.choices[0].delta.content for c in _chat(client, stream=True) if c.choices]
            assert "".join(p for p in pieces if p) == "you sent 2 messages"
            fake.tamper = lambda sealed: sealed[:-1] + bytes([sealed[-1] ^ 1])
            with pytest.raises(SealError):
                _chat(client)

        async def main() -> str:
            async with sluice_sdk.sealed_async_openai_client(base, API_KEY, [fingerprint]) as client:
                fake.tamper = None
                reply = await client.chat.completions.create(model=CHAT_MODEL, messages=[{"role": "user", "content": PROMPT}])
                return reply.choices[0].message.content or ""

        assert asyncio.run(main()) == "you sent 1 messages"
    _assert_sealed_only(fake)


def test_fetch_fingerprint_failures(fake: FakeAppliance) -> None:
    fake.served_keys = b"\x00"
    with serve(fake) as base:
        with pytest.raises(KeyConfigError, match="malformed"):
            sluice_sdk.fetch_fingerprint(base)
        port = int(base.split(":")[2].split("/")[0])
    with pytest.raises(ConnectionError, match="cannot fetch"):
        sluice_sdk.fetch_fingerprint(f"http://127.0.0.1:{port}/v1")


def test_fetch_key_configs_with_a_transport(fake: FakeAppliance) -> None:
    (config,) = transport.fetch_key_configs(BASE, transport=mock_transport(fake))
    assert config.fingerprint() == fake.fingerprint


def test_rotation_before_the_new_fingerprint_is_pinned(fake: FakeAppliance, caplog: pytest.LogCaptureFixture) -> None:
    now = [1000.0]
    old = fake.ring.current
    new = generate_key(2)
    with sealed_client(fake) as client:
        _set_clock(client, lambda: now[0])
        _chat(client)
        fake.ring.rotate(new, overlap_seconds=24 * 3600)
        now[0] += transport.KEY_REFRESH_SECONDS
        with caplog.at_level("WARNING", logger="sluice_sdk.transport"):
            _chat(client)  # the new key is not pinned: keep the old one, which the gate still accepts
        assert fake.seen[-1].body[0] == old.key_id
        assert "not pinned" in caplog.text and old.config.fingerprint() in caplog.text
        fake.ring = KeyRing(new)  # the overlap window is over
        with pytest.raises(openai.BadRequestError):
            _chat(client)
        with pytest.raises(KeyConfigError, match=new.config.fingerprint()):
            _chat(client)


def test_refresh_failure_keeps_the_pinned_key(fake: FakeAppliance) -> None:
    now = [1000.0]
    with sealed_client(fake) as client:
        _set_clock(client, lambda: now[0])
        _chat(client)
        fake.keys_status = 503
        now[0] += transport.KEY_REFRESH_SECONDS
        assert _chat(client).choices[0].message.content == "you sent 2 messages"
        assert _chat(client).choices[0].message.content == "you sent 2 messages"
    assert [s.path for s in fake.seen].count("/v1/sealed/keys") == 2  # tried once, then waits a period


# --- import rules: httpx2 only in the transport, openai only when a client is made ----------------


def test_httpx_only_in_the_transport_module() -> None:
    import ast
    from pathlib import Path

    package = Path(sluice_sdk.__file__).resolve().parent
    for path in package.glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        names = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        names |= {
            node.module.split(".")[0]
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0
        }
        if path.name != "transport.py":
            assert "httpx2" not in names, path.name


def test_envelope_code_imports_neither_httpx_nor_openai() -> None:
    import subprocess
    import sys

    code = (
        "import sys, sluice_sdk, sluice_sdk.gateway, sluice_sdk.client, sluice_sdk.keys\n"
        "assert 'httpx2' not in sys.modules and 'openai' not in sys.modules, 'envelope'\n"
        "import sluice_sdk.connect, sluice_sdk.cli\n"
        "assert 'openai' not in sys.modules, 'recipes'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
