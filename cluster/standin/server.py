"""The stand-in's HTTP/1.1 server: an asyncio.Protocol over :mod:`cluster._http1`.

Keep-alive and pipelining (one response at a time, in order); strict limits on
the head (``MAX_HEAD_BYTES``) and the body (:data:`MAX_BODY_BYTES`); request
bodies must carry Content-Length (411 otherwise).  A peer that breaks the
syntax gets a short JSON error and the connection is closed.

Streams are sent by one task per connection, paced by the token delay; when
the client goes away the task is cancelled at once, so generation stops and
``active_requests`` drops.  A client that half-closes (shuts its write side)
counts as gone.

Nothing here logs a prompt, a completion or a header value; the only log
line is the type name of an unexpected internal error.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
from collections.abc import Callable
from typing import cast

from cluster._http1 import (
    LAST_CHUNK,
    MAX_HEAD_BYTES,
    RemoteProtocolError,
    RequestHead,
    build_response_head,
    encode_chunk,
    find_head_end,
    parse_request_head,
)
from cluster.standin._api import EventStream, Reply, StandinApp, StandinConfig, error_reply
from policy.loop import run_event_loop

__all__ = [
    "MAX_BODY_BYTES",
    "KEEPALIVE_TIMEOUT",
    "StandinConfig",
    "StandinServer",
    "serve",
    "run",
]

log = logging.getLogger("cluster.standin")

MAX_BODY_BYTES = 8 * 1024 * 1024
"""Largest request body: long chat histories and embedding batches fit in a
few MiB; more than this is a mistake or an attack on the stand-in's memory."""

KEEPALIVE_TIMEOUT = 30.0
"""An idle connection is closed after this many seconds, and so is one whose
next request has not fully arrived by then (a slow-drip head or body)."""

MAX_PIPELINED_BYTES = MAX_HEAD_BYTES + MAX_BODY_BYTES
"""Bytes buffered from a client while its current stream is still being sent
(room for one whole next request); beyond this, reading pauses."""

_BODY_METHODS = ("POST", "PUT", "PATCH")
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def _expects_continue(head: RequestHead) -> bool:
    """``Expect: 100-continue`` (curl sends it for large bodies); other expectations are ignored."""
    return any(name == b"expect" and value.lower() == b"100-continue" for name, value in head.headers)


_STREAM_EXTRA = (("cache-control", "no-cache"),)


