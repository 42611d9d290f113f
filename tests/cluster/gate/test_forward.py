"""Forwarding one call (cluster/gate/forward.py) against a fake backend pool: pure logic.

The configuration, the route policy and the router are the real ones; only the
backend pool is an in-memory fake of its protocol (``request`` answering with a
response head, a body to iterate, ``close``), so that each way a backend can
fail is played exactly: a refused connection, an error status, a stream the
client cancels, an answer past its byte bound, a head that never comes.  The
same paths against real servers: tests/cluster/gate/test_hostile_backend.py
and tests/cluster/gate/test_entry.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from cluster.config import ClusterConfig, load_config
from cluster.gate.forward import MAX_REFUSED, MAX_RESPONSE_BYTES, Forwarder
from cluster.routing import Instance, Router, update_table
from policy.bodies import load_routes
from policy.errors import BackendFailed, SluiceError
from policy.grammar import Call

PROMPT = "the prompt, never logged"
CHAT = json.dumps({"model": "static-chat", "messages": [{"role": "user", "content": PROMPT}]}, separators=(",", ":")).encode()
STREAM = json.dumps({"model": "static-chat", "stream": True, "messages": [{"role": "user", "content": "hi"}]}).encode()
ANSWER = (
    b'{"id":"c","choices":[{"index":0,"message":{"role":"assistant","content":"ok"}}],'
    b'"usage":{"prompt_tokens":5,"completion_tokens":1,"total_tokens":6}}'
)
CHUNK = b'data: {"id":"c","choices":[{"index":0,"delta":{"content":"t"}}],"usage":{"prompt_tokens":5,"completion_tokens":%d}}\n\n'
FINAL = b'data: {"id":"c","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}}\n\ndata: [DONE]\n\n'
VERSION = "0.9.1"

CONFIG = """\
[gate]
routing_table = "routing.json"
request_timeout = {timeout}

[[backends]]
model = "static-chat"
url = "http://127.0.0.2:9"
routes = ["chat"]

[services.sched]
backend = "local"
routes = ["chat"]
command = ["true"]
unsafe_plain_http = true
hold_queue = 0
"""


@dataclass
class _Head:
    content_length: int | None


@dataclass
class FakeResponse:
    """A backend's answer as the pool hands it out: status, type, head, then the body."""

    status: int
    content_type: str
    pieces: list[bytes]
    content_length: int | None = None
    stall: bool = False  # after its pieces the body waits for ever (a model still writing)
    closed: bool = False
    read_from: bool = False
    head: _Head = field(init=False)

    def __post_init__(self) -> None:
        self.head = _Head(self.content_length)

    async def iter_body(self) -> AsyncIterator[bytes]:
        self.read_from = True
        for piece in self.pieces:
            yield piece
        if self.stall:
            await asyncio.Event().wait()

    async def read(self, limit: int) -> bytes:
        return b"".join(self.pieces)[:limit]

    def close(self) -> None:
        self.closed = True


Answer = Callable[[], FakeResponse]


def refused() -> FakeResponse:
    """A connection refused: the pool's BackendFailed caused by the OSError (nothing was sent)."""
    raise BackendFailed() from ConnectionRefusedError()


class FakePool:
    """The backend pool's protocol in memory: each host answers by its function; every request is recorded."""

    def __init__(self, answers: dict[str, Answer]) -> None:
        self.answers = answers
        self.requests: list[tuple[str, str, str, bytes]] = []
        self.responses: list[FakeResponse] = []

    async def request(
        self,
        host: str,
        port: int,
        token: str | None,
        method: str,
        path: str,
        body: bytes,
        timeout: float,
        content_type: str = "application/json",
        pin: str | None = None,
    ) -> FakeResponse:
        self.requests.append((host, method, path, body))
        if path == "/version":
            return FakeResponse(200, "application/json", [json.dumps({"version": VERSION}).encode()])
        response = self.answers[host]()
        self.responses.append(response)
        return response

    def calls(self) -> list[str]:
        """The hosts the call itself went to, in order (not the version look-ups)."""
        return [host for host, _, path, _ in self.requests if path != "/version"]

    def stats(self) -> dict[str, int]:
        return {}

    async def aclose(self) -> None:
        return None


class RecordingSink:
    """The stream's frames as a list: heads, bodies, ends and errors, and the usage so far."""

    def __init__(self) -> None:
        self.frames: list[tuple[object, ...]] = []
        self.progress_seen: list[int] = []
        self.first_body = asyncio.Event()

    def head(self, status: int, media: str) -> None:
        self.frames.append(("head", status, media))

    async def body(self, data: bytes) -> None:
        self.frames.append(("body", data))
        self.first_body.set()

    def progress(self, usage: dict[str, int]) -> None:
        self.progress_seen.append(usage["completion_tokens"])

    def end(self, usage: dict[str, object] | None) -> None:
        self.frames.append(("end", usage))

    def error(self, error: SluiceError) -> None:
        self.frames.append(("error", error.status, error.code))


@dataclass
class Gate:
    forwarder: Forwarder
    router: Router
    pool: FakePool
    config: ClusterConfig


