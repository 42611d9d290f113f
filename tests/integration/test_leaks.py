"""A client that reads slowly or goes away mid-stream frees everything on every hop.

The appliance runs in-process (Hypercorn on a loopback port) with the gate as
a real child process and real stand-in model servers behind it, so the test
can look at each hop: the appliance's open streams and tasks, the gate's
requests in flight and backend connections, the model server's active
generations.
"""

from __future__ import annotations

import asyncio
import json

import httpx2
import pytest
from hypercorn.asyncio import serve
from hypercorn.config import Config

from appliance.app import Appliance, create_app
from appliance.auth.api_keys import ApiKeyAuthenticator, ApiKeyStore
from appliance.auth.base import UnsafeAllowAll
from appliance.catalog import ClusterSet
from appliance.transport.local import LocalPipeTransport
from policy.grammar import Ping
from tests.conftest import Cluster, free_port

pytestmark = pytest.mark.integration

KEY = "sk-leak-test-" + "x" * 20
LONG = {
    "model": "standin-chat",
    "messages": [{"role": "user", "content": "tell a long story"}],
    "max_tokens": 4000,
    "stream": True,
}


async def _gate_in_flight(appliance: Appliance) -> dict[str, object]:
    reply = await appliance.clusters.transport("local").request(Ping(), b"")
    return json.loads(await reply.read())


async def _settled(appliance: Appliance, cluster: Cluster, baseline_tasks: int) -> dict[str, object]:
    """Poll every hop until nothing of the abandoned request is left (or time runs out)."""
    state: dict[str, object] = {}
    async with httpx2.AsyncClient() as client:
        for _ in range(100):
            streams = appliance.clusters.stats()["streams"]
            tasks = len(asyncio.all_tasks()) - baseline_tasks
            gate = await _gate_in_flight(appliance)
            stats = (
                await client.get(f"{cluster.chat.url}/stats", headers={"Authorization": f"Bearer {cluster.chat.token}"})
            ).json()
            state = {
                "appliance_streams": streams,
                "gate_in_flight": gate["in_flight"],
                "backend_active": stats["active_requests"],
                "tasks": max(tasks, 0),
            }
            if state == {"appliance_streams": 0, "gate_in_flight": 0, "backend_active": 0, "tasks": 0}:
                return state
            await asyncio.sleep(0.1)
    return state


async def _scenario(cluster: Cluster, mode: str) -> None:
    keys = ApiKeyStore()
    keys.add(KEY, "leak", "leak")
    appliance = Appliance(
        ClusterSet.single(LocalPipeTransport(cluster.gate_argv(), mode=mode)),
        ApiKeyAuthenticator(keys),
        UnsafeAllowAll(),
        keepalive_interval=60,
    )
    port = free_port()
    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.accesslog = None
    stop = asyncio.Event()
    server = asyncio.create_task(serve(create_app(appliance), config, shutdown_trigger=stop.wait))  # type: ignore[arg-type]
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    headers = {"Authorization": f"Bearer {KEY}"}
    try:
        async with httpx2.AsyncClient(timeout=30) as client:
            for _ in range(100):
                try:
                    if (await client.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200:
                        break
                except httpx2.ConnectError:
                    pass
                await asyncio.sleep(0.05)
            await appliance.clusters.refresh()
            # One finished request first, so that lazily made tasks are in the baseline.
            assert (await client.post(url, json={**LONG, "stream": False, "max_tokens": 2}, headers=headers)).status_code == 200
        baseline = len(asyncio.all_tasks())

        # 1. A client that goes away after the first event.
        async with httpx2.AsyncClient(timeout=30) as client:
            async with client.stream("POST", url, json=LONG, headers=headers) as response:
                assert response.status_code == 200
                async for _ in response.aiter_bytes():
                    break
        assert await _settled(appliance, cluster, baseline) == {
            "appliance_streams": 0,
            "gate_in_flight": 0,
            "backend_active": 0,
            "tasks": 0,
        }

        # 2. A slow reader does not hold up others, and frees everything when it leaves.
        async with httpx2.AsyncClient(timeout=30) as slow, httpx2.AsyncClient(timeout=30) as fast:
            async with slow.stream("POST", url, json=LONG, headers=headers) as response:
                chunks = response.aiter_bytes()
                await chunks.__anext__()
                for _ in range(5):
                    quick = await fast.post(url, json={**LONG, "stream": False, "max_tokens": 3}, headers=headers)
                    assert quick.status_code == 200
                    await asyncio.sleep(0.2)
                    await chunks.__anext__()
        assert await _settled(appliance, cluster, baseline) == {
            "appliance_streams": 0,
            "gate_in_flight": 0,
            "backend_active": 0,
            "tasks": 0,
        }
    finally:
        stop.set()
        await asyncio.wait_for(server, 15)
    assert appliance.clusters.stats() == {"sessions": 0, "streams": 0}


@pytest.mark.parametrize("mode", ["mux", "exec"])
def test_disconnect_and_slow_reader_free_every_hop(cluster: Cluster, mode: str) -> None:
    asyncio.run(_scenario(cluster, mode))
