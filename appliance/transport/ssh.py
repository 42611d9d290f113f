"""The SSH transport: a pool of asyncssh connections to the gate's functional account.

Host keys are always checked against the pinned ``known_hosts`` file of the
configuration; there is no setting that turns this off, and an unknown or
changed host key fails with a clear message.  Only the configured ed25519
client key is offered (no agent, no ~/.ssh/config, no passwords).

Each of ``connections`` slots keeps one connection alive, reconnecting with
exponential backoff and jitter.  In mux mode each connection carries one
long-lived ``sluice/1 mux`` channel; in exec mode each request opens a
channel of its own (what the published system did).  While no slot is
connected, requests fail at once with 503 instead of piling up.  New streams
go to the least busy session, never past the gate's stream cap
(:mod:`.spread`).

The gate's stderr is discarded as it arrives (never read into memory, never
logged): unread, it would fill the channel's flow-control window, which it
shares with stdout, and stall every stream of the session while the slot
still looked connected.  Every session is pinged each keepalive round; one
that does not answer within ``ping_timeout`` is wedged, and is closed and
replaced.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from typing import Final

import asyncssh

from policy.errors import TransportError
from policy.events import event_line
from policy.grammar import Call, Mux, StreamCommand, command_line

from ..settings import SshCluster
from .replies import FrameReceiver, GateReply, MuxClient, ping_once
from .spread import StreamSpreader, ping_sessions

__all__ = ["SshTransport", "connect_options", "encryption_algs", "has_aes_instructions"]

log = logging.getLogger("sluice.ssh")

# Reconnection backoff: first retry soon (a restarted sshd is back in well
# under a second), then doubling up to a ceiling, with jitter so that many
# appliance replicas do not reconnect in lockstep.
BACKOFF_START: Final = 0.25
BACKOFF_MAX: Final = 30.0

# asyncssh's own keepalive: a connection that misses this many in a row is dead.
KEEPALIVE_COUNT_MAX: Final = 3

# Where the gate's stderr goes: discarded as it arrives (asyncssh keeps the window open).
GATE_STDERR: Final = asyncssh.DEVNULL

# The ciphers offered, best first.  asyncssh's chacha20-poly1305 makes three cipher objects
# per packet (about 43 us to seal a 256-byte packet on the development machine), while its
# AES-GCM is one OpenSSL call (about 7 us, with AES instructions): AES-GCM comes first where
# the CPU has AES instructions, chacha20-poly1305 first where it has none.  Only AEAD
# ciphers and CTR with an encrypt-then-MAC (asyncssh's defaults) are offered: no CBC.
_AES_FIRST: Final = (
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "chacha20-poly1305@openssh.com",
    "aes256-ctr",
    "aes192-ctr",
    "aes128-ctr",
)
_CHACHA_FIRST: Final = (_AES_FIRST[2], *_AES_FIRST[:2], *_AES_FIRST[3:])


def has_aes_instructions(cpuinfo: str | None = None) -> bool:
    """Whether the CPU has AES instructions (x86 ``aes`` flag, Arm ``aes`` feature), from
    /proc/cpuinfo; False where that cannot be read."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="ascii", errors="replace") as handle:
                cpuinfo = handle.read(1 << 20)
        except OSError:
            return False
    for line in cpuinfo.splitlines():
        name, _, value = line.partition(":")
        if name.strip() in ("flags", "Features"):
            return "aes" in value.split()
    return False


def encryption_algs(aes: bool | None = None) -> list[str]:
    """The ciphers to offer, best first for this CPU (``aes``: whether it has AES instructions)."""
    return list(_AES_FIRST if (has_aes_instructions() if aes is None else aes) else _CHACHA_FIRST)


def connect_options(cluster: SshCluster) -> dict[str, object]:
    """The asyncssh options for ``cluster``: pinned host keys, one key, nothing implicit."""
    return {
        "port": cluster.port,
        "username": cluster.user,
        "known_hosts": str(cluster.known_hosts),  # never None: that would disable verification
        "client_keys": [str(cluster.client_key)],
        "agent_path": None,
        "config": [],  # do not read ~/.ssh/config
        "preferred_auth": "publickey",
        "password_auth": False,  # nosec B105
        "kbdint_auth": False,
        "keepalive_interval": cluster.keepalive_interval,
        "keepalive_count_max": KEEPALIVE_COUNT_MAX,
        "connect_timeout": cluster.connect_timeout,
        "login_timeout": cluster.connect_timeout,
        "encryption_algs": encryption_algs(),
    }


def _describe(exc: BaseException) -> str:
    """A log line for a connection failure, clear about host-key problems."""
    if isinstance(exc, asyncssh.HostKeyNotVerifiable):
        return "host key not verifiable: the server's key is not in the pinned known_hosts file (or it changed)"
    if isinstance(exc, asyncssh.PermissionDenied):
        return "permission denied: the client key is not authorized for the gate account"
    if isinstance(exc, asyncssh.Error):
        return f"ssh error: {exc.reason}"
    return f"{type(exc).__name__}: {exc}"


