"""A streamed answer from the request's own task (appliance/api/streamed.py): every chunk and the
end when the client stays; a quiet early end, with the body closed, when the client goes away."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from appliance.api.streamed import StreamedAnswer

SCOPE = {"type": "http", "asgi": {"spec_version": "2.1", "version": "3.0"}}


class Client:
    """The server's side of one request: what was sent, and a disconnect to deliver on demand."""

    def __init__(self) -> None:
        self.sent: list[dict[str, object]] = []
        self.gone = asyncio.Event()
        self.on_send: asyncio.Event | None = None
        self.free_sends = 0  # sends that go out at once before on_send is waited for

    async def receive(self) -> dict[str, object]:
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, object]) -> None:
        self.sent.append(message)
        if self.on_send is not None and len(self.sent) > self.free_sends:
            await self.on_send.wait()  # a slow client: the send waits


def body(client: Client) -> list[bytes]:
    return [m["body"] for m in client.sent if m["type"] == "http.response.body"]  # type: ignore[misc]


def test_every_chunk_then_the_end_and_no_task_left() -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for piece in (b"data: 1\n\n", b"data: 2\n\n"):
            yield piece

    async def scenario() -> None:
        client = Client()
        before = len(asyncio.all_tasks())
        answer = StreamedAnswer(chunks(), 200, "text/event-stream", {"Cache-Control": "no-cache"})
        await answer(SCOPE, client.receive, client.send)  # type: ignore[arg-type]
        assert client.sent[0]["type"] == "http.response.start" and client.sent[0]["status"] == 200
        assert (b"cache-control", b"no-cache") in client.sent[0]["headers"]  # type: ignore[operator]
        assert (b"content-type", b"text/event-stream; charset=utf-8") in client.sent[0]["headers"]  # type: ignore[operator]
        assert body(client) == [b"data: 1\n\n", b"data: 2\n\n", b""]
        assert client.sent[-1]["more_body"] is False
        await asyncio.sleep(0)
        assert len(asyncio.all_tasks()) == before  # the listener is gone
        assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]

    asyncio.run(scenario())


@pytest.mark.parametrize("cut_in", ["body", "send"])
def test_a_client_gone_ends_the_answer_quietly_and_closes_the_body(cut_in: str) -> None:
    """Gone while the body waits for the gate, or while a chunk is being sent: the answer ends
    without an error, the request's task is not left cancelled, and the body's clean-up has run."""
    cleaned: list[str] = []

    async def scenario() -> None:
        client = Client()
        more = asyncio.Event()

        async def chunks() -> AsyncIterator[bytes]:
            try:
                yield b"data: 1\n\n"
                await more.wait()  # the gate is slow
                yield b"data: 2\n\n"
            except BaseException as exc:
                cleaned.append(type(exc).__name__)
                raise

        if cut_in == "send":
            client.on_send = asyncio.Event()  # never set: the first chunk's send waits (the head's goes out)
            client.free_sends = 1
        answer = StreamedAnswer(chunks(), 200, "text/event-stream")
        serving = asyncio.create_task(answer(SCOPE, client.receive, client.send))  # type: ignore[arg-type]
        await asyncio.sleep(0.01)
        client.gone.set()
        await asyncio.wait_for(serving, 2)  # returns: no CancelledError out of the answer
        assert serving.cancelling() == 0 and not serving.cancelled()
        assert b"" not in body(client)  # never ended as a whole answer
        assert cleaned == (["CancelledError"] if cut_in == "body" else ["GeneratorExit"])

    asyncio.run(scenario())


def test_a_cancellation_from_elsewhere_is_not_swallowed() -> None:
    async def scenario() -> None:
        client = Client()

        async def chunks() -> AsyncIterator[bytes]:
            yield b"data: 1\n\n"
            await asyncio.sleep(60)
            yield b"never"

        serving = asyncio.create_task(StreamedAnswer(chunks(), 200, "text/event-stream")(SCOPE, client.receive, client.send))  # type: ignore[arg-type]
        await asyncio.sleep(0.01)
        serving.cancel()  # the server stopping
        with pytest.raises(asyncio.CancelledError):
            await serving

    asyncio.run(scenario())


def test_a_client_gone_before_the_first_piece_tells_the_owner() -> None:
    """Gone while the head was being sent: the body never ran, so ``unread`` is awaited instead."""
    told: list[str] = []

    async def chunks() -> AsyncIterator[bytes]:
        told.append("body ran")
        yield b"never sent"

    async def unread() -> None:
        await asyncio.sleep(0)
        told.append("unread")

    async def scenario() -> None:
        client = Client()
        client.on_send = asyncio.Event()  # the head's send waits
        answer = StreamedAnswer(chunks(), 200, "text/event-stream", unread=unread)
        serving = asyncio.create_task(answer(SCOPE, client.receive, client.send))  # type: ignore[arg-type]
        await asyncio.sleep(0.01)
        client.gone.set()
        await asyncio.wait_for(serving, 2)
        assert told == ["unread"]

    asyncio.run(scenario())
