"""The open-file limit: each client connection is a file, so the appliance raises its own soft limit.

A process starts with the soft ``RLIMIT_NOFILE`` it inherits (often 1024,
from a login shell or a container runtime's default) and may raise it up to
the hard limit on its own.  The appliance does so at start, as far as the
hard limit allows, and says so when even that is below what
``[server].max_connections`` needs: past the limit, ``accept()`` fails with
``EMFILE`` and new clients wait in the kernel's queue until they give up,
which looks like a hung server.  Raising the hard limit is the operator's
(``ulimit -Hn``, ``LimitNOFILE=`` in systemd, ``--ulimit nofile=`` for a
container).
"""

from __future__ import annotations

import logging
import resource
from dataclasses import dataclass
from typing import Final

from policy.events import event_line

__all__ = ["FILE_OVERHEAD", "FileLimit", "files_needed", "raise_file_limit"]

log = logging.getLogger("sluice.server")

# Files a worker holds besides its client connections: listening sockets, the gate sessions'
# pipes or SSH connections, the accounting and audit databases, their write-ahead logs, logs,
# the event loop's own descriptors.  Generous: a limit short by this much would fail under load.
FILE_OVERHEAD: Final = 512

# The soft limit asked for when the hard limit is "unlimited": Linux's default fs.nr_open.
UNLIMITED_TARGET: Final = 1_048_576


@dataclass(frozen=True, slots=True)
class FileLimit:
    """The soft limit before and after raising it, the hard limit, and what the settings need."""

    before: int
    soft: int
    hard: int
    needed: int

    @property
    def enough(self) -> bool:
        return self.soft >= self.needed

    def shortfall(self) -> str:
        """The operator's message when the limit is below what is needed."""
        return (
            f"the open-file limit is {self.soft} (hard limit {self.hard}), but [server].max_connections needs about "
            f"{self.needed}: clients past the limit will hang; raise the hard limit (ulimit -Hn, LimitNOFILE= in "
            "systemd, --ulimit nofile= for a container) or lower server.max_connections"
        )


def files_needed(max_connections: int) -> int:
    """Open files one worker needs at ``max_connections`` client connections."""
    return max_connections + FILE_OVERHEAD


def _finite(limit: int) -> int:
    return UNLIMITED_TARGET if limit == resource.RLIM_INFINITY else limit


def raise_file_limit(needed: int) -> FileLimit:
    """Raise this process's soft ``RLIMIT_NOFILE`` to its hard limit; log what it is, warn if short."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    before = soft
    target = _finite(hard)
    if soft == resource.RLIM_INFINITY or soft >= target:
        pass  # already as high as it goes
    else:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):  # a hard limit above the kernel's nr_open: keep what we have
            log.warning(event_line("file_limit_not_raised", soft=soft, hard=_finite(hard)))
        else:
            soft = target
    limit = FileLimit(before=_finite(before), soft=_finite(soft), hard=_finite(hard), needed=needed)
    if limit.enough:
        log.info(event_line("file_limit", soft=limit.soft, hard=limit.hard, needed=needed))
    else:
        log.warning(event_line("file_limit_short", soft=limit.soft, hard=limit.hard, needed=needed))
    return limit