class _HttpConnection(asyncio.Protocol):
    """One client connection."""

    def __init__(self, server: StandinServer) -> None:
        self._server = server
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._head: RequestHead | None = None
        self._stream_task: asyncio.Task[None] | None = None
        self._closing = False
        self._idle_timer: asyncio.TimerHandle | None = None
        self._write_paused = False
        self._drain: asyncio.Future[None] | None = None
        self._read_paused = False

    # ---------------------------------------------------------------- asyncio side

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # a stream connection's transport is a Transport
        self._server._connections.add(self)
        self._arm_idle()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        self._server._connections.discard(self)
        self._disarm_idle()
        if self._stream_task is not None:
            self._stream_task.cancel()
        self._wake_drain()

    def eof_received(self) -> bool:
        return False  # a half-closed client is gone: close, stop any stream

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake_drain()

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        self._buf += data
        if self._stream_task is not None:
            if len(self._buf) > MAX_PIPELINED_BYTES and not self._read_paused and self._transport is not None:
                self._read_paused = True
                self._transport.pause_reading()
            return
        self._process()

    # ---------------------------------------------------------------- requests

    def _process(self) -> None:
        """Answer every complete request in the buffer, in order."""
        while not self._closing and self._stream_task is None:
            head = self._head
            if head is None:
                if not self._buf:
                    self._arm_idle()
                    return
                try:
                    end = find_head_end(self._buf)
                    if end < 0:
                        self._arm_idle()
                        return
                    head = parse_request_head(self._buf[:end])
                except RemoteProtocolError as exc:
                    self._fail(exc.status, exc.code)
                    return
                del self._buf[:end]
                if head.chunked:
                    self._fail(411, "length_required")
                    return
                if head.content_length is None and head.method in _BODY_METHODS:
                    self._fail(411, "length_required")
                    return
                if (head.content_length or 0) > MAX_BODY_BYTES:
                    self._fail(413, "body_too_large")
                    return
                self._head = head
                if len(self._buf) < (head.content_length or 0) and _expects_continue(head):
                    self._write(_CONTINUE)
            need = head.content_length or 0
            if len(self._buf) < need:
                self._arm_idle()
                return
            self._disarm_idle()
            body = bytes(self._buf[:need])
            del self._buf[:need]
            self._head = None
            self._respond(head, body)

    def _respond(self, head: RequestHead, body: bytes) -> None:
        server = self._server
        app = server.app
        path = head.path
        try:
            authorization = head.get(b"authorization")
        except RemoteProtocolError as exc:
            self._fail(exc.status, exc.code)
            return
        counted = app.is_model_route(path)
        try:
            result = app.handle(head.method, path, authorization, body)
        except Exception as exc:  # a bug of ours: log its type only, never content
            log.error("internal error: %s", type(exc).__name__)
            self._fail(500, "internal")
            return
        if isinstance(result, Reply):
            self._write_reply(result, close=not head.keep_alive)
            if counted and result.status == 200:
                server._served += 1
            return
        self._start_stream(result, keep_alive=head.keep_alive, counted=counted)

    def _write_reply(self, reply: Reply, *, close: bool) -> None:
        transport = self._transport
        if transport is None:
            return
        head = build_response_head(reply.status, reply.content_type, len(reply.body), close=close, extra=reply.extra)
        transport.write(head + reply.body)
        if close:
            self._closing = True
            self._disarm_idle()
            transport.close()

    def _write(self, data: bytes) -> None:
        if self._transport is not None:
            self._transport.write(data)

    def _fail(self, status: int, code: str) -> None:
        """Answer a request we cannot parse or accept, then close."""
        self._write_reply(error_reply(status, code), close=True)

    # ---------------------------------------------------------------- streams

    def _start_stream(self, stream: EventStream, *, keep_alive: bool, counted: bool) -> None:
        head = build_response_head(200, "text/event-stream", None, chunked=True, close=not keep_alive, extra=_STREAM_EXTRA)
        delay = self._server.app.config.token_delay
        if delay <= 0:
            # nothing to pace: one write, no task
            parts = [head]
            parts.extend(encode_chunk(event) for event in stream.token_events)
            parts.extend(encode_chunk(event) for event in stream.tail)
            parts.append(LAST_CHUNK)
            if self._transport is not None:
                self._transport.write(b"".join(parts))
            if counted:
                self._server._served += 1
            if not keep_alive:
                self._close()
            return
        self._stream_task = self._loop.create_task(self._stream(head, stream, delay, keep_alive, counted))

    async def _stream(self, head: bytes, stream: EventStream, delay: float, keep_alive: bool, counted: bool) -> None:
        server = self._server
        transport = self._transport
        if transport is None:
            return
        server._active += 1
        try:
            transport.write(head)
            for event in stream.token_events:
                await asyncio.sleep(delay)
                if self._closing:
                    return
                transport.write(encode_chunk(event))
                if self._write_paused:
                    await self._wait_drain()
            if self._closing:
                return
            transport.write(b"".join([encode_chunk(event) for event in stream.tail]) + LAST_CHUNK)
            if counted:
                server._served += 1
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug of ours: log its type only, never content
            log.error("internal error in stream: %s", type(exc).__name__)
            transport.abort()
            return
        finally:
            server._active -= 1
            self._stream_task = None
        if not keep_alive:
            self._close()
            return
        if self._read_paused and not self._closing:
            self._read_paused = False
            transport.resume_reading()
        self._process()

    async def _wait_drain(self) -> None:
        if self._closing:
            return
        self._drain = self._loop.create_future()
        try:
            await self._drain
        finally:
            self._drain = None

    def _wake_drain(self) -> None:
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    # ---------------------------------------------------------------- lifetime

    def _arm_idle(self) -> None:
        if self._idle_timer is None and not self._closing:
            self._idle_timer = self._loop.call_later(KEEPALIVE_TIMEOUT, self._close)

    def _disarm_idle(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    def _close(self) -> None:
        self._closing = True
        self._disarm_idle()
        if self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        """Drop the connection now (server shutdown)."""
        self._closing = True
        self._disarm_idle()
        if self._transport is not None:
            self._transport.abort()


class StandinServer:
    """A stand-in OpenAI-compatible model server on one listening socket."""

    def __init__(self, config: StandinConfig) -> None:
        self.app = StandinApp(config, self.stats)
        self._connections: set[_HttpConnection] = set()
        self._server: asyncio.Server | None = None
        self._active = 0
        self._served = 0

    async def start(self, host: str, port: int, tls: ssl.SSLContext | None = None) -> int:
        """Listen on ``host``:``port`` (0: any free port); returns the port.

        With ``tls`` (:func:`cluster.tls.server_context`, as vLLM's ``--ssl-*``
        flags) every connection is TLS: a client without an accepted
        certificate fails the handshake and gets no byte of HTTP, on any path.
        """
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _HttpConnection(self), host, port, reuse_address=True, backlog=1024, ssl=tls
        )
        return int(self._server.sockets[0].getsockname()[1])

    def stats(self) -> dict[str, int]:
        """``active_requests``: model requests being answered (streams in
        flight); ``open_connections``: client connections, the asking one
        included; ``served``: model requests answered in full with 200."""
        return {
            "active_requests": self._active,
            "open_connections": len(self._connections),
            "served": self._served,
        }

    async def aclose(self) -> None:
        """Stop listening and drop every connection."""
        if self._server is not None:
            self._server.close()
        for conn in list(self._connections):
            conn.abort()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        await asyncio.sleep(0)  # let the transports run connection_lost


async def serve(
    config: StandinConfig, host: str, port: int, on_ready: Callable[[int], None], tls: ssl.SSLContext | None = None
) -> None:
    """Serve until SIGTERM or SIGINT; ``on_ready(port)`` once listening."""
    loop = asyncio.get_running_loop()
    server = StandinServer(config)
    bound = await server.start(host, port, tls)
    stop = asyncio.Event()
    signals = (signal.SIGTERM, signal.SIGINT)
    for signum in signals:
        loop.add_signal_handler(signum, stop.set)
    try:
        on_ready(bound)
        await stop.wait()
    finally:
        for signum in signals:
            loop.remove_signal_handler(signum)
        await server.aclose()


def run(config: StandinConfig, host: str, port: int, on_ready: Callable[[int], None], tls: ssl.SSLContext | None = None) -> None:
    """Run :func:`serve` on a fresh event loop (uvloop's when importable)."""
    run_event_loop(serve(config, host, port, on_ready, tls))
