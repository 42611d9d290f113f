"""The one front layer: body deadline, cut-off bodies, the headers it adds and which answers get them."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from starlette.requests import ClientDisconnect, Request
from starlette.types import Message, Receive, Scope, Send

from appliance.metrics import Metrics
from appliance.middleware.body_deadline import BodyTimeout, receive_within
from appliance.middleware.front import FrontMiddleware

CHAT = "/v1/chat/completions"
JSON = [(b"content-type", b"application/json"), (b"host", b"t")]


def _scope(path: str = CHAT, method: str = "POST", headers: list[tuple[bytes, bytes]] = JSON) -> Scope:
    return {"type": "http", "method": method, "path": path, "headers": headers}


def _run(front: FrontMiddleware, scope: Scope, receive: Receive) -> list[Message]:
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    asyncio.run(front(scope, receive, send))
    return sent


async def _body_then_answer(scope: Scope, receive: Receive, send: Send) -> None:
    body = await Request(scope, receive).body()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"cache-control", b"max-age=9")]})
    await send({"type": "http.response.body", "body": body})


def _slow_receive(*messages: Message, stall: float = 10.0) -> Callable[[], Awaitable[Message]]:
    queue = list(messages)

    async def receive() -> Message:
        if queue:
            return queue.pop(0)
        await asyncio.sleep(stall)
        return {"type": "http.request", "body": b"late", "more_body": False}

    return receive


def _headers(message: Message) -> dict[bytes, bytes]:
    return dict(message["headers"])


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.fields: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.fields.append(record.fields)  # type: ignore[attr-defined]


@pytest.fixture
def request_lines() -> Iterator[list[dict[str, Any]]]:
    handler = _Records()
    logger = logging.getLogger("sluice.request")
    logger.addHandler(handler)
    saved = logger.level
    logger.setLevel(logging.INFO)
    try:
        yield handler.fields
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved)


def test_an_api_answer_is_marked_no_store_and_carries_the_request_id() -> None:
    receive = _slow_receive({"type": "http.request", "body": b"{}", "more_body": False})
    start, body = _run(FrontMiddleware(_body_then_answer), _scope(), receive)
    headers = _headers(start)
    assert list(headers) == [b"cache-control", b"x-request-id"] and headers[b"cache-control"] == b"no-store"
    assert headers[b"x-request-id"].startswith(b"req_") and body["body"] == b"{}"


def test_reject_a_body_past_its_deadline() -> None:
    receive = _slow_receive({"type": "http.request", "body": b"{", "more_body": True})
    metrics = Metrics()
    start, body = _run(FrontMiddleware(_body_then_answer, body_timeout=0.05, metrics=metrics), _scope(), receive)
    assert start["status"] == 408 and json.loads(body["body"])["error"]["code"] == "body_timeout"
    headers = _headers(start)
    assert headers[b"connection"] == b"close" and b"x-request-id" in headers and b"cache-control" not in headers
    sample = metrics.registry.get_sample_value
    assert sample("sluice_http_requests_total", {"path": "other", "status": "408"}) == 1


def test_reject_a_body_cut_off() -> None:
    async def cut_off(scope: Scope, receive: Receive, send: Send) -> None:
        raise ClientDisconnect()

    start, body = _run(FrontMiddleware(cut_off), _scope(), _slow_receive())
    assert start["status"] == 400 and json.loads(body["body"])["error"]["code"] == "body_incomplete"


def test_a_cut_off_after_the_answer_started_just_ends() -> None:
    async def started_then_cut(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        raise ClientDisconnect()

    [start] = _run(FrontMiddleware(started_then_cut), _scope(), _slow_receive())
    assert start["status"] == 200


def test_reject_foreign_origin_without_no_store(request_lines: list[dict[str, Any]]) -> None:
    scope = _scope(headers=[*JSON, (b"origin", b"https://evil.example")])
    start, body = _run(FrontMiddleware(_body_then_answer), scope, _slow_receive())
    assert start["status"] == 403 and json.loads(body["body"])["error"]["code"] == "foreign_origin"
    assert sorted(_headers(start)) == [b"content-length", b"content-type", b"x-request-id"]
    [line] = request_lines
    assert line["event"] == "request" and line["status"] == 403 and line["method"] == "POST" and line["path"] == "other"


def test_the_first_of_repeated_headers_counts() -> None:
    """As Starlette's Headers.get: a second Origin or Content-Type changes nothing."""
    scope = _scope(headers=[(b"content-type", b"text/plain"), (b"content-type", b"application/json")])
    start, _ = _run(FrontMiddleware(_body_then_answer), scope, _slow_receive())
    assert start["status"] == 415
    scope = _scope(headers=[*JSON, (b"origin", b"http://t"), (b"origin", b"https://evil.example")])
    receive = _slow_receive({"type": "http.request", "body": b"{}", "more_body": False})
    start, _ = _run(FrontMiddleware(_body_then_answer), scope, receive)
    assert start["status"] == 200


def test_a_failure_is_counted_as_500() -> None:
    async def fails(scope: Scope, receive: Receive, send: Send) -> None:
        raise RuntimeError("boom")

    metrics = Metrics()
    with pytest.raises(RuntimeError):
        _run(FrontMiddleware(fails, metrics=metrics), _scope(method="GET", path="/x"), _slow_receive())
    assert metrics.registry.get_sample_value("sluice_http_requests_total", {"path": "other", "status": "500"}) == 1


def test_a_queued_message_is_taken_without_waiting() -> None:
    """Hypercorn's receive is an asyncio.Queue's get: what is queued comes at once, even past the deadline."""

    async def run() -> tuple[Message, Any]:
        queue: asyncio.Queue[Message] = asyncio.Queue()
        queue.put_nowait({"type": "http.request", "body": b"all", "more_body": False})
        receive = receive_within(queue.get, deadline=0.0)
        first = await receive()
        queue.put_nowait({"type": "http.disconnect"})
        return first, await receive()

    first, after_body = asyncio.run(run())
    assert first["body"] == b"all" and after_body == {"type": "http.disconnect"}


def test_reject_an_empty_queue_past_the_deadline() -> None:
    async def run() -> None:
        queue: asyncio.Queue[Message] = asyncio.Queue()
        await receive_within(queue.get, deadline=0.0)()

    with pytest.raises(BodyTimeout):
        asyncio.run(run())


def test_each_request_is_counted_and_timed() -> None:
    metrics = Metrics()
    front = FrontMiddleware(_body_then_answer, metrics=metrics)
    for _ in range(3):
        _run(front, _scope(), _slow_receive({"type": "http.request", "body": b"{}", "more_body": False}))
    sample = metrics.registry.get_sample_value
    assert sample("sluice_http_requests_total", {"path": "other", "status": "200"}) == 3
    assert sample("sluice_http_request_duration_seconds_count", {"path": "other"}) == 3
