"""One HTTP/1.1 connection to a Hypercorn protocol class, driven by hand: bytes in, its writes out.

No socket: :class:`Wire` feeds the protocol raw bytes as the server's read
loop would, and records every write and close it asks for, in order, each
as it is asked for (``b"..."`` for a write, :data:`CLOSE` for a close).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from types import TracebackType
from typing import Any, Final

from hypercorn.app_wrappers import ASGIWrapper
from hypercorn.asyncio.task_group import TaskGroup
from hypercorn.asyncio.worker_context import WorkerContext
from hypercorn.config import Config
from hypercorn.events import Closed, Event, RawData, Updated
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.typing import ConnectionState

CLOSE: Final = "close"
ASGIApp = Callable[[MutableMapping[str, Any], Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]


def quiet_config() -> Config:
    """Hypercorn's defaults without the Date header, so that two runs write the same bytes."""
    config = Config()
    config.include_date_header = False
    return config


class Wire:
    def __init__(
        self, protocol: type[H11Protocol], app: ASGIApp, config: Config | None = None, context: WorkerContext | None = None
    ) -> None:
        self.protocol_class = protocol
        self.app = app
        self.config = config or quiet_config()
        self.writes: list[bytes | str] = []
        self.updates: list[bool] = []
        self.context = context or WorkerContext(None)  # one per server
        self._group = TaskGroup(asyncio.get_running_loop())

    async def __aenter__(self) -> Wire:
        await self._group.__aenter__()
        self.protocol = self.protocol_class(
            ASGIWrapper(self.app),  # type: ignore[arg-type]
            self.config,
            self.context,
            self._group,
            ConnectionState({}),
            False,
            ("127.0.0.1", 50000),
            ("127.0.0.1", 8080),
            self._record,
        )
        await self.protocol.initiate()
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        await self.protocol.handle(Closed())
        await self._group.__aexit__(kind, error, tb)  # type: ignore[arg-type]

    async def _record(self, event: Event) -> None:
        if isinstance(event, RawData):
            self.writes.append(event.data)
        elif isinstance(event, Closed):
            self.writes.append(CLOSE)
        elif isinstance(event, Updated):
            self.updates.append(event.idle)

    async def feed(self, data: bytes) -> None:
        await self.protocol.handle(RawData(data=data))

    @staticmethod
    async def settle(turns: int = 50) -> None:
        """Let every task run as far as it can."""
        for _ in range(turns):
            await asyncio.sleep(0)

    @property
    def sent(self) -> bytes:
        return b"".join(w for w in self.writes if isinstance(w, bytes))
