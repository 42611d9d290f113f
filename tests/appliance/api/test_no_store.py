"""``Cache-Control: no-store`` on every API answer (appliance/api/no_store.py), but the public
key configuration, and nothing outside ``/v1/``."""

from __future__ import annotations

import asyncio

import pytest
from starlette.types import Message, Receive, Scope, Send

from appliance.api.no_store import NoStoreMiddleware


async def _app(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"cache-control", b"max-age=60")]})
    await send({"type": "http.response.body", "body": b"{}"})


def _headers(path: str) -> dict[bytes, bytes]:
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": path, "headers": []}
    asyncio.run(NoStoreMiddleware(_app)(scope, receive, send))
    assert [message["type"] for message in sent] == ["http.response.start", "http.response.body"]
    return dict(sent[0]["headers"])


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/models", "/v1/sealed/chat/completions"])
def test_api_answers_are_not_stored(path: str) -> None:
    assert _headers(path)[b"cache-control"] == b"no-store"


@pytest.mark.parametrize("path", ["/v1/sealed/keys", "/", "/chat/", "/v1"])
def test_the_public_key_configuration_and_other_pages_keep_their_own(path: str) -> None:
    assert _headers(path)[b"cache-control"] == b"max-age=60"
