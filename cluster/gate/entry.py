"""The ForceCommand entry: ``sluice-cluster gate --config FILE [--local-pipe]``.

The environment is read once into a frozen :class:`GateEnv`; only
``SSH_ORIGINAL_COMMAND`` is ours, every other variable is ignored.  The
process ends as ``sys.exit(run(...))``.  Exit codes: 0 served, 2 violation or
refused, 1 our own failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from policy.bodies import load_routes
from policy.errors import Disallowed
from policy.events import event_line
from policy.frames import FrameWriter, Kind, encode
from policy.grammar import MAX_BODY_BYTES, Call, Mux, SessionCommand, parse_command_line
from policy.loop import run_event_loop

from ..backend_client import BackendPool
from ..config import ClusterConfig, ConfigError, load_config
from ..routing import Router
from ..tls import GateContext
from .coalesce import CoalescingWriter
from .forward import Forwarder
from .session import BODY_IDLE_TIMEOUT, MuxSession
from .sinks import FrameSink

__all__ = ["GateEnv", "run", "main"]

log = logging.getLogger("sluice.gate")

# The one variable the gate reads.  sshd sets it for a forced command; the
# appliance's local-pipe transport sets it the same way.
COMMAND_VARIABLE: Final = "SSH_ORIGINAL_COMMAND"

# The stream id of the only stream of an exec-mode command.
EXEC_STREAM: Final = 1


@dataclass(frozen=True, slots=True)
class GateEnv:
    """What the gate takes from its environment: the command line, if any."""

    command: str | None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> GateEnv:
        return cls(environ.get(COMMAND_VARIABLE))


def _pollable(fd: int) -> bool:
    mode = os.fstat(fd).st_mode
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


class _FileWriter:
    """stdout when it is a file (a person testing by hand): plain blocking writes."""

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(1, view) :]

    async def drain(self) -> None:
        return None

    def close(self) -> None:
        return None

    def is_closing(self) -> bool:
        return False


async def _stdio() -> tuple[asyncio.StreamReader, FrameWriter]:
    """Async streams over fds 0 and 1.  Under sshd and the local pipe both are pipes
    or sockets; a file or /dev/null (a person testing by hand) is read or written
    directly, since the event loop cannot poll it."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=2**20)
    if _pollable(0):
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(0, "rb", buffering=0, closefd=False))
    else:
        with os.fdopen(0, "rb", buffering=0, closefd=False) as stdin:
            reader.feed_data(stdin.read(MAX_BODY_BYTES + 1))
        reader.feed_eof()
    if not _pollable(1):
        return reader, _FileWriter()
    transport, protocol = await loop.connect_write_pipe(
        asyncio.streams.FlowControlMixin, os.fdopen(1, "wb", buffering=0, closefd=False)
    )
    # Frames written in one turn of the loop go out in one write (see .coalesce).
    return reader, CoalescingWriter(asyncio.StreamWriter(transport, protocol, None, loop), loop)


async def _read_exec_body(reader: asyncio.StreamReader, length: int) -> bytes:
    """Exactly ``length`` bytes, then end of input; anything else is a violation."""
    try:
        async with asyncio.timeout(BODY_IDLE_TIMEOUT):
            body = await reader.readexactly(length)
            trailing = await reader.read(1)
    except asyncio.IncompleteReadError:
        raise Disallowed("body_short") from None
    except TimeoutError:
        raise Disallowed("body_timeout") from None
    if trailing:
        raise Disallowed("body_overrun")
    return body


async def _serve(config: ClusterConfig, command: SessionCommand) -> int:
    reader, writer = await _stdio()
    pool = BackendPool(connect_timeout=config.gate.connect_timeout, tls=GateContext(config.gate.tls))
    forwarder = Forwarder(config, load_routes(), Router(config), pool)
    try:
        if isinstance(command, Mux):
            return await MuxSession(forwarder, reader, writer).run()
        body = b""
        if isinstance(command, Call):
            if command.length > forwarder.max_body(command):
                raise Disallowed("body_length")
            body = await _read_exec_body(reader, command.length)
        sink = FrameSink(writer.write, writer.drain, EXEC_STREAM)
        await forwarder.serve(command, body, sink)
        if isinstance(writer, CoalescingWriter):
            writer.flush()  # the whole answer to the transport before the end, not only up to its bound
        await writer.drain()
        return 0
    except Disallowed as exc:
        log.warning(event_line("violation", code=exc.code))
        writer.write(encode(Kind.GOAWAY, 0, exc.code.encode()))
        with contextlib.suppress(Exception):
            await writer.drain()
        return 2
    finally:
        await forwarder.aclose()
        with contextlib.suppress(Exception):
            writer.close()


def _refuse(code: str) -> int:
    """Answer a refused command line: GOAWAY on stdout, nothing echoed."""
    log.warning(event_line("violation", code=code))
    with contextlib.suppress(OSError):
        os.write(1, encode(Kind.GOAWAY, 0, code.encode()))
    return 2


def run(env: GateEnv, config: ClusterConfig, local_pipe: bool) -> int:
    """Serve the command in ``env``; the return value is the exit status."""
    if env.command is None:
        # Not a forced command (and no local pipe): a login shell, sftp, or a
        # person running the program by hand.
        return _refuse("not_forced_command" if not local_pipe else "no_command")
    try:
        command = parse_command_line(env.command)
    except Disallowed as exc:
        return _refuse(exc.code)
    # uvloop only on pipes or sockets (sshd, the local pipe): it aborts the process on a file or /dev/null.
    return run_event_loop(_serve(config, command), allow_uvloop=_pollable(0) and _pollable(1))


def main(argv: list[str]) -> int:
    """``sluice-cluster gate``: parse our own arguments (set by the operator), then run."""
    local_pipe = "--local-pipe" in argv
    args = [a for a in argv if a != "--local-pipe"]
    if len(args) != 2 or args[0] != "--config":
        print("usage: sluice-cluster gate --config FILE [--local-pipe]", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    try:
        config = load_config(args[1])
    except ConfigError as exc:
        log.error("%s", exc)
        return 1
    return run(GateEnv.from_environ(os.environ), config, local_pipe)