def _gate(tmp_path: Path, answers: dict[str, Answer], instances: int = 0, timeout: float = 30) -> Gate:
    (tmp_path / "cluster.toml").write_text(CONFIG.format(timeout=timeout))
    config = load_config(tmp_path / "cluster.toml")
    if instances:
        table = {"sched": [Instance(f"local:{n}", f"10.0.0.{n}", 20000 + n, f"t{n}") for n in range(1, instances + 1)]}
        update_table(config.gate.routing_table, table, set(config.model_routes()), tmp_path / "table.lock")
    router = Router(config, shared=False)
    pool = FakePool(answers)
    return Gate(Forwarder(config, load_routes(), router, pool), router, pool, config)  # type: ignore[arg-type]


def _serve(gate: Gate, body: bytes = CHAT, model: str = "static-chat", route: str = "chat") -> RecordingSink:
    sink = RecordingSink()
    body = body.replace(b'"static-chat"', f'"{model}"'.encode()) if model == "sched" else body
    asyncio.run(gate.forwarder.serve(Call(route, model, len(body)), body, sink))
    return sink


def _json(status: int = 200, body: bytes = ANSWER) -> Answer:
    return lambda: FakeResponse(status, "application/json", [body], len(body))


def test_json_answer_with_its_usage_and_what_produced_it(tmp_path: Path) -> None:
    gate = _gate(tmp_path, {"127.0.0.2": _json()})
    sink = _serve(gate)
    usage = {"prompt_tokens": 5, "completion_tokens": 1, "backend_version": VERSION}
    assert sink.frames == [("head", 200, "json"), ("body", ANSWER), ("end", usage)]
    assert gate.pool.requests[0] == ("127.0.0.2", "POST", "/v1/chat/completions", CHAT)  # the gate's re-serialization
    assert gate.pool.responses[0].closed and gate.router.in_flight() == 0


def test_stream_reports_usage_so_far_and_hides_what_the_client_did_not_ask_for(tmp_path: Path) -> None:
    pieces = [CHUNK % 1, (CHUNK % 2)[:30], (CHUNK % 2)[30:] + FINAL]
    gate = _gate(tmp_path, {"127.0.0.2": lambda: FakeResponse(200, "text/event-stream", pieces)})
    sink = _serve(gate, STREAM)
    assert sink.frames[0] == ("head", 200, "sse") and sink.progress_seen == [1, 1, 2]  # after each piece
    assert sink.frames[-1] == ("end", {"prompt_tokens": 5, "completion_tokens": 2, "backend_version": VERSION})
    sent = b"".join(frame[1] for frame in sink.frames if frame[0] == "body")  # type: ignore[misc]
    assert sent.count(b'"usage":null') == 2 and b'"choices":[]' not in sent and sent.endswith(b"data: [DONE]\n\n")
    # the gate asked the backend for usage on every chunk; the client did not
    assert b'"continuous_usage_stats":true' in gate.pool.requests[0][3]


@pytest.mark.parametrize("status", [400, 413, 422])
def test_a_refusal_the_client_can_act_on_passes_as_it_is(tmp_path: Path, status: int) -> None:
    refusal = b'{"error":{"message":"prompt too long"}}'
    gate = _gate(tmp_path, {"127.0.0.2": _json(status, refusal)})
    assert _serve(gate).frames == [("head", status, "json"), ("body", refusal), ("end", None)]


@pytest.mark.parametrize("status", [201, 302, 401, 404, 500, 503])
def test_reject_a_backend_error_status_as_backend_failed(tmp_path: Path, status: int) -> None:
    """Any other status is the backend's fault (or ours): a 502, and none of its body reaches the client."""
    gate = _gate(tmp_path, {"127.0.0.2": _json(status, b'{"detail":"internal host 10.1.2.3"}')})
    assert _serve(gate).frames == [("error", 502, "backend_failed")]
    assert not gate.pool.responses[0].read_from and gate.pool.responses[0].closed
    assert gate.router.in_flight() == 0


def test_reject_a_refused_connection_to_a_static_backend(tmp_path: Path) -> None:
    """A static backend is one instance: nothing to try instead, a 502 at once."""
    gate = _gate(tmp_path, {"127.0.0.2": refused})
    assert _serve(gate).frames == [("error", 502, "backend_failed")]
    assert gate.pool.calls() == ["127.0.0.2"] and gate.router.in_flight() == 0


def test_a_refused_connection_tries_another_instance_and_skips_the_refusing_one(tmp_path: Path) -> None:
    gate = _gate(tmp_path, {"10.0.0.1": refused, "10.0.0.2": _json()}, instances=2)
    first = _serve(gate, model="sched")
    assert first.frames[0] == ("head", 200, "json") and first.frames[-1][0] == "end"
    assert gate.pool.calls() == ["10.0.0.1", "10.0.0.2"]
    second = _serve(gate, model="sched")  # the refusing instance is quarantined: not tried again at once
    assert second.frames[0] == ("head", 200, "json") and gate.pool.calls()[2:] == ["10.0.0.2"]
    assert gate.router.in_flight() == 0


