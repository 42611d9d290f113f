"""The dashboard's numbers: the gate's listing counts as gauges, TTFT at the first content, token rates."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from appliance.api.openai import sse_has_content
from appliance.catalog import ClusterSet, model_info
from appliance.metering import Outcome
from appliance.metrics import Metrics
from appliance.quotas.meter import token_rate
from policy.grammar import Models


class _Reply:
    def __init__(self, data: bytes) -> None:
        self._data = data

    async def read(self) -> bytes:
        return self._data


class ListingTransport:
    """A gate that answers ``models`` with a fixed listing."""

    def __init__(self, listing: object) -> None:
        self.listing = listing

    async def start(self) -> None: ...

    async def aclose(self) -> None: ...

    async def request(self, command: object, body: bytes) -> _Reply:
        assert isinstance(command, Models)
        return _Reply(json.dumps(self.listing).encode())

    def stats(self) -> dict[str, int]:
        return {"sessions": 1, "streams": 0, "slots": 2, "reconnects_total": 3}


LISTING = {
    "object": "list",
    "data": [
        {"id": "chat", "ready": True, "routes": ["chat"], "instances": {"ready": 2, "starting": 1}, "held": 4, "in_flight": 7},
        {"id": "old-gate", "ready": False, "routes": ["chat"]},  # a gate from before the counts
    ],
}


def test_listing_counts_become_gauges() -> None:
    metrics = Metrics()
    clusters = ClusterSet.single(ListingTransport(LISTING), "hpc")  # type: ignore[arg-type]
    text = metrics.render(asyncio.run(metrics.cluster_metrics(clusters))).decode()
    assert 'sluice_model_instances{cluster="hpc",model="chat",state="ready"} 2' in text
    assert 'sluice_model_instances{cluster="hpc",model="chat",state="starting"} 1' in text
    assert 'sluice_gate_held_requests{cluster="hpc",model="chat"} 4' in text
    assert 'sluice_gate_requests_in_flight{cluster="hpc",model="chat"} 7' in text
    assert 'sluice_gate_held_requests{cluster="hpc",model="old-gate"} 0' in text
    assert "# TYPE sluice_gate_reconnects_total counter" in text
    assert 'sluice_gate_reconnects_total{cluster="hpc"} 3' in text
    assert 'sluice_gate_slots{cluster="hpc"} 2' in text
    assert "sluice_accounting_backlog 0" in text


@pytest.mark.parametrize("bad", [-1, True, "3", 1.5, 10**9, None, [1]])
def test_reject_implausible_counts(bad: object) -> None:
    info = model_info({"id": "m", "ready": True, "routes": [], "held": bad, "instances": {"ready": bad}}, "c")
    assert info.held == 0 and info.instances_ready == 0


def test_keepalive_comments_are_not_content() -> None:
    assert not sse_has_content(b": keepalive\n\n")
    assert not sse_has_content(b": keepalive\r\n\r\n")
    assert not sse_has_content(b": keepalive\n\n: keepalive\n\n")
    assert sse_has_content(b'data: {"choices":[]}\n\n')
    assert sse_has_content(b': keepalive\n\ndata: {"x":1}\n\n')


def test_token_rate() -> None:
    assert token_rate(Outcome(200, 10, 50, latency=3.0, first_token=0.5)) == 20.0
    assert token_rate(Outcome(200, 10, 50, latency=2.0)) == 25.0
    assert token_rate(Outcome(200, 10, 0, latency=2.0)) is None
    assert token_rate(Outcome(500, 10, 50, latency=2.0)) is None
    assert token_rate(Outcome(200, 10, 50, latency=1.0, first_token=1.0)) is None


class _Ticket:
    headers: dict[str, str] = {}

    def __init__(self) -> None:
        self.outcome: Outcome | None = None

    async def settle(self, outcome: Outcome) -> None:
        self.outcome = outcome


def test_time_to_first_token_of_a_held_stream_starts_at_its_first_content() -> None:
    """A held stream gets its HEAD and keepalive comments at once; the first token comes later."""
    from appliance.api.openai import _relay
    from appliance.transport.replies import GateReply

    async def scenario() -> tuple[Outcome, list[bytes]]:
        started = time.monotonic()
        reply = GateReply(1, lambda _: None)
        ticket = _Ticket()
        reply.on_head(b"200 sse")
        reply.on_body(b": keepalive\n\n")

        async def gate() -> None:
            await asyncio.sleep(0.3)
            reply.on_body(b": keepalive\n\n")
            await asyncio.sleep(0.3)
            reply.on_body(b'data: {"choices":[{"delta":{"content":"hi"}}]}\n\n')
            reply.on_end(b'{"prompt_tokens":1,"completion_tokens":1}')

        task = asyncio.create_task(gate())
        pieces = [piece async for piece in _relay(reply, ticket, started)]  # type: ignore[arg-type]
        await task
        assert ticket.outcome is not None
        return ticket.outcome, pieces

    outcome, pieces = asyncio.run(scenario())
    assert pieces[0] == b": keepalive\n\n" and len(pieces) == 3
    assert outcome.first_token is not None and outcome.first_token >= 0.55  # not the keepalive's ~0 s
