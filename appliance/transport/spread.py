"""Streams spread over a transport's mux sessions, under the gate's cap; every session kept alive and checked.

The gate ends a whole session when it is asked for more than its stream cap
(``MAX_STREAMS`` at the gate), so the appliance never opens more than
:data:`MAX_SESSION_STREAMS` on one session: a new request goes to the live
session with the fewest open streams; when all are full it waits, in a
bounded queue and for a bounded time, for a stream to end, and is otherwise
refused with 503 ``busy`` (``Retry-After``) -- never sent to a full session.

:func:`ping_sessions` pings every session (not one of them): an idle session
that is never pinged is closed by the gate's idle timer, and one that does
not answer within its deadline is wedged (a stalled channel, a stopped gate)
and is closed so that its transport replaces it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Final

from policy.errors import Overloaded, TransportError
from policy.events import event_line
from policy.frames import MAX_STREAMS

from .replies import MuxClient

__all__ = ["MAX_SESSION_STREAMS", "QUEUE_MAX", "QUEUE_WAIT", "PING_DEADLINE", "StreamSpreader", "ping_sessions"]

log = logging.getLogger("sluice.transport")

# Streams the appliance opens on one session.  Below the gate's cap by a
# margin: a stream the appliance has cancelled still counts at the gate until
# the gate has read that CANCEL, and a ping must always find room.
MAX_SESSION_STREAMS: Final = MAX_STREAMS * 3 // 4

# Requests that may wait for a free stream, per transport, and for how long:
# a short burst is absorbed; a flood is told to come back (503) instead of
# piling up memory and deadlines.
QUEUE_MAX: Final = 1024
QUEUE_WAIT: Final = 10.0

# A session that does not answer a ping within this many seconds is wedged.
PING_DEADLINE: Final = 15.0


class StreamSpreader:
    """Chooses a session for each new stream: least busy with room, else a bounded wait."""

    def __init__(
        self, max_streams: int = MAX_SESSION_STREAMS, queue_max: int = QUEUE_MAX, queue_wait: float = QUEUE_WAIT
    ) -> None:
        self.max_streams = max_streams
        self.queue_max = queue_max
        self.queue_wait = queue_wait
        self.waiting = 0
        self._room: asyncio.Future[None] | None = None

    def released(self) -> None:
        """A stream ended somewhere: wake the waiters (each looks again)."""
        room, self._room = self._room, None
        if room is not None and not room.done():
            room.set_result(None)

    async def choose(self, sessions: Callable[[], Awaitable[Sequence[MuxClient]]]) -> MuxClient:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.queue_wait
        while True:
            live = [s for s in await sessions() if s.alive]
            if not live:
                raise TransportError()  # 503 cluster_unavailable, at once
            best = min(live, key=lambda s: s.open_streams)
            if best.open_streams < self.max_streams:
                return best
            if self.waiting >= self.queue_max:
                raise Overloaded("busy")
            if self._room is None:
                self._room = loop.create_future()
            self.waiting += 1
            try:
                async with asyncio.timeout_at(deadline):
                    await asyncio.shield(self._room)
            except TimeoutError:
                raise Overloaded("busy") from None
            finally:
                self.waiting -= 1


async def ping_sessions(
    sessions: Sequence[MuxClient], timeout: float, deadline: float, background: set[asyncio.Task[bool]]
) -> bool:
    """Ping every session; True when one answered within ``timeout``.

    Each ping goes on for up to ``deadline`` seconds in the background (held
    in ``background``); a session that has not answered by then is closed."""

    async def check(session: MuxClient) -> bool:
        if await session.ping(deadline):
            return True
        if session.alive:
            log.warning(event_line("session_wedged", deadline=deadline))
        await session.aclose()
        return False

    tasks = [asyncio.create_task(check(s)) for s in sessions]
    for task in tasks:
        background.add(task)
        task.add_done_callback(background.discard)
    if not tasks:
        return False
    done, _ = await asyncio.wait(tasks, timeout=timeout)
    return any(not t.cancelled() and t.exception() is None and t.result() for t in done)
