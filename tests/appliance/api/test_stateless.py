"""Answer headers (appliance/api/stateless.py): a stateless route says it stored nothing, and
an answer names the revision and server version that produced it."""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import Response

from appliance.api.stateless import (
    BACKEND_VERSION_HEADER,
    REVISION_HEADER,
    STORE_HEADER,
    produced_by_headers,
    stateless,
)


def test_every_answer_of_a_stateless_route_says_nothing_was_stored() -> None:
    async def handler(request: Request) -> Response:
        return Response(b"{}", status_code=400 if request.query_params.get("bad") else 200)

    route = stateless(handler)
    for query in (b"", b"bad=1"):  # refusals too
        request = Request({"type": "http", "method": "POST", "path": "/v1/responses", "headers": [], "query_string": query})
        assert asyncio.run(route(request)).headers[STORE_HEADER] == "false"


def test_produced_by_names_what_the_gate_said_and_nothing_else() -> None:
    assert produced_by_headers({"revision": "r-1", "backend_version": "0.9.1"}) == {
        REVISION_HEADER: "r-1",
        BACKEND_VERSION_HEADER: "0.9.1",
    }
    assert produced_by_headers({"backend_version": "0.9.1"}) == {BACKEND_VERSION_HEADER: "0.9.1"}
    assert produced_by_headers({"host": "10.0.0.1"}) == {}