class _Slot:
    """One connection (and, in mux mode, its one mux channel), kept alive."""

    def __init__(self, index: int, cluster: SshCluster, spreader: StreamSpreader) -> None:
        self.index = index
        self._cluster = cluster
        self._spreader = spreader
        self.connection: asyncssh.SSHClientConnection | None = None
        self.client: MuxClient | None = None
        self._task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()
        self.last_error: str | None = None
        self.connects = 0  # connections made; each after the first is a reconnect
        self.failures = 0  # connection attempts that failed, and connections lost with an error

    @property
    def usable(self) -> bool:
        if self.connection is None:
            return False
        return self.client.alive if self._cluster.mode == "mux" and self.client is not None else self._cluster.mode == "exec"

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        backoff = BACKOFF_START
        cluster = self._cluster
        while True:
            try:
                async with asyncssh.connect(cluster.host, **connect_options(cluster)) as connection:
                    if cluster.mode == "mux":
                        process = await connection.create_process(command_line(Mux()), encoding=None, stderr=GATE_STDERR)
                        self.client = MuxClient(process.stdout, process.stdin, self._spreader.released)
                    self.connection = connection
                    self.last_error = None
                    backoff = BACKOFF_START
                    self.connects += 1
                    self.connected.set()
                    log.info(event_line("ssh_connected", cluster=cluster.name, slot=self.index))
                    if self.client is not None:
                        await self.client.wait_closed()
                    else:
                        await connection.wait_closed()
            except asyncio.CancelledError:
                raise
            except (OSError, asyncssh.Error, TransportError) as exc:
                self.last_error = _describe(exc)
                self.failures += 1
                reason = self.last_error.replace('"', "'")
                log.warning(event_line("ssh_failed", cluster=cluster.name, slot=self.index, reason=reason))
            finally:
                await self._drop()
            delay = backoff * (0.5 + random.random())  # nosec B311
            backoff = min(backoff * 2, BACKOFF_MAX)
            await asyncio.sleep(delay)

    async def _drop(self) -> None:
        client, self.client = self.client, None
        connection, self.connection = self.connection, None
        self.connected.clear()
        if client is not None:
            await client.aclose()
        if connection is not None:
            connection.abort()

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


class SshTransport:
    """Requests to the gate over ``cluster.connections`` SSH connections."""

    def __init__(self, cluster: SshCluster) -> None:
        self._cluster = cluster
        self._spreader = StreamSpreader()
        self._slots = [_Slot(i, cluster, self._spreader) for i in range(cluster.connections)]
        self._next = 0
        self._exec_open = 0
        self._pings: set[asyncio.Task[bool]] = set()

    async def start(self) -> None:
        """Start connecting; wait a little for a first connection, but never fail start-up on it."""
        for slot in self._slots:
            slot.start()
        waits = [asyncio.create_task(slot.connected.wait()) for slot in self._slots]
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._cluster.connect_timeout):
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for wait in waits:
            wait.cancel()

    def _pick(self) -> _Slot:
        slots = self._slots
        for offset in range(len(slots)):
            slot = slots[(self._next + offset) % len(slots)]
            if slot.usable:
                self._next = (slot.index + 1) % len(slots)
                return slot
        raise TransportError()  # 503 cluster_unavailable, at once

    async def request(self, command: StreamCommand, body: bytes) -> GateReply:
        if self._cluster.mode == "mux":
            client = await self._spreader.choose(self._sessions)
            return await client.request(command, body)
        return await self._exec(self._pick(), command, body)

    async def _sessions(self) -> list[MuxClient]:
        return [s.client for s in self._slots if s.usable and s.client is not None]

    async def ping(self, timeout: float) -> bool:
        """Ping every session (exec mode: one channel); True when one answered within ``timeout``."""
        if self._cluster.mode == "exec":
            return await ping_once(self, timeout)
        return await ping_sessions(await self._sessions(), timeout, self._cluster.ping_timeout, self._pings)

    async def _exec(self, slot: _Slot, command: StreamCommand, body: bytes) -> GateReply:
        connection = slot.connection
        if connection is None:
            raise TransportError()
        try:
            process = await connection.create_process(command_line(command), encoding=None, stderr=GATE_STDERR)
        except (OSError, asyncssh.Error):
            raise TransportError("gate_start_failed") from None
        self._exec_open += 1
        receiver = FrameReceiver(process.stdout)
        reply = GateReply(1, lambda _stream: process.close())
        receiver.replies[1] = reply
        if isinstance(command, Call) and body:
            process.stdin.write(body)
        process.stdin.write_eof()
        task = asyncio.create_task(receiver.run())

        def done(_: object) -> None:
            self._exec_open -= 1
            process.close()

        task.add_done_callback(done)
        try:
            await reply.wait_head()
        except BaseException:
            reply.cancel()  # timed out or abandoned before its head: the channel is closed, the gate stops
            raise
        return reply

    def stats(self) -> dict[str, int]:
        usable = [s for s in self._slots if s.usable]
        streams = sum(s.client.open_streams for s in usable if s.client is not None) + self._exec_open
        return {
            "sessions": len(usable),
            "streams": streams,
            "slots": len(self._slots),
            # counters (``_total``): the metrics publish them as such
            "reconnects_total": sum(max(0, s.connects - 1) for s in self._slots),
            "connect_failures_total": sum(s.failures for s in self._slots),
        }

    def status(self) -> list[dict[str, object]]:
        """Per connection: connected or not, and the last failure in words."""
        return [{"slot": s.index, "connected": s.usable, "error": s.last_error} for s in self._slots]

    async def aclose(self) -> None:
        for task in list(self._pings):
            task.cancel()
        await asyncio.gather(*(slot.aclose() for slot in self._slots), return_exceptions=True)
