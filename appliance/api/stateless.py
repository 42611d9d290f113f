"""Answers of stateless routes say so: ``Sluice-Store: false``.

OpenAI's Responses API stores responses by default; Sluice stores nothing
(policy/_responses.py refuses ``store: true`` and forwards ``store: false``).
Every answer of such a route carries the header, so a client that left
``store`` out learns that nothing was kept.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Final

from starlette.requests import Request
from starlette.responses import Response

__all__ = ["STORE_HEADER", "stateless"]

STORE_HEADER: Final = "Sluice-Store"

Handler = Callable[[Request], Awaitable[Response]]


def stateless(handler: Handler) -> Handler:
    """``handler`` with ``Sluice-Store: false`` on every answer."""

    async def handle(request: Request) -> Response:
        response = await handler(request)
        response.headers[STORE_HEADER] = "false"
        return response

    return handle
