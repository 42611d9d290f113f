"""Hypercorn's HTTP/1.1 protocol, writing a response's head together with what follows it.

Hypercorn writes every h11 event on its own: the response head, the body,
the end of the message, each one ``write`` (a ``send`` system call on the
socket) and one ``drain``.  A plain answer (one that says its length) is
all three at once, so :class:`CoalescingH11Protocol` holds its head back and
sends it in the same write as the body (or the end of the message) when
they come in the same turn of the event loop; a head with nothing after it
in that turn goes out on its own on the next turn.  A streamed answer (no
length: chunked) is written as before, its head at once and each chunk the
moment it is produced, so nothing a client waits for is held.

Every event the protocol sends passes the held head first (the wrapped
``send``), so the bytes on the wire and their order are Hypercorn's own,
whatever path an event takes (an error answer, a close).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import h11
from hypercorn.events import Event, RawData
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.typing import H11SendableEvent

__all__ = ["CoalescingH11Protocol"]


class CoalescingH11Protocol(H11Protocol):
    """HTTP/1.1 whose response head goes out in one write with the body that follows it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._write = self.send
        self.send = self._send_after_held
        self._held = b""
        self._flush_due = False

    async def _send_h11_event(self, event: H11SendableEvent) -> None:
        try:
            data = self.connection.send(event) or b""
        except h11.LocalProtocolError:
            if self.connection.their_state != h11.ERROR:
                raise
            return
        if type(event) is h11.Response and _sized(event):
            self._hold(data)
        elif self._held:
            await self._send_after_held(RawData(data=data))
        elif data:
            await self._write(RawData(data=data))  # a stream's chunk: nothing held, straight on

    async def _send_after_held(self, event: Event) -> None:
        """Send ``event``, after (or, raw bytes, together with) the head held back."""
        held = self._held
        if held:
            self._held = b""
            if isinstance(event, RawData):
                event = RawData(data=held + event.data)
            else:
                await self._write(RawData(data=held))
        if not isinstance(event, RawData) or event.data:
            await self._write(event)

    def _hold(self, data: bytes) -> None:
        self._held += data
        if not self._flush_due:
            self._flush_due = True
            asyncio.get_running_loop().call_soon(self._flush_held)

    def _flush_held(self) -> None:
        """Next turn of the loop: a head still held has nothing after it yet, so it goes alone."""
        self._flush_due = False
        if self._held:
            # A connection already closing takes no new task; its close sends the head first.
            with contextlib.suppress(RuntimeError):
                self.task_group.spawn(self._send_after_held, RawData(data=b""))


def _sized(response: h11.Response) -> bool:
    """Whether the answer says its length: a whole body to come at once, not a stream."""
    return any(name.lower() == b"content-length" for name, _ in response.headers.raw_items())
