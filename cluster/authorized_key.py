"""The authorized_keys line that locks the appliance's key to the gate.

``restrict`` turns off every forwarding, the pty, X11, agent forwarding and
user rc; ``command=`` forces the gate whatever the client asks for (a shell,
sftp, any command: the gate sees it as ``SSH_ORIGINAL_COMMAND`` and refuses
anything outside the grammar); ``from=`` optionally pins the source addresses.
"""

from __future__ import annotations

import ipaddress
import re
import shlex
from pathlib import Path
from typing import Final

from policy.errors import InternalError

__all__ = ["authorized_key_line", "default_gate_command", "KeyLineError", "ISOLATED"]

# Python's isolated mode, for every process of the cluster side that sshd,
# the gate or an operator's crontab starts (see :func:`default_gate_command`).
ISOLATED: Final = ("-I",)

# OpenSSH public key line: type, base64 body, optional comment.
_PUBKEY: Final = re.compile(
    r"(ssh-ed25519|ecdsa-sha2-nistp256|ecdsa-sha2-nistp384|ecdsa-sha2-nistp521) ([A-Za-z0-9+/]+={0,3})(?: [^\n]*)?"
)


class KeyLineError(InternalError, ValueError):
    """The public key or an option cannot go into a safe authorized_keys line."""


def authorized_key_line(pubkey: str, gate_command: str, sources: list[str] | None = None) -> str:
    """One authorized_keys line: ``restrict,command="<gate>"[,from="..."] <type> <key> sluice-appliance``."""
    match = _PUBKEY.fullmatch(pubkey.strip())
    if match is None:
        raise KeyLineError("the public key must be one ssh-ed25519 or ecdsa key line (RSA is not accepted)")
    if '"' in gate_command or "\n" in gate_command or "\\" in gate_command:
        raise KeyLineError("the gate command must not contain quotes, backslashes or newlines")
    options = ["restrict", f'command="{gate_command}"']
    if sources:
        checked = []
        for source in sources:
            try:
                checked.append(str(ipaddress.ip_network(source, strict=False)))
            except ValueError:
                raise KeyLineError(f"--from {source!r} is not an address or CIDR block") from None
        options.append(f'from="{",".join(checked)}"')
    return f"{','.join(options)} {match.group(1)} {match.group(2)} sluice-appliance"


def default_gate_command(python: str, config: Path) -> str:
    """The forced command for a venv's Python and a cluster config path.

    ``-I`` (isolated mode) keeps the working directory (sshd starts the gate in
    the account's home) and the script's directory off ``sys.path`` and ignores
    ``PYTHON*`` variables and the user's site-packages: a ``cluster.py`` or
    ``sitecustomize.py`` planted in the home is never imported by the gate.
    """
    return shlex.join([python, *ISOLATED, "-m", "cluster.cli", "gate", "--config", str(config)])
