"""Integration tests of the stand-in model server, run as a real subprocess."""

from __future__ import annotations

import base64
import json
import math
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from cluster._http1 import ChunkedDecoder, find_head_end, parse_response_head
from cluster.standin import StandinProcess
from cluster.standin._model import MAX_REPLY_WORDS, embed, natural_length, reply_words
from cluster.standin.server import MAX_BODY_BYTES

pytestmark = pytest.mark.integration

HOST = "127.0.0.1"
MODEL = "standin-chat"
EMBED_MODEL = "standin-embed"
DIMENSIONS = 16
ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def chat() -> Iterator[StandinProcess]:
    with StandinProcess(model=MODEL, kind="chat") as proc:
        yield proc


@pytest.fixture(scope="module")
def slow_chat() -> Iterator[StandinProcess]:
    with StandinProcess(model=MODEL, kind="chat", token_delay=0.02) as proc:
        yield proc


@pytest.fixture(scope="module")
def embeddings() -> Iterator[StandinProcess]:
    with StandinProcess(model=EMBED_MODEL, kind="embeddings", dimensions=DIMENSIONS) as proc:
        yield proc


@pytest.fixture()
def client() -> Iterator[httpx2.Client]:
    with httpx2.Client(timeout=10.0) as c:
        yield c


def url(proc: StandinProcess, path: str) -> str:
    return f"http://{HOST}:{proc.port}{path}"


def chat_request(prompt: str | list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": prompt}], **extra}


def prompt_with(predicate: Any) -> str:
    for i in range(100_000):
        prompt = f"prompt number {i}"
        if predicate(natural_length(prompt)):
            return prompt
    raise AssertionError("no prompt found")


def sse_events(text: str) -> list[str]:
    events = text.split("\n\n")
    assert events[-1] == ""
    for event in events[:-1]:
        assert event.startswith("data: ")
    return [event[len("data: ") :] for event in events[:-1]]


# --------------------------------------------------------------------------- raw HTTP helpers


def connect(proc: StandinProcess) -> socket.socket:
    sock = socket.create_connection((HOST, proc.port), timeout=10)
    return sock


def read_response(sock: socket.socket, buf: bytearray | None = None) -> tuple[Any, bytes, bytearray]:
    """One response (head, body) from ``sock``; leftover bytes returned too."""
    buf = bytearray() if buf is None else buf
    while (end := find_head_end(buf)) < 0:
        data = sock.recv(65536)
        if not data:
            raise EOFError
        buf += data
    head = parse_response_head(buf[:end])
    del buf[:end]
    if head.chunked:
        decoder = ChunkedDecoder()
        body = b"".join(decoder.feed(bytes(buf)))
        buf.clear()
        while not decoder.done:
            data = sock.recv(65536)
            if not data:
                raise EOFError
            body += b"".join(decoder.feed(data))
        buf += decoder.unused
        return head, body, buf
    length = head.content_length or 0
    while len(buf) < length:
        data = sock.recv(65536)
        if not data:
            raise EOFError
        buf += data
    body = bytes(buf[:length])
    del buf[:length]
    return head, body, buf


def assert_closed(sock: socket.socket) -> None:
    try:
        assert sock.recv(1) == b""
    except ConnectionResetError:
        pass


def raw_request(proc: StandinProcess, data: bytes) -> tuple[Any, dict[str, Any], socket.socket]:
    sock = connect(proc)
    sock.sendall(data)
    head, body, _ = read_response(sock)
    return head, json.loads(body), sock


# --------------------------------------------------------------------------- process


def test_ready_line_and_clean_exit_on_sigterm() -> None:
    proc = StandinProcess(model="m", kind="chat")
    port = proc.start()
    try:
        assert 0 < port < 65536
        with socket.create_connection((HOST, port), timeout=5):
            pass
    finally:
        assert proc.stop() == 0


def test_clean_exit_on_sigint() -> None:
    proc = StandinProcess(model="m", kind="embeddings")
    proc.start()
    try:
        assert proc.pid is not None
        os.kill(proc.pid, signal.SIGINT)
        deadline = time.monotonic() + 5
        while proc._proc is not None and proc._proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        assert proc.stop() == 0


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "cluster.standin", *args],
        cwd=ROOT,
        capture_output=True,
        timeout=20,
        env=env,
        check=False,
    )


