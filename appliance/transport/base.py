"""What the API needs from a transport to the gate."""

from __future__ import annotations

from typing import Protocol

from policy.grammar import StreamCommand

from .replies import GateReply

__all__ = ["GateTransport"]


class GateTransport(Protocol):
    """Sends one stream command (and its body) to a gate and returns its reply."""

    async def start(self) -> None: ...

    async def aclose(self) -> None: ...

    async def request(self, command: StreamCommand, body: bytes) -> GateReply:
        """The reply once its head (or error) arrived; raises SluiceError otherwise."""
        ...

    async def ping(self, timeout: float) -> bool:
        """Ping every session (each must stay alive and answer); True when one answered within ``timeout``."""
        ...

    def stats(self) -> dict[str, int]:
        """Open sessions and streams, for readiness and leak checks."""
        ...
