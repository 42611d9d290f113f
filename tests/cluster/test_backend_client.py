"""Integration tests of BackendPool against the real stand-in and raw servers."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from types import TracebackType
from typing import Any

import pytest

from cluster._http1 import find_head_end, parse_request_head
from cluster.backend_client import BackendPool
from cluster.standin import StandinProcess
from cluster.standin._model import natural_length, reply_words
from policy.errors import BackendFailed, BackendTimeout

pytestmark = pytest.mark.integration

HOST = "127.0.0.1"
MODEL = "standin-chat"
TOKEN = "s3cret-Token_value"
TOKEN_DELAY = 0.03


@pytest.fixture(scope="module")
def chat() -> Iterator[StandinProcess]:
    with StandinProcess(model=MODEL, kind="chat") as proc:
        yield proc


@pytest.fixture(scope="module")
def slow_chat() -> Iterator[StandinProcess]:
    with StandinProcess(model=MODEL, kind="chat", token_delay=TOKEN_DELAY) as proc:
        yield proc


@pytest.fixture(scope="module")
def secured() -> Iterator[StandinProcess]:
    with StandinProcess(model=MODEL, kind="chat", token=TOKEN) as proc:
        yield proc


@pytest.fixture(scope="module")
def embeddings() -> Iterator[StandinProcess]:
    with StandinProcess(model="standin-embed", kind="embeddings", dimensions=8) as proc:
        yield proc


def chat_body(prompt: str, *, stream: bool = False, max_tokens: int | None = None, **extra: Any) -> bytes:
    obj: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": prompt}], **extra}
    if stream:
        obj["stream"] = True
    if max_tokens is not None:
        obj["max_tokens"] = max_tokens
    return json.dumps(obj).encode()


def long_prompt(words: int) -> str:
    """A prompt whose natural reply has at least ``words`` words."""
    for i in range(10_000):
        prompt = f"tell me a long story {i}"
        if natural_length(prompt) >= words:
            return prompt
    raise AssertionError("no prompt found")


async def stand_in_stats(port: int, token: str | None = None) -> dict[str, int]:
    pool = BackendPool()
    try:
        resp = await pool.request(HOST, port, token, "GET", "/stats", b"", 5.0)
        async with resp:
            assert resp.status == 200
            return json.loads(await resp.read(4096))  # type: ignore[no-any-return]
    finally:
        await pool.aclose()


async def wait_for_stats(port: int, predicate: Callable[[dict[str, int]], bool], timeout: float = 5.0) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    while True:
        stats = await stand_in_stats(port)
        if predicate(stats) or time.monotonic() > deadline:
            return stats
        await asyncio.sleep(0.02)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


# --------------------------------------------------------------------------- raw test servers

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> bytes:
    """One request from the raw server's side (head parsed by our own parser)."""
    head = await reader.readuntil(b"\r\n\r\n")
    if find_head_end(head) != len(head):
        raise AssertionError("bad head")
    parsed = parse_request_head(head)
    return await reader.readexactly(parsed.content_length or 0)


OK_RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"


