"""The ways from the appliance to the gate: a local pipe (the embedded default) and SSH.

Both carry the same bytes: a command line as ``SSH_ORIGINAL_COMMAND``, then
frames (policy/FRAMES.md).  ``replies`` turns gate frames into per-request
replies; ``local`` spawns the gate as a child process.
"""

from .base import GateTransport
from .replies import GateReply, MuxClient

__all__ = ["GateTransport", "GateReply", "MuxClient"]