def test_token_is_never_a_command_line_argument() -> None:
    result = run_cli("--port", "0", "--model", "m", "--kind", "chat", "--token", "x")
    assert result.returncode == 2
    assert result.stdout == b""


@pytest.mark.parametrize(
    "args",
    [
        ("--port", "0", "--model", "m", "--kind", "vision"),
        ("--port", "70000", "--model", "m", "--kind", "chat"),
        ("--port", "0", "--model", "m", "--kind", "chat", "--token-delay", "-1"),
        ("--port", "0", "--model", "m", "--kind", "embeddings", "--dimensions", "0"),
    ],
)
def test_bad_arguments_refused(args: tuple[str, ...]) -> None:
    result = run_cli(*args)
    assert result.returncode == 2
    assert result.stdout == b""


def test_empty_token_in_environment_refused() -> None:
    env = dict(os.environ, SLUICE_BACKEND_TOKEN="")
    result = run_cli("--port", "0", "--model", "m", "--kind", "chat", env=env)
    assert result.returncode == 2
    assert result.stdout == b""


def test_no_content_logged() -> None:
    """Prompts, completions and tokens never reach stdout or stderr."""
    secret = "zebra-violet-SECRET-prompt"
    token = "TOKEN-never-printed"
    env = dict(os.environ, SLUICE_BACKEND_TOKEN=token, PYTHONPATH=str(ROOT))
    child = subprocess.Popen(
        [sys.executable, "-m", "cluster.standin", "--port", "0", "--model", MODEL, "--kind", "chat"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        assert line.startswith(b"READY ")
        port = int(line.split()[1])
        headers = {"authorization": f"Bearer {token}"}
        with httpx2.Client(timeout=10.0) as c:
            base = f"http://{HOST}:{port}"
            assert c.post(base + "/v1/chat/completions", json=chat_request(secret), headers=headers).status_code == 200
            assert c.post(base + "/v1/chat/completions", content=secret.encode(), headers=headers).status_code == 400
            assert c.post(base + "/v1/chat/completions", json=chat_request(secret)).status_code == 401
            bad = c.post(base + "/v1/chat/completions", json=chat_request([{"type": "image", "x": secret}]), headers=headers)
            assert bad.status_code == 400
            assert secret not in bad.text
        with socket.create_connection((HOST, port)) as sock:
            sock.sendall(f"GET /{secret} {secret}\r\n\r\n".encode())
            assert sock.recv(4096).startswith(b"HTTP/1.1 400 ")
    finally:
        child.send_signal(signal.SIGTERM)
        out, err = child.communicate(timeout=10)
    assert child.returncode == 0
    assert out == b""  # only the READY line, read above
    assert secret.encode() not in err
    assert token.encode() not in err
    assert b"zebra" not in err


# --------------------------------------------------------------------------- basic endpoints


def test_health_and_models(chat: StandinProcess, client: httpx2.Client) -> None:
    health = client.get(url(chat, "/health"))
    assert health.status_code == 200
    assert health.content == b""
    models = client.get(url(chat, "/v1/models")).json()
    assert models["object"] == "list"
    assert [card["id"] for card in models["data"]] == [MODEL]


def test_stats_shape(chat: StandinProcess, client: httpx2.Client) -> None:
    stats = client.get(url(chat, "/stats")).json()
    assert set(stats) == {"active_requests", "open_connections", "served"}
    assert stats["open_connections"] >= 1  # the asking connection
    before = stats["served"]
    client.post(url(chat, "/v1/chat/completions"), json=chat_request("count me"))
    client.post(url(chat, "/v1/chat/completions"), json=chat_request("count me", stream=True))
    client.post(url(chat, "/v1/chat/completions"), json={"messages": "bad"})  # 400: not served
    assert client.get(url(chat, "/stats")).json()["served"] == before + 2


def test_unknown_path_and_wrong_method(chat: StandinProcess, client: httpx2.Client) -> None:
    for path in ("/", "/v1", "/v1/chat/completions/", "/v2/models", "/v1/audio/speech"):
        response = client.get(url(chat, path))
        assert response.status_code == 404
        assert response.json()["error"]["code"] == 404
    response = client.get(url(chat, "/v1/chat/completions"))
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    assert client.post(url(chat, "/v1/models"), json={}).status_code == 405
    assert client.post(url(chat, "/health"), json={}).status_code == 405


def test_query_string_ignored(chat: StandinProcess, client: httpx2.Client) -> None:
    assert client.get(url(chat, "/v1/models?x=1")).status_code == 200


def test_kind_mismatch_is_404(chat: StandinProcess, embeddings: StandinProcess, client: httpx2.Client) -> None:
    assert client.post(url(chat, "/v1/embeddings"), json={"model": MODEL, "input": "x"}).status_code == 404
    assert client.post(url(embeddings, "/v1/chat/completions"), json=chat_request("x")).status_code == 404
    assert client.post(url(embeddings, "/v1/completions"), json={"prompt": "x"}).status_code == 404


def test_model_mismatch_is_404(chat: StandinProcess, client: httpx2.Client) -> None:
    response = client.post(url(chat, "/v1/chat/completions"), json=dict(chat_request("x"), model="other"))
    assert response.status_code == 404
    assert response.json()["error"]["message"] == "model_not_found"
    no_model = {"messages": [{"role": "user", "content": "x"}]}
    assert client.post(url(chat, "/v1/chat/completions"), json=no_model).status_code == 200


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[1, 2]",
        b'{"model": "standin-chat", "messages": [{"role": "user", "content": "x"}], "temperature": NaN}',
        b"[" * 100_000 + b"]" * 100_000,
        b'{"messages": []}',
        b'{"messages": "hello"}',
        b'{"messages": [{"content": "no role"}]}',
        b'{"messages": [{"role": "user", "content": 5}]}',
        b'{"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}',
        b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}',
        b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": -1}',
        b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": "5"}',
        b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": true}',
        b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": 1.5}',
        b'{"messages": [{"role": "user", "content": "x"}], "stream": "yes"}',
        b'{"messages": [{"role": "user", "content": "x"}], "stream_options": {"include_usage": true}}',
        b'{"messages": [{"role": "user", "content": "x"}], "stream": true, "stream_options": {"include_usage": 1}}',
        b'{"model": 5, "messages": [{"role": "user", "content": "x"}]}',
        b"\xff\xfe",
    ],
)
def test_invalid_chat_body_is_400(chat: StandinProcess, client: httpx2.Client, body: bytes) -> None:
    response = client.post(url(chat, "/v1/chat/completions"), content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == 400
    assert len(response.content) < 200  # short, and no echo of the body


# --------------------------------------------------------------------------- chat


def test_chat_is_deterministic_with_usage(chat: StandinProcess, client: httpx2.Client) -> None:
    body = {
        "model": MODEL,
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": [{"type": "text", "text": "one two"}, {"type": "text", "text": "three"}]},
            {"role": "assistant", "content": None},
        ],
    }
    first = client.post(url(chat, "/v1/chat/completions"), json=body).json()
    second = client.post(url(chat, "/v1/chat/completions"), json=body).json()
    assert first["choices"] == second["choices"]
    assert first["id"] != second["id"]
    assert first["object"] == "chat.completion"
    assert first["model"] == MODEL
    choice = first["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert len(choice["message"]["content"].split()) == 16  # default max_tokens
    assert first["usage"] == {"prompt_tokens": 6, "completion_tokens": 16, "total_tokens": 22}
    other = client.post(url(chat, "/v1/chat/completions"), json=chat_request("something else")).json()
    assert other["choices"][0]["message"]["content"] != choice["message"]["content"]


def test_max_tokens_and_finish_reason(chat: StandinProcess, client: httpx2.Client) -> None:
    short = prompt_with(lambda n: n < 40)
    reply = client.post(url(chat, "/v1/chat/completions"), json=chat_request(short, max_tokens=40)).json()
    assert reply["choices"][0]["finish_reason"] == "stop"
    assert reply["usage"]["completion_tokens"] == natural_length(short)
    cut = client.post(url(chat, "/v1/chat/completions"), json=chat_request(short, max_tokens=3)).json()
    assert cut["choices"][0]["finish_reason"] == "length"
    assert cut["usage"]["completion_tokens"] == 3
    alias = client.post(url(chat, "/v1/chat/completions"), json=chat_request(short, max_completion_tokens=2)).json()
    assert alias["usage"]["completion_tokens"] == 2


def test_max_tokens_capped(chat: StandinProcess, client: httpx2.Client) -> None:
    prompt = prompt_with(lambda n: n > 3000)
    reply = client.post(url(chat, "/v1/chat/completions"), json=chat_request(prompt, max_tokens=10**9)).json()
    assert reply["usage"]["completion_tokens"] == natural_length(prompt) <= MAX_REPLY_WORDS == 4096
    assert reply["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize("include_usage", [True, False])
def test_chat_stream_shape(chat: StandinProcess, client: httpx2.Client, include_usage: bool) -> None:
    prompt = "stream this please"
    extra: dict[str, Any] = {"stream": True, "max_tokens": 5}
    if include_usage:
        extra["stream_options"] = {"include_usage": True}
    with client.stream("POST", url(chat, "/v1/chat/completions"), json=chat_request(prompt, **extra)) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/event-stream"
        assert response.headers["transfer-encoding"] == "chunked"
        text = response.read().decode()
    events = sse_events(text)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    tokens = chunks[:5]
    assert tokens[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all(c["choices"][0]["finish_reason"] is None for c in tokens)
    content = "".join(c["choices"][0]["delta"]["content"] for c in tokens)
    assert content == " ".join(reply_words(prompt, 5)[0])
    final = chunks[5]
    assert final["choices"] == [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "length"}]
    if include_usage:
        assert len(chunks) == 7
        assert chunks[6]["choices"] == []
        assert chunks[6]["usage"] == {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}
        assert all(c["usage"] is None for c in chunks[:6])
    else:
        assert len(chunks) == 6
        assert all("usage" not in c for c in chunks)


@pytest.mark.parametrize("route", ["chat", "completions"])
def test_stream_continuous_usage_stats(chat: StandinProcess, client: httpx2.Client, route: str) -> None:
    """With include_usage and continuous_usage_stats (as the gate asks), every chunk carries usage so far."""
    options = {"stream": True, "max_tokens": 4, "stream_options": {"include_usage": True, "continuous_usage_stats": True}}
    if route == "chat":
        path, body = "/v1/chat/completions", chat_request("stream this please", **options)
    else:
        path, body = "/v1/completions", {"model": MODEL, "prompt": "stream this please", **options}
    with client.stream("POST", url(chat, path), json=body) as response:
        text = response.read().decode()
    chunks = [json.loads(event) for event in sse_events(text)[:-1]]
    assert [c["usage"]["completion_tokens"] for c in chunks[:4]] == [1, 2, 3, 4]
    assert all(c["usage"]["prompt_tokens"] == 3 for c in chunks)
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 4


def test_stream_is_paced(slow_chat: StandinProcess, client: httpx2.Client) -> None:
    arrivals = []
    body = chat_request("paced", stream=True, max_tokens=8)
    with client.stream("POST", url(slow_chat, "/v1/chat/completions"), json=body) as response:
        for line in response.iter_lines():
            if line.startswith("data: {"):
                arrivals.append(time.monotonic())
    assert len(arrivals) == 9
    assert arrivals[7] - arrivals[0] >= 7 * 0.02 * 0.8


def test_client_disconnect_stops_generation(slow_chat: StandinProcess, client: httpx2.Client) -> None:
    before = client.get(url(slow_chat, "/stats")).json()
    prompt = prompt_with(lambda n: n > 1000)
    sock = connect(slow_chat)
    body = json.dumps(chat_request(prompt, stream=True, max_tokens=1000)).encode()
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n%s" % (len(body), body)
    )
    received = b""
    while received.count(b"data: ") < 3:
        received += sock.recv(65536)
    assert client.get(url(slow_chat, "/stats")).json()["active_requests"] == before["active_requests"] + 1
    sock.close()
    deadline = time.monotonic() + 2
    while True:
        stats = client.get(url(slow_chat, "/stats")).json()
        if stats["active_requests"] == before["active_requests"] or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    assert stats["active_requests"] == before["active_requests"]
    assert stats["served"] == before["served"]
    assert stats["open_connections"] == before["open_connections"]


# --------------------------------------------------------------------------- completions


def test_completions(chat: StandinProcess, client: httpx2.Client) -> None:
    reply = client.post(url(chat, "/v1/completions"), json={"model": MODEL, "prompt": "Once upon", "max_tokens": 4}).json()
    assert reply["object"] == "text_completion"
    assert reply["choices"][0]["text"] == " ".join(reply_words("Once upon", 4)[0])
    assert reply["usage"] == {"prompt_tokens": 2, "completion_tokens": 4, "total_tokens": 6}
    many = client.post(url(chat, "/v1/completions"), json={"prompt": ["a", "b c"], "max_tokens": 2}).json()
    assert [c["index"] for c in many["choices"]] == [0, 1]
    assert many["usage"]["prompt_tokens"] == 3
    ids = client.post(url(chat, "/v1/completions"), json={"prompt": [1, 2, 3], "max_tokens": 2}).json()
    assert ids["usage"]["prompt_tokens"] == 3
    bad_bodies: list[dict[str, Any]] = [{"prompt": 5}, {"prompt": []}, {"prompt": [1, "a"]}, {}]
    for bad in bad_bodies:
        assert client.post(url(chat, "/v1/completions"), json=bad).status_code == 400


def test_completions_stream(chat: StandinProcess, client: httpx2.Client) -> None:
    body = {"prompt": "Once upon", "max_tokens": 3, "stream": True, "stream_options": {"include_usage": True}}
    response = client.post(url(chat, "/v1/completions"), json=body)
    events = sse_events(response.text)
    chunks = [json.loads(e) for e in events[:-1]]
    assert "".join(c["choices"][0]["text"] for c in chunks[:3]) == " ".join(reply_words("Once upon", 3)[0])
    assert chunks[3]["choices"][0]["finish_reason"] == "length"
    assert chunks[4]["usage"]["completion_tokens"] == 3


# --------------------------------------------------------------------------- embeddings


def test_embeddings(embeddings: StandinProcess, client: httpx2.Client) -> None:
    body = {"model": EMBED_MODEL, "input": ["hello world", "hello world", "other"]}
    reply = client.post(url(embeddings, "/v1/embeddings"), json=body).json()
    assert reply["object"] == "list"
    assert reply["model"] == EMBED_MODEL
    vectors = [item["embedding"] for item in reply["data"]]
    assert [item["index"] for item in reply["data"]] == [0, 1, 2]
    assert all(len(v) == DIMENSIONS for v in vectors)
    assert vectors[0] == vectors[1] != vectors[2]
    assert math.isclose(math.sqrt(sum(x * x for x in vectors[0])), 1.0, rel_tol=1e-6)
    assert reply["usage"] == {"prompt_tokens": 5, "total_tokens": 5}
    single = client.post(url(embeddings, "/v1/embeddings"), json={"input": "hello world"}).json()
    assert single["data"][0]["embedding"] == vectors[0] == embed(b"text:hello world", DIMENSIONS)


def test_embeddings_base64_matches_float(embeddings: StandinProcess, client: httpx2.Client) -> None:
    floats = client.post(url(embeddings, "/v1/embeddings"), json={"input": "x y"}).json()
    packed = client.post(url(embeddings, "/v1/embeddings"), json={"input": "x y", "encoding_format": "base64"}).json()
    raw = base64.b64decode(packed["data"][0]["embedding"])
    assert list(struct.unpack(f"<{DIMENSIONS}f", raw)) == floats["data"][0]["embedding"]


def test_embeddings_token_inputs(embeddings: StandinProcess, client: httpx2.Client) -> None:
    one = client.post(url(embeddings, "/v1/embeddings"), json={"input": [1, 2, 3]}).json()
    assert len(one["data"]) == 1
    assert one["usage"]["prompt_tokens"] == 3
    many = client.post(url(embeddings, "/v1/embeddings"), json={"input": [[1, 2, 3], [4]]}).json()
    assert len(many["data"]) == 2
    assert many["data"][0]["embedding"] == one["data"][0]["embedding"]
    assert many["usage"]["prompt_tokens"] == 4


@pytest.mark.parametrize(
    "body",
    [
        {"input": []},
        {"input": 5},
        {"input": [1, "a"]},
        {"input": [[]]},
        {"input": [True]},
        {"input": "x", "encoding_format": "int8"},
        {"input": "x", "dimensions": DIMENSIONS + 1},
        {"input": "x", "model": "other"},
        {},
    ],
)
def test_invalid_embeddings(embeddings: StandinProcess, client: httpx2.Client, body: dict[str, Any]) -> None:
    response = client.post(url(embeddings, "/v1/embeddings"), json=body)
    assert response.status_code in (400, 404)


# --------------------------------------------------------------------------- HTTP/1.1 strictness


def test_keep_alive_and_pipelining(chat: StandinProcess) -> None:
    request = b"GET /v1/models HTTP/1.1\r\nhost: x\r\n\r\n"
    body = json.dumps(chat_request("pipelined", max_tokens=2)).encode()
    post = b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
    with connect(chat) as sock:
        sock.sendall(request + post + request)
        buf = bytearray()
        statuses = []
        for _ in range(3):
            head, _, buf = read_response(sock, buf)
            statuses.append(head.status)
            assert head.keep_alive
        assert statuses == [200, 200, 200]
        sock.sendall(request)  # still open
        head, _, _ = read_response(sock, buf)
        assert head.status == 200


def test_http10_and_connection_close_end_the_connection(chat: StandinProcess) -> None:
    for request in (
        b"GET /health HTTP/1.0\r\n\r\n",
        b"GET /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    ):
        with connect(chat) as sock:
            sock.sendall(request)
            head, _, _ = read_response(sock)
            assert head.status == 200
            assert not head.keep_alive
            assert_closed(sock)


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET / HTTP/1.1 \r\nhost: x\r\n\r\n", 400),
        (b"GET http://x/ HTTP/1.1\r\nhost: x\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nhost: x\r\n folded\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nhost : x\r\n\r\n", 400),
        (b"GET / HTTP/1.1\nhost: x\n\n", 400),
        (b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n\r\n", 411),
        (b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n", 411),
        (b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ntransfer-encoding: gzip\r\n\r\n", 501),
        (b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 1\r\ncontent-length: 1\r\n\r\n", 400),
        (
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n",
            400,
        ),
        (b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n" % (MAX_BODY_BYTES + 1), 413),
        (b"GET / HTTP/1.1\r\nhost: x\r\nx-pad: " + b"a" * 20_000, 431),
        (b"GET / HTTP/1.1\r\nhost: x\r\nauthorization: a\r\nauthorization: b\r\n\r\n", 400),
    ],
)
def test_reject_bad_requests_and_close(chat: StandinProcess, request_bytes: bytes, status: int) -> None:
    with connect(chat) as sock:
        sock.sendall(request_bytes)
        head, body, _ = read_response(sock)
        assert head.status == status
        assert not head.keep_alive
        assert json.loads(body)["error"]["code"] == status
        assert_closed(sock)


def test_body_at_limit_accepted(chat: StandinProcess) -> None:
    skeleton = json.dumps(chat_request("", max_tokens=1)).encode()
    padding = MAX_BODY_BYTES - len(skeleton)
    body = json.dumps(chat_request("w " * (padding // 2) + "w" * (padding % 2), max_tokens=1)).encode()
    assert len(body) == MAX_BODY_BYTES
    with connect(chat) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n" % len(body) + body)
        head, reply, _ = read_response(sock)
        assert head.status == 200
        assert json.loads(reply)["usage"]["completion_tokens"] == 1


def test_body_arriving_slowly_is_assembled(chat: StandinProcess) -> None:
    body = json.dumps(chat_request("slow body", max_tokens=2)).encode()
    data = b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n" % len(body) + body
    with connect(chat) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(0, len(data), 7):
            sock.sendall(data[i : i + 7])
        head, reply, _ = read_response(sock)
        assert head.status == 200
        assert json.loads(reply)["usage"]["completion_tokens"] == 2


def test_expect_100_continue(chat: StandinProcess) -> None:
    body = json.dumps(chat_request("large body", max_tokens=2)).encode()
    with connect(chat) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\ncontent-length: %d\r\n\r\n" % len(body)
        )
        interim = b""
        while not interim.endswith(b"\r\n\r\n"):
            interim += sock.recv(1)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(body)
        head, reply, _ = read_response(sock)
        assert head.status == 200
        assert json.loads(reply)["usage"]["completion_tokens"] == 2


def test_token_required_by_environment() -> None:
    token = "env-token-123"
    with StandinProcess(model=MODEL, kind="chat", token=token) as proc, httpx2.Client(timeout=10) as c:
        assert c.get(url(proc, "/health")).status_code == 200
        for path in ("/v1/models", "/stats", "/nope"):
            assert c.get(url(proc, path)).status_code == 401
        assert c.get(url(proc, "/v1/models"), headers={"authorization": "Bearer wrong"}).status_code == 401
        assert c.get(url(proc, "/v1/models"), headers={"authorization": token}).status_code == 401
        assert c.get(url(proc, "/v1/models"), headers={"authorization": f"bearer {token}"}).status_code == 401
        good = {"authorization": f"Bearer {token}"}
        assert c.get(url(proc, "/v1/models"), headers=good).status_code == 200
        assert c.post(url(proc, "/v1/chat/completions"), json=chat_request("x"), headers=good).status_code == 200
        assert c.get(url(proc, "/nope"), headers=good).status_code == 404


def test_chat_echo_is_verbatim_and_streams_word_by_word(chat: StandinProcess, client: httpx2.Client) -> None:
    """The test-only echo: a last message starting "/echo " is answered with the rest, verbatim."""
    text = "<b>bold</b>\n\n```js\nalert(1)\n```  and  spaces"
    plain = client.post(url(chat, "/v1/chat/completions"), json=chat_request("/echo " + text)).json()
    assert plain["choices"][0]["message"]["content"] == text
    assert plain["choices"][0]["finish_reason"] == "stop"
    with client.stream(
        "POST", url(chat, "/v1/chat/completions"), json=chat_request("/echo " + text, stream=True, max_tokens=3)
    ) as response:
        events = sse_events(response.read().decode())
    pieces = [json.loads(e)["choices"][0]["delta"].get("content", "") for e in events[:-1] if json.loads(e)["choices"]]
    assert "".join(pieces) == "<b>bold</b>\n\n```js\nalert(1)"
    assert json.loads(events[-2])["choices"][0]["finish_reason"] == "length"


def test_chat_takes_inline_images_and_ignores_them(chat: StandinProcess, client: httpx2.Client) -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    with_image = {"model": MODEL, "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}, image]}]}
    without = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    a = client.post(url(chat, "/v1/chat/completions"), json=with_image).json()
    b = client.post(url(chat, "/v1/chat/completions"), json=without).json()
    assert a["choices"][0]["message"] == b["choices"][0]["message"]
