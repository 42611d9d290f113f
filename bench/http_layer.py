"""The appliance's HTTP layer alone: CPU per request through Hypercorn's protocol, the middleware and Starlette.

Drives the real app (``create_app``) through the protocol class Sluice
installs, in process, with no socket and no gate: one kept-alive connection
sends ``POST /v1/chat/completions`` with a JSON body and no API key, which
the app answers 401 at once.  The writes go to a stand-in for Hypercorn's
TCPServer.protocol_send (its lock and its idle task, no socket).  What remains is exactly the HTTP layer's work
(parsing, the front middleware's checks and records, routing, the answer's
head and body), with JSON request logs on (to /dev/null) and metrics.  Run it
from each checkout in turn; CPU time per request is process time, so other
load on the machine matters less than for wall-clock rates.

    .venv/bin/python bench/http_layer.py [--requests 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path.cwd()))
import hypercorn.protocol  # noqa: E402
from hypercorn.app_wrappers import ASGIWrapper  # noqa: E402
from hypercorn.asyncio.task_group import TaskGroup  # noqa: E402
from hypercorn.asyncio.worker_context import AsyncioSingleTask, WorkerContext  # noqa: E402
from hypercorn.events import Closed, Event, RawData, Updated  # noqa: E402
from hypercorn.typing import ConnectionState  # noqa: E402

from appliance.app import Appliance, create_app  # noqa: E402
from appliance.auth.base import Principal  # noqa: E402
from appliance.catalog import ClusterSet  # noqa: E402
from appliance.logs import configure_logging  # noqa: E402
from appliance.metrics import Metrics  # noqa: E402
from appliance.server import hypercorn_config  # noqa: E402
from appliance.settings import ServerSettings  # noqa: E402

BODY = b'{"model":"standin-chat","messages":[{"role":"user","content":"Say hello to the benchmark"}],"max_tokens":8}'
REQUEST = (
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\n\r\n%s" % (len(BODY), BODY)
)


class _Nobody:
    async def authenticate(self, connection: Any) -> Principal | None:
        return None


async def run(requests: int) -> float:
    appliance = Appliance(ClusterSet.single(object()), _Nobody(), metrics=Metrics())  # type: ignore[arg-type]
    app = create_app(appliance)
    config = hypercorn_config(ServerSettings(), "127.0.0.1:8080")
    config.keep_alive_max_requests = requests + 1000  # one connection for the whole run
    answered = asyncio.Event()
    count = 0
    context = WorkerContext(None)
    idle = AsyncioSingleTask()
    lock = asyncio.Lock()

    async def idle_timeout() -> None:
        await asyncio.wait_for(context.terminated.wait(), config.keep_alive_timeout)

    async def sink(event: Event) -> None:
        """What Hypercorn's TCPServer.protocol_send does, less the socket: the writes counted, the idle task kept."""
        nonlocal count
        if isinstance(event, RawData):
            async with lock:
                if event.data.endswith(b"}"):
                    count += 1
                    answered.set()
        elif isinstance(event, Updated):
            if event.idle:
                await idle.restart(group, idle_timeout)
            else:
                await idle.stop()

    async with TaskGroup(asyncio.get_running_loop()) as group:
        protocol = hypercorn.protocol.H11Protocol(  # type: ignore[attr-defined]
            ASGIWrapper(app), config, context, group, ConnectionState({}), False, ("127.0.0.1", 5), ("127.0.0.1", 8080), sink
        )
        await protocol.initiate()
        started = 0.0
        for index in range(requests + 200):
            if index == 200:  # warmed up
                started = time.process_time()
            answered.clear()
            await protocol.handle(RawData(REQUEST))
            await answered.wait()
        used = time.process_time() - started
        await protocol.handle(Closed())
        await idle.stop()
    assert count == requests + 200, count
    return used / requests


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=20000)
    args = parser.parse_args()
    configure_logging("info", open(os.devnull, "w"))  # noqa: SIM115 (the process's log stream)
    per_request = asyncio.run(run(args.requests))
    print(f"{Path.cwd()}: HTTP layer CPU {per_request * 1e6:.1f} us per request ({args.requests} requests, 401 answers)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