class RawServer:
    """A scripted asyncio server; ``handler(reader, writer, connection_number)``."""

    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self._tasks: set[asyncio.Task[Any]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self.connections = 0
        self.port = 0

    async def __aenter__(self) -> RawServer:
        self._server = await asyncio.start_server(self._serve, HOST, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        self._writers.add(writer)
        try:
            await self._handler(reader, writer, self.connections)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            if task is not None:
                self._tasks.discard(task)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.close()
        # end handlers by dropping their connections (cancelling a
        # client_connected_cb task makes 3.11's asyncio log an error)
        for writer in list(self._writers):
            writer.transport.abort()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()
        await asyncio.sleep(0.01)


async def until_eof(reader: asyncio.StreamReader) -> None:
    while await reader.read(65536):
        pass


# --------------------------------------------------------------------------- against the stand-in


def test_plain_chat(chat: StandinProcess) -> None:
    prompt = "What is the capital of France?"

    async def scenario() -> None:
        pool = BackendPool()
        resp = await pool.request(HOST, chat.port, None, "POST", "/v1/chat/completions", chat_body(prompt), 5.0)
        async with resp:
            assert resp.status == 200
            assert resp.content_type == "application/json"
            reply = json.loads(await resp.read(1 << 20))
        words, finish = reply_words(prompt, 16)
        assert reply["choices"][0]["message"]["content"] == " ".join(words)
        assert reply["choices"][0]["finish_reason"] == finish
        assert reply["usage"] == {"prompt_tokens": 6, "completion_tokens": 16, "total_tokens": 22}
        assert pool.stats()["idle"] == 1
        await pool.aclose()
        assert pool.stats() == {"open": 0, "idle": 0, "connects": 1, "reused": 0, "retries": 0}

    asyncio.run(scenario())


def test_get_without_body(chat: StandinProcess) -> None:
    async def scenario() -> None:
        pool = BackendPool()
        async with await pool.request(HOST, chat.port, None, "GET", "/v1/models", b"", 5.0) as resp:
            assert resp.status == 200
            assert json.loads(await resp.read(4096))["data"][0]["id"] == MODEL
        async with await pool.request(HOST, chat.port, None, "GET", "/health", b"", 5.0) as resp:
            assert resp.status == 200
            assert await resp.read(0) == b""
        assert pool.stats()["reused"] == 1
        await pool.aclose()

    asyncio.run(scenario())


def test_streaming_pieces_arrive_incrementally(slow_chat: StandinProcess) -> None:
    async def scenario() -> None:
        pool = BackendPool()
        body = chat_body("stream please", stream=True, max_tokens=6, stream_options={"include_usage": True})
        resp = await pool.request(HOST, slow_chat.port, None, "POST", "/v1/chat/completions", body, 5.0)
        arrivals: list[tuple[float, bytes]] = []
        async with resp:
            assert resp.status == 200
            assert resp.content_type == "text/event-stream"
            async for piece in resp.iter_body():
                arrivals.append((time.monotonic(), piece))
        text = b"".join(piece for _, piece in arrivals)
        events = [e for e in text.split(b"\n\n") if e]
        assert events[-1] == b"data: [DONE]"
        assert len(events) == 6 + 3  # tokens, finish chunk, usage chunk, [DONE]
        # the token events came one by one, spread over the token delays
        token_times = [t for t, piece in arrivals if b'"content"' in piece]
        assert len(token_times) >= 5
        assert token_times[-1] - token_times[0] >= 4 * TOKEN_DELAY * 0.8
        assert pool.stats()["idle"] == 1  # fully read chunked body: reusable
        await pool.aclose()

    asyncio.run(scenario())


def test_keep_alive_reuse(chat: StandinProcess) -> None:
    async def scenario() -> None:
        pool = BackendPool()
        before = await stand_in_stats(chat.port)
        for i in range(5):
            body = chat_body(f"question {i}", stream=i % 2 == 1)
            async with await pool.request(HOST, chat.port, None, "POST", "/v1/chat/completions", body, 5.0) as resp:
                assert resp.status == 200
                await resp.read(1 << 20)
        assert pool.stats() == {"open": 1, "idle": 1, "connects": 1, "reused": 4, "retries": 0}
        after = await stand_in_stats(chat.port)
        assert after["served"] - before["served"] == 5
        assert after["open_connections"] == before["open_connections"] + 1  # ours, idle in the pool
        await pool.aclose()
        await wait_for_stats(chat.port, lambda s: s["open_connections"] == before["open_connections"])

    asyncio.run(scenario())


def test_concurrent_requests_bounded_idle(chat: StandinProcess) -> None:
    async def one(pool: BackendPool, i: int) -> str:
        async with await pool.request(HOST, chat.port, None, "POST", "/v1/chat/completions", chat_body(f"q{i}"), 5.0) as resp:
            return str(json.loads(await resp.read(1 << 20))["choices"][0]["message"]["content"])

    async def scenario() -> None:
        pool = BackendPool(max_idle_per_backend=3)
        replies = await asyncio.gather(*(one(pool, i) for i in range(20)))
        assert replies == [" ".join(reply_words(f"q{i}", 16)[0]) for i in range(20)]
        stats = pool.stats()
        assert stats["idle"] == 3
        assert stats["open"] == 3
        await pool.aclose()
        assert pool.stats()["open"] == 0

    asyncio.run(scenario())


def test_embeddings_through_pool(embeddings: StandinProcess) -> None:
    async def scenario() -> None:
        pool = BackendPool()
        results = []
        for fmt in ("float", "base64"):
            body = json.dumps({"model": "standin-embed", "input": ["a b", "c"], "encoding_format": fmt}).encode()
            async with await pool.request(HOST, embeddings.port, None, "POST", "/v1/embeddings", body, 5.0) as resp:
                assert resp.status == 200
                results.append(json.loads(await resp.read(1 << 20)))
        assert len(results[0]["data"][0]["embedding"]) == 8
        assert isinstance(results[1]["data"][0]["embedding"], str)
        assert results[0]["usage"]["prompt_tokens"] == 3
        await pool.aclose()

    asyncio.run(scenario())


def test_token_required(secured: StandinProcess) -> None:
    async def status(pool: BackendPool, token: str | None, path: str = "/v1/models") -> int:
        async with await pool.request(HOST, secured.port, token, "GET", path, b"", 5.0) as resp:
            await resp.read(4096)
            return resp.status

    async def scenario() -> None:
        pool = BackendPool()
        assert await status(pool, None) == 401
        assert await status(pool, "wrong-token") == 401
        assert await status(pool, TOKEN + "x") == 401
        assert await status(pool, TOKEN) == 200
        assert await status(pool, None, "/health") == 200
        assert await status(pool, None, "/stats") == 401
        assert await status(pool, TOKEN, "/stats") == 200
        async with await pool.request(HOST, secured.port, TOKEN, "POST", "/v1/chat/completions", chat_body("hi"), 5.0) as resp:
            assert resp.status == 200
            await resp.read(1 << 20)
        assert pool.stats()["connects"] == 1  # 401s keep the connection alive too
        await pool.aclose()

    asyncio.run(scenario())


def test_cancel_mid_stream_closes_connection_and_stops_generation(slow_chat: StandinProcess) -> None:
    prompt = long_prompt(2000)

    async def scenario() -> None:
        await wait_for_stats(slow_chat.port, lambda s: s["active_requests"] == 0)
        before = await stand_in_stats(slow_chat.port)
        pool = BackendPool()
        pieces: list[bytes] = []
        streaming = asyncio.Event()

        async def consume() -> None:
            body = chat_body(prompt, stream=True, max_tokens=2000)
            resp = await pool.request(HOST, slow_chat.port, None, "POST", "/v1/chat/completions", body, 5.0)
            async with resp:
                async for piece in resp.iter_body():
                    pieces.append(piece)
                    if len(pieces) >= 3:
                        streaming.set()

        task = asyncio.create_task(consume())
        await asyncio.wait_for(streaming.wait(), 5.0)
        during = await stand_in_stats(slow_chat.port)
        assert during["active_requests"] >= 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert pool.stats()["open"] == 0  # closed at once, not parked
        after = await wait_for_stats(
            slow_chat.port,
            lambda s: s["active_requests"] == 0 and s["open_connections"] == before["open_connections"],
        )
        assert after["active_requests"] == 0
        assert after["open_connections"] == before["open_connections"]
        assert after["served"] == before["served"]  # the stream was not finished
        assert len(pieces) < 100
        await pool.aclose()

    asyncio.run(scenario())


def test_close_without_reading_closes_connection(slow_chat: StandinProcess) -> None:
    async def scenario() -> None:
        pool = BackendPool()
        body = chat_body(long_prompt(500), stream=True, max_tokens=500)
        resp = await pool.request(HOST, slow_chat.port, None, "POST", "/v1/chat/completions", body, 5.0)
        assert resp.status == 200
        resp.close()
        resp.close()  # idempotent
        assert pool.stats() == {"open": 0, "idle": 0, "connects": 1, "reused": 0, "retries": 0}
        stats = await wait_for_stats(slow_chat.port, lambda s: s["active_requests"] == 0)
        assert stats["active_requests"] == 0
        await pool.aclose()

    asyncio.run(scenario())


def test_body_cannot_be_read_after_close(chat: StandinProcess) -> None:
    async def scenario() -> None:
        pool = BackendPool()
        resp = await pool.request(HOST, chat.port, None, "GET", "/v1/models", b"", 5.0)
        await resp.read(4096)
        resp.close()
        assert pool.stats()["idle"] == 1
        with pytest.raises(BackendFailed):
            await resp.read(4096)
        with pytest.raises(BackendFailed):
            async for _ in resp.iter_body():
                pass
        await pool.aclose()

    asyncio.run(scenario())


def test_read_over_limit_fails(chat: StandinProcess) -> None:
    async def scenario() -> None:
        pool = BackendPool()
        for stream in (False, True):
            resp = await pool.request(HOST, chat.port, None, "POST", "/v1/chat/completions", chat_body("x", stream=stream), 5.0)
            async with resp:
                with pytest.raises(BackendFailed):
                    await resp.read(100)
            assert pool.stats()["open"] == 0
        await pool.aclose()

    asyncio.run(scenario())


def test_aclose_closes_busy_connections(slow_chat: StandinProcess) -> None:
    async def scenario() -> None:
        pool = BackendPool()
        body = chat_body(long_prompt(500), stream=True, max_tokens=500)
        resp = await pool.request(HOST, slow_chat.port, None, "POST", "/v1/chat/completions", body, 5.0)
        await pool.aclose()
        assert pool.stats()["open"] == 0
        with pytest.raises(BackendFailed):
            async for _ in resp.iter_body():
                pass
        resp.close()
        with pytest.raises(BackendFailed):
            await pool.request(HOST, slow_chat.port, None, "GET", "/health", b"", 5.0)

    asyncio.run(scenario())


# --------------------------------------------------------------------------- failures


def test_connect_refused() -> None:
    port = free_port()

    async def scenario() -> None:
        pool = BackendPool()
        with pytest.raises(BackendFailed):
            await pool.request(HOST, port, None, "GET", "/health", b"", 2.0)
        assert pool.stats()["open"] == 0
        await pool.aclose()

    asyncio.run(scenario())


def test_server_never_answers_times_out() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await until_eof(reader)

    async def scenario() -> None:
        async with RawServer(silent) as server:
            pool = BackendPool()
            started = time.monotonic()
            with pytest.raises(BackendTimeout):
                await pool.request(HOST, server.port, None, "POST", "/v1/chat/completions", b"{}", 0.3)
            elapsed = time.monotonic() - started
            assert 0.25 <= elapsed < 2.0
            assert pool.stats()["open"] == 0
            await pool.aclose()

    asyncio.run(scenario())


def test_cancel_while_waiting_for_head_closes_connection() -> None:
    async def scenario() -> None:
        peer_gone = asyncio.Event()

        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
            await until_eof(reader)
            peer_gone.set()

        async with RawServer(silent) as server:
            pool = BackendPool()
            task = asyncio.create_task(pool.request(HOST, server.port, None, "GET", "/health", b"", 30.0))
            await asyncio.sleep(0.1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert pool.stats()["open"] == 0
            await asyncio.wait_for(peer_gone.wait(), 2.0)
            await pool.aclose()

    asyncio.run(scenario())


def test_body_idle_timeout() -> None:
    async def stalls(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        await until_eof(reader)

    async def scenario() -> None:
        async with RawServer(stalls) as server:
            pool = BackendPool()
            resp = await pool.request(HOST, server.port, None, "GET", "/", b"", 5.0)
            pieces = []
            started = time.monotonic()
            with pytest.raises(BackendTimeout):
                async for piece in resp.iter_body(idle_timeout=0.2):
                    pieces.append(piece)
            assert pieces == [b"first"]
            assert time.monotonic() - started < 2.0
            resp.close()
            assert pool.stats()["open"] == 0
            await pool.aclose()

    asyncio.run(scenario())


def test_each_wait_has_its_own_deadline_on_one_connection() -> None:
    # One timer serves a connection's waits: a body that keeps coming is never cut by the
    # first chunk's deadline, a stall times out one idle timeout after the last chunk, and the
    # next request on the kept-alive connection gets its own, shorter, deadline.
    async def drips(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        for _ in range(8):
            writer.write(b"4\r\ndrip\r\n")
            await writer.drain()
            await asyncio.sleep(0.15)
        writer.write(b"0\r\n\r\n")
        await read_request(reader)  # the second request: never answered
        await until_eof(reader)

    async def scenario() -> None:
        async with RawServer(drips) as server:
            pool = BackendPool()
            resp = await pool.request(HOST, server.port, None, "GET", "/", b"", 30.0)
            pieces = [piece async for piece in resp.iter_body(idle_timeout=0.4)]
            assert b"".join(pieces) == b"drip" * 8  # 1.2 s in all, never 0.4 s without a chunk
            resp.close()
            assert pool.stats()["idle"] == 1
            started = time.monotonic()
            with pytest.raises(BackendTimeout):
                await pool.request(HOST, server.port, None, "GET", "/", b"", 0.3)
            assert 0.25 <= time.monotonic() - started < 2.0
            assert pool.stats()["reused"] == 1 and pool.stats()["open"] == 0
            await pool.aclose()

    asyncio.run(scenario())


@pytest.mark.parametrize(
    "response",
    [
        b"HTTP/1.1 200 OK\nContent-Length: 2\n\n{}",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: -2\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\n" + OK_RESPONSE,
        b"SSH-2.0-OpenSSH_9.6\r\n",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\nx: " + b"a" * 20000,
    ],
)
def test_garbled_response_fails(response: bytes) -> None:
    async def garbled(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(response)
        await until_eof(reader)

    async def scenario() -> None:
        async with RawServer(garbled) as server:
            pool = BackendPool()
            with pytest.raises(BackendFailed):
                resp = await pool.request(HOST, server.port, None, "GET", "/", b"", 2.0)
                async with resp:
                    await resp.read(1 << 20)
            assert pool.stats()["open"] == 0
            await pool.aclose()

    asyncio.run(scenario())


def test_truncated_body_fails() -> None:
    async def truncates(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc")
        await writer.drain()

    async def scenario() -> None:
        async with RawServer(truncates) as server:
            pool = BackendPool()
            resp = await pool.request(HOST, server.port, None, "GET", "/", b"", 2.0)
            async with resp:
                with pytest.raises(BackendFailed):
                    await resp.read(1 << 20)
            await pool.aclose()

    asyncio.run(scenario())


def test_stale_reused_connection_is_retried_once() -> None:
    """The backend drops a kept-alive connection as our next request arrives."""

    async def drops_second(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(OK_RESPONSE)
        await read_request(reader)  # the reused connection's request: no answer, close

    async def scenario() -> None:
        async with RawServer(drops_second) as server:
            pool = BackendPool()
            for _ in range(2):
                async with await pool.request(HOST, server.port, None, "POST", "/x", b"{}", 2.0) as resp:
                    assert await resp.read(10) == b"{}"
            assert pool.stats()["retries"] == 1
            assert pool.stats()["connects"] == 2
            assert server.connections == 2
            await pool.aclose()

    asyncio.run(scenario())


def test_no_retry_after_a_response_byte() -> None:
    async def half_answers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(OK_RESPONSE)
        await read_request(reader)
        writer.write(b"HTTP/1.1 2")
        await writer.drain()

    async def scenario() -> None:
        async with RawServer(half_answers) as server:
            pool = BackendPool()
            async with await pool.request(HOST, server.port, None, "POST", "/x", b"{}", 2.0) as resp:
                await resp.read(10)
            with pytest.raises(BackendFailed):
                await pool.request(HOST, server.port, None, "POST", "/x", b"{}", 2.0)
            assert pool.stats()["retries"] == 0
            assert server.connections == 1
            await pool.aclose()

    asyncio.run(scenario())


def test_no_retry_on_a_fresh_connection() -> None:
    async def hangs_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)

    async def scenario() -> None:
        async with RawServer(hangs_up) as server:
            pool = BackendPool()
            with pytest.raises(BackendFailed):
                await pool.request(HOST, server.port, None, "POST", "/x", b"{}", 2.0)
            assert server.connections == 1
            await pool.aclose()

    asyncio.run(scenario())


def test_idle_connection_closed_by_server_is_evicted() -> None:
    async def answers_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(OK_RESPONSE)
        await writer.drain()

    async def scenario() -> None:
        async with RawServer(answers_once) as server:
            pool = BackendPool()
            async with await pool.request(HOST, server.port, None, "GET", "/", b"", 2.0) as resp:
                await resp.read(10)
            for _ in range(100):
                if pool.stats()["idle"] == 0:
                    break
                await asyncio.sleep(0.01)
            assert pool.stats()["idle"] == 0
            async with await pool.request(HOST, server.port, None, "GET", "/", b"", 2.0) as resp:
                await resp.read(10)
            assert pool.stats()["retries"] == 0
            assert pool.stats()["connects"] == 2
            await pool.aclose()

    asyncio.run(scenario())


@pytest.mark.parametrize(
    "response",
    [
        OK_RESPONSE.replace(b"\r\n\r\n", b"\r\nconnection: close\r\n\r\n"),
        b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\n{}",
    ],
)
def test_connection_not_reused(response: bytes) -> None:
    async def server_side(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(response)
        await until_eof(reader)

    async def scenario() -> None:
        async with RawServer(server_side) as server:
            pool = BackendPool()
            async with await pool.request(HOST, server.port, None, "GET", "/", b"", 2.0) as resp:
                assert await resp.read(10) == b"{}"
            assert pool.stats()["open"] == 0
            assert pool.stats()["idle"] == 0
            await pool.aclose()

    asyncio.run(scenario())


def test_reject_bytes_after_the_body() -> None:
    """Bytes beyond the declared length that arrive with the response (a lying length,
    garbage, a smuggled second response) fail it; the connection is never reused."""

    async def server_side(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(OK_RESPONSE + b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")
        await until_eof(reader)

    async def scenario() -> None:
        async with RawServer(server_side) as server:
            pool = BackendPool()
            async with await pool.request(HOST, server.port, None, "GET", "/", b"", 2.0) as resp:
                with pytest.raises(BackendFailed):
                    await resp.read(10)
            assert pool.stats()["open"] == 0
            assert pool.stats()["idle"] == 0
            await pool.aclose()

    asyncio.run(scenario())


def test_close_delimited_body() -> None:
    async def server_side(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\n\r\nuntil close")
        await writer.drain()

    async def scenario() -> None:
        async with RawServer(server_side) as server:
            pool = BackendPool()
            async with await pool.request(HOST, server.port, None, "GET", "/", b"", 2.0) as resp:
                assert await resp.read(100) == b"until close"
            assert pool.stats()["open"] == 0
            await pool.aclose()

    asyncio.run(scenario())


def test_request_sent_exactly() -> None:
    seen: list[bytes] = []

    async def records(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        seen.append(head + await reader.readexactly(parse_request_head(head).content_length or 0))
        writer.write(OK_RESPONSE)
        await until_eof(reader)

    async def scenario() -> None:
        async with RawServer(records) as server:
            pool = BackendPool()
            async with await pool.request(HOST, server.port, "tok", "POST", "/v1/x", b'{"a":1}', 2.0) as resp:
                await resp.read(10)
            await pool.aclose()
        assert seen == [
            b"POST /v1/x HTTP/1.1\r\nhost: 127.0.0.1:%d\r\nauthorization: Bearer tok\r\n"
            b'content-type: application/json\r\ncontent-length: 7\r\n\r\n{"a":1}' % server.port
        ]

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("path", "token"), [("/a\r\nx: y", None), ("/ok", "bad token"), ("no-slash", None), ("/ok", "t\r\nx: y")]
)
def test_unsafe_request_fails_before_connecting(path: str, token: str | None) -> None:
    async def scenario() -> None:
        pool = BackendPool()
        with pytest.raises(BackendFailed):
            await pool.request(HOST, free_port(), token, "GET", path, b"", 2.0)
        assert pool.stats()["connects"] == 0
        await pool.aclose()

    asyncio.run(scenario())


def test_large_body_sent_separately() -> None:
    size = 300_000

    async def echo_length(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        body = await read_request(reader)
        payload = str(len(body)).encode()
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(payload), payload))
        await until_eof(reader)

    async def scenario() -> None:
        async with RawServer(echo_length) as server:
            pool = BackendPool()
            async with await pool.request(HOST, server.port, None, "POST", "/", b"x" * size, 5.0) as resp:
                assert await resp.read(100) == str(size).encode()
            await pool.aclose()

    asyncio.run(scenario())


def test_slow_consumer_pauses_reading() -> None:
    """A large body is not buffered whole while nobody reads it."""
    chunk = b"y" * 65536
    chunks = 64  # 4 MiB

    async def floods(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % (len(chunk) * chunks))
        for _ in range(chunks):
            writer.write(chunk)
            await writer.drain()
        await until_eof(reader)

    async def scenario() -> None:
        async with RawServer(floods) as server:
            pool = BackendPool()
            resp = await pool.request(HOST, server.port, None, "GET", "/", b"", 5.0)
            await asyncio.sleep(0.3)
            conn = resp._conn
            assert conn._buffered < 1024 * 1024
            total = 0
            async for piece in resp.iter_body():
                total += len(piece)
            assert total == len(chunk) * chunks
            resp.close()
            assert pool.stats()["idle"] == 1
            await pool.aclose()

    asyncio.run(scenario())


def test_bad_pool_arguments() -> None:
    with pytest.raises(ValueError):
        BackendPool(max_idle_per_backend=-1)
    with pytest.raises(ValueError):
        BackendPool(connect_timeout=0)
