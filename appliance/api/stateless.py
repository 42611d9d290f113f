"""Headers of answers: stateless routes say so (``Sluice-Store: false``); every answer names
what produced it (``Sluice-Model-Revision``, ``Sluice-Backend-Version``).

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

__all__ = ["STORE_HEADER", "REVISION_HEADER", "BACKEND_VERSION_HEADER", "stateless", "produced_by_headers"]

STORE_HEADER: Final = "Sluice-Store"
# What produced an answer (cluster/gate/provenance.py): the model's revision, its server's version.
REVISION_HEADER: Final = "Sluice-Model-Revision"
BACKEND_VERSION_HEADER: Final = "Sluice-Backend-Version"

Handler = Callable[[Request], Awaitable[Response]]


def stateless(handler: Handler) -> Handler:
    """``handler`` with ``Sluice-Store: false`` on every answer."""

    async def handle(request: Request) -> Response:
        response = await handler(request)
        response.headers[STORE_HEADER] = "false"
        return response

    return handle


def produced_by_headers(produced_by: dict[str, str]) -> dict[str, str]:
    """The headers that name what produced an answer (checked strings from the gate)."""
    headers = {}
    if "revision" in produced_by:
        headers[REVISION_HEADER] = produced_by["revision"]
    if "backend_version" in produced_by:
        headers[BACKEND_VERSION_HEADER] = produced_by["backend_version"]
    return headers