def test_reject_refusals_past_max_refused(tmp_path: Path) -> None:
    hosts = [f"10.0.0.{n}" for n in range(1, MAX_REFUSED + 2)]
    gate = _gate(tmp_path, {host: refused for host in hosts}, instances=len(hosts))
    assert _serve(gate, model="sched").frames == [("error", 502, "backend_failed")]
    assert len(gate.pool.calls()) == MAX_REFUSED and len(set(gate.pool.calls())) == MAX_REFUSED
    assert gate.router.in_flight() == 0


def test_reject_sending_a_delivered_request_twice(tmp_path: Path) -> None:
    """A failure after the connection was made (the backend may have started on it) is never retried."""

    def broken() -> FakeResponse:
        raise BackendFailed()

    gate = _gate(tmp_path, {"10.0.0.1": broken, "10.0.0.2": broken}, instances=2)
    assert _serve(gate, model="sched").frames == [("error", 502, "backend_failed")]
    assert len(gate.pool.calls()) == 1 and gate.router.in_flight() == 0


def test_reject_a_head_that_never_comes_as_backend_timeout(tmp_path: Path) -> None:
    gate = _gate(tmp_path, {}, timeout=0.2)

    async def never(*args: object, **kwargs: object) -> FakeResponse:
        await asyncio.Event().wait()
        raise AssertionError("not reached")

    gate.pool.request = never  # type: ignore[method-assign]
    assert _serve(gate).frames == [("error", 504, "backend_timeout")]
    assert gate.router.in_flight() == 0


def test_a_cancelled_stream_closes_its_response_and_releases_its_instance(tmp_path: Path) -> None:
    """The session cancels the task serving a stream (the client sent CANCEL): the backend
    connection is closed, the instance is free, and no END or ERROR is written for it."""
    gate = _gate(tmp_path, {"127.0.0.2": lambda: FakeResponse(200, "text/event-stream", [CHUNK % 1], stall=True)})

    async def scenario() -> RecordingSink:
        sink = RecordingSink()
        task = asyncio.create_task(gate.forwarder.serve(Call("chat", "static-chat", len(STREAM)), STREAM, sink))
        await asyncio.wait_for(sink.first_body.wait(), 5.0)
        assert gate.router.in_flight() == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return sink

    sink = asyncio.run(scenario())
    assert [frame[0] for frame in sink.frames] == ["head", "body"] and sink.progress_seen == [1]
    assert gate.pool.responses[0].closed and gate.router.in_flight() == 0


def test_reject_an_answer_declared_past_its_byte_bound(tmp_path: Path) -> None:
    """A Content-Length over MAX_RESPONSE_BYTES is refused before a byte of the body is read."""
    gate = _gate(tmp_path, {"127.0.0.2": lambda: FakeResponse(200, "application/json", [ANSWER], MAX_RESPONSE_BYTES + 1)})
    assert _serve(gate).frames == [("error", 502, "response_too_large")]
    assert not gate.pool.responses[0].read_from and gate.pool.responses[0].closed


def test_reject_an_answer_growing_past_its_byte_bound_and_the_bytes_held_are_given_back(tmp_path: Path) -> None:
    """An answer without a length is counted as it arrives; what it held is given back, so that
    more such answers than the process's whole budget holds (4 x MAX_RESPONSE_BYTES) each get
    their own refusal, never the process's ``overloaded``, and a good answer after them passes."""
    mebibyte = b"x" * (1 << 20)
    pieces = [mebibyte] * (MAX_RESPONSE_BYTES // len(mebibyte) + 1)  # one object: no memory is spent on it
    answers = {"127.0.0.2": lambda: FakeResponse(200, "application/json", pieces)}
    gate = _gate(tmp_path, answers)
    for _ in range(5):
        assert _serve(gate).frames == [("error", 502, "response_too_large")]
    answers["127.0.0.2"] = _json()
    assert _serve(gate).frames[0] == ("head", 200, "json")


def test_reject_a_body_naming_another_model_before_any_backend_is_asked(tmp_path: Path) -> None:
    gate = _gate(tmp_path, {"127.0.0.2": _json()})
    sink = RecordingSink()
    asyncio.run(gate.forwarder.serve(Call("chat", "sched", len(CHAT)), CHAT, sink))
    assert sink.frames == [("error", 400, "model_mismatch")] and gate.pool.requests == []


def test_reject_a_route_the_model_does_not_serve(tmp_path: Path) -> None:
    body = json.dumps({"model": "static-chat", "input": "hi"}).encode()
    gate = _gate(tmp_path, {"127.0.0.2": _json()})
    assert _serve(gate, body, route="embeddings").frames == [("error", 404, "route_not_served")]
    assert gate.pool.requests == []


def test_an_unexpected_failure_is_this_streams_internal_error_and_logs_no_content(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def crash() -> FakeResponse:
        raise RuntimeError(PROMPT)

    gate = _gate(tmp_path, {"127.0.0.2": crash})
    with caplog.at_level(logging.ERROR, logger="sluice.gate"):
        assert _serve(gate).frames == [("error", 500, "internal")]
    assert caplog.records and all(PROMPT not in record.getMessage() for record in caplog.records)
    assert gate.router.in_flight() == 0
