"""The embedded default: the gate as a child process, spoken to over its stdin and stdout.

The child gets the same command line as over SSH, in ``SSH_ORIGINAL_COMMAND``,
and the same bytes on its pipes.  Mux mode keeps ``sessions`` long-lived
children and spreads requests over them (:mod:`.spread`: the least busy,
never past the gate's stream cap); a child that dies, or does not answer its
ping in time, is replaced on the next request.  Exec mode starts one child
per request, as the published system did over SSH.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Sequence
from typing import Final

from policy.errors import TransportError
from policy.grammar import Call, Mux, StreamCommand, command_line

from .replies import FrameReceiver, GateReply, MuxClient, ping_once
from .spread import PING_DEADLINE, StreamSpreader, ping_sessions

__all__ = ["LocalPipeTransport"]

# Variables the gate child inherits.  The gate reads only its own, but a
# smaller environment is less to reason about.
_INHERITED: Final = ("PATH", "HOME", "LANG", "LC_ALL", "PYTHONPATH", "VIRTUAL_ENV", "TMPDIR")

# How long a closing child may take before it is killed.
STOP_GRACE: Final = 5.0


class _Child:
    def __init__(self, process: asyncio.subprocess.Process, client: MuxClient) -> None:
        self.process = process
        self.client = client

    @property
    def alive(self) -> bool:
        return self.process.returncode is None and self.client.alive

    async def aclose(self) -> None:
        await self.client.aclose()
        await _reap(self.process)


async def _reap(process: asyncio.subprocess.Process) -> None:
    if process.stdin is not None:
        process.stdin.close()
    try:
        await asyncio.wait_for(process.wait(), STOP_GRACE)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()


def _pipes(process: asyncio.subprocess.Process) -> tuple[asyncio.StreamWriter, asyncio.StreamReader]:
    if process.stdin is None or process.stdout is None:
        raise TransportError("gate_start_failed")
    return process.stdin, process.stdout


class LocalPipeTransport:
    """Runs ``gate_argv`` (which must include ``--local-pipe``) as the gate."""

    def __init__(
        self,
        gate_argv: Sequence[str],
        mode: str = "mux",
        sessions: int = 1,
        spreader: StreamSpreader | None = None,
        ping_deadline: float = PING_DEADLINE,
    ) -> None:
        if mode not in ("mux", "exec"):
            raise ValueError("mode must be 'mux' or 'exec'")
        self._argv = tuple(gate_argv)
        self._mode = mode
        self._children: list[_Child | None] = [None] * max(1, sessions)
        self._locks = [asyncio.Lock() for _ in self._children]
        self._spreader = spreader or StreamSpreader()
        self._ping_deadline = ping_deadline
        self._pings: set[asyncio.Task[bool]] = set()
        self._reaping: set[asyncio.Task[None]] = set()
        self._exec_running: set[asyncio.subprocess.Process] = set()
        self._closed = False
        self._respawns = 0  # mux gates started again after one ended (the pipe's "reconnects")

    async def _spawn(self, command: str) -> asyncio.subprocess.Process:
        env = {k: os.environ[k] for k in _INHERITED if k in os.environ}
        env["SSH_ORIGINAL_COMMAND"] = command
        try:
            return await asyncio.create_subprocess_exec(
                *self._argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                env=env,
                limit=2**20,
            )
        except OSError:
            raise TransportError("gate_start_failed") from None

    async def start(self) -> None:
        if self._mode == "mux":
            for index in range(len(self._children)):
                await self._child(index)

    async def _child(self, index: int) -> _Child:
        child = self._children[index]
        if child is not None and child.alive:
            return child
        async with self._locks[index]:
            child = self._children[index]
            if child is not None and child.alive:
                return child
            if self._closed:
                raise TransportError("closing")
            if child is not None:
                self._respawns += 1
                reaping = asyncio.create_task(child.aclose())
                self._reaping.add(reaping)
                reaping.add_done_callback(self._reaping.discard)
            process = await self._spawn(command_line(Mux()))
            stdin, stdout = _pipes(process)
            child = _Child(process, MuxClient(stdout, stdin, self._spreader.released))
            self._children[index] = child
            return child

    async def request(self, command: StreamCommand, body: bytes) -> GateReply:
        if self._closed:
            raise TransportError("closing")
        if self._mode == "exec":
            return await self._exec(command, body)
        client = await self._spreader.choose(self._sessions)
        return await client.request(command, body)

    async def _sessions(self) -> list[MuxClient]:
        """Every session, (re)started where needed."""
        clients = [child.client for child in self._children if child is not None and child.alive]
        if len(clients) == len(self._children):  # all alive: nothing to wait for
            return clients
        return [(await self._child(index)).client for index in range(len(self._children))]

    async def ping(self, timeout: float) -> bool:
        """Ping every session (exec mode: one gate process); True when one answered within ``timeout``."""
        if self._mode == "exec":
            return await ping_once(self, timeout)
        try:
            sessions = await self._sessions()
        except TransportError:
            return False
        return await ping_sessions(sessions, timeout, self._ping_deadline, self._pings)

    async def _exec(self, command: StreamCommand, body: bytes) -> GateReply:
        process = await self._spawn(command_line(command))
        stdin, stdout = _pipes(process)
        self._exec_running.add(process)
        receiver = FrameReceiver(stdout)

        def cancel(_stream: int) -> None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()

        reply = GateReply(1, cancel)
        receiver.replies[1] = reply
        if isinstance(command, Call) and body:
            stdin.write(body)
        stdin.close()
        task = asyncio.create_task(receiver.run())

        def done(_: object) -> None:
            self._exec_running.discard(process)
            asyncio.create_task(_reap(process))

        task.add_done_callback(done)
        try:
            await reply.wait_head()
        except BaseException:
            reply.cancel()  # timed out or abandoned before its head: the gate process is ended too
            raise
        return reply

    def stats(self) -> dict[str, int]:
        live = [c for c in self._children if c is not None and c.alive]
        return {
            "sessions": len(live),
            "streams": sum(c.client.open_streams for c in live) + len(self._exec_running),
            "slots": len(self._children) if self._mode == "mux" else 0,
            "reconnects_total": self._respawns,
        }

    async def aclose(self) -> None:
        self._closed = True
        for task in list(self._pings):
            task.cancel()
        children = [c for c in self._children if c is not None]
        self._children = [None] * len(self._children)
        await asyncio.gather(*(c.aclose() for c in children), *self._reaping, *self._pings, return_exceptions=True)
        for process in list(self._exec_running):
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
