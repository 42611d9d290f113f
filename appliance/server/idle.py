"""Hypercorn's keep-alive deadline, kept with one loop timer per idle period instead of two tasks.

Hypercorn closes a connection that stays idle (no request begun) for
``keep_alive_timeout`` seconds, and every idle connection at once when the
server shuts down.  It does so with a task per idle period, which itself
starts a second one (``asyncio.wait_for`` on the shutdown event): two tasks
made and two cancelled for every request on a kept-alive connection.

:class:`IdleTimerH11Protocol` keeps the same two rules with a timer
(``loop.call_later``) armed when the connection goes idle after an answer and
cancelled when the next request begins, and one watcher per server that
closes the idle connections on shutdown.  The connection's first idle
period, from accept to its first request, stays Hypercorn's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from typing import Any

from hypercorn.events import Closed, Event, RawData, Updated
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.typing import Event as ShutdownEvent
from hypercorn.typing import WorkerContext

__all__ = ["IdleTimerH11Protocol"]


class IdleTimerH11Protocol(H11Protocol):
    """HTTP/1.1 whose kept-alive idle periods are timed by a loop timer."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._server_send = self.send
        self.send = self._send_timing_idle
        self._served = False  # a request has begun: Hypercorn's own idle task is stopped
        self._idle: asyncio.TimerHandle | None = None

    async def _send_timing_idle(self, event: Event) -> None:
        if type(event) is RawData:  # most events: straight on
            await self._server_send(event)
            return
        if isinstance(event, Updated) and self._served:
            if event.idle:
                self._start_idle()
            else:
                self._stop_idle()
            return
        if isinstance(event, Updated):
            self._served = True  # the first request: Hypercorn stops its first idle task
        elif isinstance(event, Closed):
            self._stop_idle()
        await self._server_send(event)

    async def handle(self, event: Event) -> None:
        if isinstance(event, Closed):  # the client went: no deadline left to keep
            self._stop_idle()
        await super().handle(event)

    def _start_idle(self) -> None:
        self._stop_idle()
        loop = asyncio.get_running_loop()
        self._idle = loop.call_later(self.config.keep_alive_timeout, self._expire)
        _idle_connections(self.context).add(self)

    def _stop_idle(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
            _idle_connections(self.context).discard(self)

    def _expire(self) -> None:
        self._stop_idle()
        with contextlib.suppress(RuntimeError):  # the connection's tasks are ending: it is closing already
            self.task_group.spawn(self._close_idle)

    async def _close_idle(self) -> None:
        """What Hypercorn's idle task does: the protocol closes, then the connection."""
        await self.handle(Closed())
        await self._server_send(Closed())


# Per server (its WorkerContext): its idle connections, and the task that closes them on shutdown.
_watched: weakref.WeakKeyDictionary[WorkerContext, tuple[set[IdleTimerH11Protocol], asyncio.Task[None]]] = (
    weakref.WeakKeyDictionary()
)


def _idle_connections(context: WorkerContext) -> set[IdleTimerH11Protocol]:
    """The idle connections of ``context``'s server, closed by one watcher when the server shuts down."""
    watched = _watched.get(context)
    if watched is None:
        idle: set[IdleTimerH11Protocol] = set()
        # The watcher holds the shutdown event, not the context, so that the context stays collectable.
        watcher = asyncio.get_running_loop().create_task(_close_on_shutdown(context.terminated, idle))
        watched = _watched[context] = (idle, watcher)
    return watched[0]


async def _close_on_shutdown(terminated: ShutdownEvent, idle: set[IdleTimerH11Protocol]) -> None:
    await terminated.wait()
    for protocol in list(idle):
        protocol._expire()
