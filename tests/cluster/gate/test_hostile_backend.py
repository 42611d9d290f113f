"""A hostile backend against the real gate process: each misbehaviour is contained to its stream.

The hostile backend is a small asyncio HTTP server (not a mock of the gate): it
reads the gate's request like any backend and answers according to the model
named in the body -- an endless head, endless or unframed SSE, lying
Content-Length, broken chunked encoding, a slow drip, garbage after the body,
an early close, a JSON body far over the gate's bound, an endless stream asked
for as a whole sealed answer.  Each case runs as one stream of a mux session
between two ordinary streams to the stand-in model, and:

* the hostile stream ends with a clean per-stream ERROR (a 5xx code of ours,
  the usage so far before it where tokens were delivered), never a GOAWAY;
* the other streams of the session finish with their complete answers;
* the gate process's peak RSS (``VmHWM`` from /proc) stays under a stated bound.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from cluster import sealed_keys
from cluster.gate.bounds import MAX_RESPONSE_BYTES
from cluster.gate.usage import MAX_EVENT_BYTES
from policy.frames import GATE_KINDS, MAX_PAYLOAD, Frame, FrameDecoder, Kind, encode
from tests.cluster.gate.test_entry import gate_argv
from tests.conftest import ROOT, Cluster, write_static_config

pytestmark = pytest.mark.integration

# The gate's whole-request timeout in this suite: a drip or an endless stream ends here.
REQUEST_TIMEOUT = 3

# Peak RSS of the gate process.  A gate serving this suite's sessions peaks at
# about 27 MiB (measured); a whole answer is held at most MAX_RESPONSE_BYTES
# (64 MiB) per stream, with a copy or two while it is joined, sealed and framed
# (measured: 91 MiB for endless JSON, 104 MiB for an endless stream sealed
# whole); everything else is streamed with back-pressure.
RSS_BOUND_STREAMED = 64 * 1024 * 1024  # cases where nothing is held whole
RSS_BOUND_HELD = 64 * 1024 * 1024 + 3 * MAX_RESPONSE_BYTES  # cases that reach the whole-answer bound

HOSTILE_MODELS = (
    "oversized-head",
    "endless-sse",
    "unframed-sse",
    "crlf-unframed-sse",
    "lying-length-short",
    "lying-length-long",
    "bad-chunked",
    "chunk-overrun",
    "slow-drip",
    "garbage-after-body",
    "early-close",
    "huge-json",
    "endless-json",
    "endless-sse-sealed",
)

_CHUNK_EVENT = (
    b'data: {"id":"h","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"'
    + b"w" * 900
    + b'"}}],"usage":{"prompt_tokens":2,"completion_tokens":%d}}\n\n'
)

_BIG_EVENT = _CHUNK_EVENT.replace(b"w" * 900, b"w" * (MAX_EVENT_BYTES // 4))


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class HostileBackend:
    """An HTTP/1.1 server on 127.0.0.1 whose answer depends on the request body's model."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.port = 0
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._ready.wait(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._server = server
        self._ready.set()
        self.loop.run_forever()

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self._shutdown(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()

    async def _shutdown(self) -> None:
        self._server.close()
        await self._server.wait_closed()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            model = json.loads(await reader.readexactly(length))["model"]
            await getattr(self, "_" + model.replace("-", "_"))(writer)
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    @staticmethod
    async def _sse_head(writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        await writer.drain()

    async def _oversized_head(self, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n")
        for _ in range(2000):  # 2 MB of header lines, never a blank line
            writer.write(b"x-junk: " + b"a" * 1000 + b"\r\n")
            await writer.drain()

    async def _endless_sse(self, writer: asyncio.StreamWriter) -> None:
        await self._sse_head(writer)
        count = 0
        while True:  # well-formed events, with usage so far, until the gate gives up (its timeout)
            count += 1
            writer.write(_chunk(_CHUNK_EVENT % count))
            await writer.drain()
            await asyncio.sleep(0.001)

    async def _endless_sse_sealed(self, writer: asyncio.StreamWriter) -> None:
        await self._sse_head(writer)
        count = 0
        while True:  # as fast as the gate reads: a whole sealed answer must stop at its bound
            # Few large events (a quarter of the event bound each) rather than many small ones,
            # so that the bound, not the suite's timeout, ends the stream on a loaded machine.
            count += 1
            writer.write(_chunk(_BIG_EVENT % count))
            await writer.drain()

    async def _unframed_sse(self, writer: asyncio.StreamWriter, eol: bytes = b"") -> None:
        await self._sse_head(writer)
        while True:  # data, never a blank line
            writer.write(_chunk(b"data: " + b"x" * 16000 + eol))
            await writer.drain()

    async def _crlf_unframed_sse(self, writer: asyncio.StreamWriter) -> None:
        await self._unframed_sse(writer, b"\r\n")

    async def _lying_length_short(self, writer: asyncio.StreamWriter) -> None:
        writer.write(b'HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100000\r\n\r\n{"a":1}')

    async def _lying_length_long(self, writer: asyncio.StreamWriter) -> None:
        body = b'{"id":"x","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":1}}'
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 10\r\n\r\n" + body)

    async def _bad_chunked(self, writer: asyncio.StreamWriter) -> None:
        await self._sse_head(writer)
        writer.write(_chunk(_CHUNK_EVENT % 1) + b"zz\r\nnot a chunk\r\n")

    async def _chunk_overrun(self, writer: asyncio.StreamWriter) -> None:
        await self._sse_head(writer)
        writer.write(b"5\r\ndata: more than five\r\n")

    async def _slow_drip(self, writer: asyncio.StreamWriter) -> None:
        await self._sse_head(writer)
        event = _CHUNK_EVENT % 1
        for byte in range(len(event)):  # one byte at a time, slower than the gate waits in total
            writer.write(_chunk(event[byte : byte + 1]))
            await writer.drain()
            await asyncio.sleep(0.05)
        while True:
            writer.write(_chunk(b"d"))
            await writer.drain()
            await asyncio.sleep(0.05)

    async def _garbage_after_body(self, writer: asyncio.StreamWriter) -> None:
        body = b'{"id":"x","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":1}}'
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
            + b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nSMUGGLED"
        )

    async def _early_close(self, writer: asyncio.StreamWriter) -> None:
        await self._sse_head(writer)
        writer.write(_chunk(_CHUNK_EVENT % 1) + _chunk(_CHUNK_EVENT % 2)[:100])
        await writer.drain()
        writer.transport.abort()

    async def _huge_json(self, writer: asyncio.StreamWriter) -> None:
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % (8 * MAX_RESPONSE_BYTES)
        )
        while True:
            writer.write(b" " * 65536)
            await writer.drain()

    async def _endless_json(self, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n")
        while True:  # no length: the gate must stop at its own bound
            writer.write(_chunk(b" " * 65536))
            await writer.drain()


@pytest.fixture(scope="module")
def hostile() -> Iterator[HostileBackend]:
    backend = HostileBackend()
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def hostile_config(cluster: Cluster, hostile: HostileBackend, tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("hostile")
    backends = [("standin-chat", "127.0.0.1", cluster.chat.port, cluster.chat.token, ["chat", "completions"])]
    backends += [(model, "127.0.0.1", hostile.port, None, ["chat"]) for model in HOSTILE_MODELS]
    config = write_static_config(directory, backends)
    config.write_text(config.read_text().replace("request_timeout = 30", f"request_timeout = {REQUEST_TIMEOUT}"))
    sealed_keys.create(config)
    return config


def _peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def _open(stream: int, line: bytes, body: bytes) -> bytes:
    wire = encode(Kind.OPEN, stream, line)
    for start in range(0, len(body), MAX_PAYLOAD):
        wire += encode(Kind.DATA, stream, body[start : start + MAX_PAYLOAD])
    return wire


def _call(stream: int, model: str, max_tokens: int = 12) -> bytes:
    document = {
        "model": model,
        "messages": [{"role": "user", "content": "a fair question"}],
        "stream": True,
        "max_tokens": max_tokens,
    }
    body = json.dumps(document).encode()
    return _open(stream, f"call chat {model} {len(body)}".encode(), body)


def _sealed_call(stream: int, config: Path, model: str) -> bytes:
    from sluice_sdk.bhttp import Request, encode_request
    from sluice_sdk.ohttp import encapsulate_request
    from sluice_sdk.replay import http_date

    ring = sealed_keys.load_ring(config)
    assert ring is not None
    inner = json.dumps({"model": model, "messages": [{"role": "user", "content": "q"}], "stream": True}).encode()
    request = Request(
        b"POST",
        b"https",
        b"gate",
        b"/v1/chat/completions",
        ((b"content-type", b"application/json"), (b"date", http_date())),
        inner,
    )
    body, _ = encapsulate_request(ring.current.config, encode_request(request))
    return _open(stream, f"sealed ohttp chat {model} {len(body)}".encode(), body)


async def _session(config: Path, wire: bytes, streams: int) -> tuple[int, dict[int, list[Frame]], int]:
    process = await asyncio.create_subprocess_exec(
        *gate_argv(config),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        env={"PATH": os.environ["PATH"], "SSH_ORIGINAL_COMMAND": "sluice/1 mux"},
        cwd=ROOT,
    )
    assert process.stdin and process.stdout
    process.stdin.write(wire)
    await process.stdin.drain()
    decoder = FrameDecoder(GATE_KINDS)
    frames: dict[int, list[Frame]] = {}
    done: set[int] = set()
    try:
        while len(done) < streams:
            data = await asyncio.wait_for(process.stdout.read(1 << 20), REQUEST_TIMEOUT + 20)
            if not data:
                break
            for frame in decoder.feed(data):
                if frame.kind is Kind.BODY and frame.stream == 2:
                    # the hostile stream's body is not kept (an endless stream is large)
                    frames.setdefault(frame.stream, [])[-1:] = [frame]
                    continue
                frames.setdefault(frame.stream, []).append(frame)
                if frame.kind in (Kind.END, Kind.ERROR, Kind.GOAWAY):
                    done.add(frame.stream)
        peak = _peak_rss(process.pid)
    finally:
        process.stdin.close()
        status = await asyncio.wait_for(process.wait(), 30)
    return status, frames, peak


def _contents(frames: list[Frame]) -> list[str]:
    body = b"".join(f.payload for f in frames if f.kind is Kind.BODY)
    out = []
    for event in body.decode().split("\n\n"):
        if event.startswith("data: {"):
            chunk = json.loads(event[6:])
            if chunk["choices"]:
                out.append(chunk["choices"][0]["delta"].get("content") or "")
    return out


# case -> the hostile stream's ERROR payload (or None: a clean 200 END is as good), held whole?
EXPECTED: dict[str, tuple[tuple[bytes, ...], bool]] = {
    "oversized-head": ((b"502 backend_failed",), False),
    "endless-sse": ((b"504 backend_timeout",), False),
    "unframed-sse": ((b"502 bad_event_stream",), False),
    "crlf-unframed-sse": ((b"502 bad_event_stream",), False),
    "lying-length-short": ((b"502 backend_failed",), False),
    "lying-length-long": ((b"502 backend_failed",), False),
    "bad-chunked": ((b"502 backend_failed",), False),
    "chunk-overrun": ((b"502 backend_failed",), False),
    "slow-drip": ((b"504 backend_timeout",), False),
    "garbage-after-body": ((b"502 backend_failed", b"END"), False),
    "early-close": ((b"502 backend_failed",), False),
    "huge-json": ((b"502 response_too_large",), False),
    "endless-json": ((b"502 response_too_large",), True),
    "endless-sse-sealed": ((b"502 response_too_large",), True),
}


@pytest.mark.parametrize("model", HOSTILE_MODELS)
def test_reject_hostile_backend_contained_to_its_stream(hostile_config: Path, model: str) -> None:
    expected, held = EXPECTED[model]
    hostile_stream = _sealed_call(2, hostile_config, model) if model.endswith("sealed") else _call(2, model)
    wire = _call(1, "standin-chat", 40) + hostile_stream + _call(3, "standin-chat", 12)
    status, frames, peak = asyncio.run(_session(hostile_config, wire, 3))
    assert status == 0 and 0 not in frames, frames.get(0)  # no GOAWAY: the session lived on
    for stream, tokens in ((1, 40), (3, 12)):
        kinds = [f.kind for f in frames[stream]]
        assert kinds[0] is Kind.HEAD and kinds[-1] is Kind.END, (stream, kinds[-3:])
        assert len([c for c in _contents(frames[stream]) if c]) == tokens
    last = frames[2][-1]
    if last.kind is Kind.END:
        assert b"END" in expected, last
        assert b"SMUGGLED" not in b"".join(f.payload for f in frames[2])
    else:
        assert last.kind is Kind.ERROR and last.payload in expected, last
    if model == "endless-sse":  # tokens were delivered: the usage so far comes before the ERROR
        usage = [f for f in frames[2] if f.kind is Kind.USAGE]
        assert usage and json.loads(usage[-1].payload)["completion_tokens"] > 0
    bound = RSS_BOUND_HELD if held else RSS_BOUND_STREAMED
    print(f"{model}: gate peak RSS {peak / 2**20:.1f} MiB (bound {bound / 2**20:.0f} MiB)")
    assert peak < bound


def test_event_bound_is_below_the_streamed_rss_bound() -> None:
    assert MAX_EVENT_BYTES * 8 <= RSS_BOUND_STREAMED
