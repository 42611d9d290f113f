"""The second functional account of the two-account layout, as an HPC admin creates it.

- ``sluicejobs``: runs the scheduler and the model jobs (Slurm runs a job as
  the account that submitted it), owns the job directories and writes the
  routing table;
- ``sluicespool``: a group of both accounts, owning the shared spool
  directory (setgid, 2770): the gate's kicks and load files, the routing table;
- the gate's account (``sluiceisogate``, made by :mod:`tests.services.sshd`) joins
  the group; both homes are made private (0700), as the operator guide says.

Root only (``useradd``, ``groupadd``); CI runs the tests as root.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import subprocess
from pathlib import Path
from typing import Any

__all__ = ["GATE_USER", "JOBS_USER", "SPOOL_GROUP", "OTHER_USER", "ensure_accounts", "run_as", "probe_as"]

# The gate's account of these tests: not the shared ``sluicegate`` of the other
# sshd tests, whose home (where sshd starts the gate) these tests plant files in.
GATE_USER = "sluiceisogate"
JOBS_USER = "sluicejobs"
SPOOL_GROUP = "sluicespool"
# Any other user of the cluster (a researcher's account): the system's nobody.
OTHER_USER = "nobody"


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def ensure_accounts() -> None:
    """The jobs account and the spool group; the gate's account in the group; private homes."""
    if os.geteuid() != 0:
        raise RuntimeError("the two-account tests create users: run them as root (CI does)")
    try:
        grp.getgrnam(SPOOL_GROUP)
    except KeyError:
        _run("groupadd", SPOOL_GROUP)
    try:
        pwd.getpwnam(JOBS_USER)
    except KeyError:
        _run("useradd", "--create-home", "--shell", "/bin/sh", JOBS_USER)
    _run("usermod", "-a", "-G", SPOOL_GROUP, JOBS_USER)
    _run("usermod", "-a", "-G", SPOOL_GROUP, GATE_USER)
    for user in (GATE_USER, JOBS_USER):
        Path(pwd.getpwnam(user).pw_dir).chmod(0o700)


def chown(path: Path, user: str, group: str | None = None) -> None:
    entry = pwd.getpwnam(user)
    os.chown(path, entry.pw_uid, grp.getgrnam(group).gr_gid if group else entry.pw_gid)


def run_as(user: str, argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
    """``argv`` as ``user`` (with its supplementary groups), from ``/``."""
    return subprocess.run(["runuser", "-u", user, "--", *argv], cwd="/", capture_output=True, timeout=60, **kwargs)


# What a process of an account can do to a path: each attempt reports "ok" or the errno's name.
_PROBE = r"""
import errno, json, os, sys
def attempt(action, path):
    try:
        if action == "read":
            with open(path, "rb") as handle:
                handle.read(1)
        elif action == "list":
            os.listdir(path)
        elif action == "append":
            with open(path, "ab"):
                pass
        elif action == "create":
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            os.close(fd)
            os.unlink(path)
        elif action == "replace":
            os.rename(path, path + ".moved")
            os.rename(path + ".moved", path)
        return "ok"
    except OSError as exc:
        return errno.errorcode.get(exc.errno, str(exc.errno))
print(json.dumps([attempt(a, p) for a, p in json.loads(sys.argv[1])]))
"""


def probe_as(user: str, attempts: list[tuple[str, Path]]) -> dict[tuple[str, str], str]:
    """Try each (action, path) as ``user``: read, list, append, create (then remove), replace."""
    plan = [(action, str(path)) for action, path in attempts]
    done = run_as(user, ["/usr/bin/python3", "-I", "-c", _PROBE, json.dumps(plan)])
    if done.returncode != 0:
        raise RuntimeError(done.stderr.decode(errors="replace"))
    return dict(zip(plan, json.loads(done.stdout), strict=True))
