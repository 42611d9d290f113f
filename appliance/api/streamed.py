"""A streamed answer sent from the request's own task.

Starlette's ``StreamingResponse`` (under an ASGI server older than spec 2.4,
as Hypercorn is) runs the body in an anyio task group beside a task that
waits for the client to go away: a task group, a cancel scope and a second
task for every streamed answer.  :class:`StreamedAnswer` does the same with
less: the body is sent from the request's task, and one listener task waits
for ``http.disconnect`` and then cancels the request's task, exactly once;
that cancellation is taken back (``uncancel``) and the answer ends quietly,
as Starlette's does.  The body iterator sees the cancellation where it waits,
or is closed at once if it was cut off while its piece was being sent (the
relay settles its ticket as a client gone, 499, either way).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

__all__ = ["StreamedAnswer"]


class StreamedAnswer(Response):
    """``chunks`` as a streamed HTTP answer; ends early, quietly, when the client goes away."""

    def __init__(
        self,
        chunks: AsyncIterator[bytes],
        status_code: int,
        media_type: str,
        headers: Mapping[str, str] | None = None,
        unread: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.body_iterator = chunks
        # Awaited when the answer ends before the first piece was asked for (the client gone
        # while the head was being sent): a body iterator that never ran has nothing to clean up
        # with, so its owner is told here.
        self._unread = unread
        self.status_code = status_code
        self.media_type = media_type
        self.background = None
        self.init_headers(headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        answering = asyncio.current_task()
        if answering is None:  # pragma: no cover (an ASGI app always runs in a task)
            raise RuntimeError("StreamedAnswer runs in a task")
        gone = False

        async def listen() -> None:
            nonlocal gone
            while (await receive())["type"] != "http.disconnect":
                pass
            gone = True
            answering.cancel()

        listener = asyncio.create_task(listen())
        reading = False
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            reading = True
            async for chunk in self.body_iterator:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if not gone:
                raise  # cancelled by someone else (the server stopping): theirs to handle
            answering.uncancel()  # ours: the client went away, and the answer ends here
        finally:
            listener.cancel()
            listener.add_done_callback(_retrieve)
            # A body cut off in send() is closed now (its clean-up, the relay's settling, runs
            # here), not whenever the collector finalizes it; a finished one closes at once.
            close = getattr(self.body_iterator, "aclose", None)
            if close is not None:
                await close()
            if not reading and self._unread is not None:
                await asyncio.shield(self._unread())


def _retrieve(task: asyncio.Task[None]) -> None:
    """Read a finished listener's outcome, so that a receive() that failed is not reported as unretrieved."""
    if not task.cancelled():
        task.exception()
