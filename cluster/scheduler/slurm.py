"""Slurm through its commands: ``squeue``, ``sbatch --parsable``, ``scancel``.

Every command runs from an argv list (never a shell) with a timeout, in an
environment stripped of variables that would change what the commands do
(``SQUEUE_FORMAT``, ``SBATCH_*``, a surrounding job's ``SLURM_*``) or that
came from the SSH client (``SSH_*``).  Job scripts reach ``sbatch`` on its
standard input, so the per-job token they carry is on no command line.

``squeue`` output is parsed strictly: every line must carry the sentinel
field and the exact number of fields, job ids must be numbers, states must
be Slurm's words.  A failed, timed-out or garbled ``squeue`` raises
:class:`SlurmError`; the caller then keeps what it knew.  It never means
"no jobs".
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from policy.errors import InternalError

from ..config import SlurmSettings

__all__ = [
    "SlurmJob",
    "SlurmError",
    "SlurmCli",
    "parse_squeue",
    "parse_time_left",
    "parse_sbatch",
    "command_env",
    "SQUEUE_FORMAT",
]

# Sentinel, job id, state, reason, node list, time left, start time (Slurm's
# estimate for a pending job: what the model status tells clients), name (last:
# a name of someone else's job may contain anything, even the separator).
SQUEUE_FORMAT: Final = "S|%i|%T|%r|%N|%L|%S|%j"
_FIELDS: Final = 8

_JOB_ID: Final = re.compile(r"[1-9][0-9]{0,11}")
_STATE: Final = re.compile(r"[A-Z][A-Z_]{1,31}")
_NODE: Final = re.compile(r"[A-Za-z0-9._,\[\]-]{0,256}")
_REASON: Final = re.compile(r"[ -~]{0,512}")
_SBATCH_OUT: Final = re.compile(r"([1-9][0-9]{0,11})(?:;[A-Za-z0-9_.-]{1,64})?\n?")
_START_TIME: Final = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}")
_NO_START: Final = frozenset({"N/A", "Unknown", "None", "NONE", ""})
_TIME_LEFT: Final = re.compile(r"(?:(\d{1,4})-)?(?:(\d{1,2}):)?(\d{1,2}):(\d{2})")

# What stderr text a log line may carry (Slurm's own messages, truncated).
MAX_ERROR_TEXT: Final = 200

# Output of one command that we read at most (squeue of a busy account).
MAX_OUTPUT: Final = 16 * 1024 * 1024

# Environment variables that change what the Slurm commands do, or that came
# from the SSH client; none reaches them.
_STRIPPED_PREFIXES: Final = ("SSH_", "SBATCH_", "SQUEUE_", "SCANCEL_", "SLURM_", "SALLOC_", "SRUN_")


class SlurmError(InternalError):
    """A Slurm command failed, timed out or printed something we do not accept."""


@dataclass(frozen=True, slots=True)
class SlurmJob:
    id: str
    state: str
    reason: str
    node: str
    time_left: float | None
    name: str
    start_time: float | None = None  # Unix time; for a pending job, Slurm's estimate


def parse_time_left(text: str) -> float | None:
    """squeue's ``%L``: ``[D-][HH:]MM:SS``, or UNLIMITED / NOT_SET / INVALID (None)."""
    if text in ("UNLIMITED", "NOT_SET", "INVALID"):
        return None
    match = _TIME_LEFT.fullmatch(text)
    if match is None:
        raise SlurmError("garbled time left")
    days, hours, minutes, seconds = (int(g) if g else 0 for g in match.groups())
    return float(((days * 24 + hours) * 60 + minutes) * 60 + seconds)


def parse_start_time(text: str) -> float | None:
    """squeue's ``%S``: ``YYYY-MM-DDTHH:MM:SS`` in the cluster's local time, or N/A (None)."""
    if text in _NO_START:
        return None
    if _START_TIME.fullmatch(text) is None:
        raise SlurmError("garbled start time")
    try:
        return datetime.datetime.fromisoformat(text).timestamp()  # naive: local time, as Slurm prints it
    except ValueError:
        raise SlurmError("garbled start time") from None


def parse_squeue(text: str, prefix: str) -> dict[str, SlurmJob]:
    """Our jobs (names starting with ``prefix.``) in ``squeue -o SQUEUE_FORMAT`` output."""
    jobs: dict[str, SlurmJob] = {}
    ours = prefix + "."
    for line in text.split("\n"):
        if not line:
            continue
        parts = line.split("|", _FIELDS - 1)
        if len(parts) != _FIELDS or parts[0] != "S":
            raise SlurmError("garbled squeue line")
        _, job_id, state, reason, node, time_left, start_time, name = parts
        if not name.startswith(ours):
            continue
        if not (_JOB_ID.fullmatch(job_id) and _STATE.fullmatch(state) and _NODE.fullmatch(node)):
            raise SlurmError("garbled squeue fields")
        if not _REASON.fullmatch(reason) or job_id in jobs:
            raise SlurmError("garbled squeue fields")
        jobs[job_id] = SlurmJob(job_id, state, reason, node, parse_time_left(time_left), name, parse_start_time(start_time))
    return jobs


def parse_sbatch(text: str) -> str:
    """The job id in ``sbatch --parsable`` output (``id`` or ``id;cluster``)."""
    match = _SBATCH_OUT.fullmatch(text)
    if match is None:
        raise SlurmError("garbled sbatch output")
    return match.group(1)


def command_env(settings: SlurmSettings, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of every Slurm command (and so of the jobs sbatch submits)."""
    source = os.environ if environ is None else environ
    env = {k: v for k, v in source.items() if not k.startswith(_STRIPPED_PREFIXES) and k != "SLUICE_BACKEND_TOKEN"}
    if settings.slurm_conf is not None:
        env["SLURM_CONF"] = str(settings.slurm_conf)
    elif "SLURM_CONF" in source:
        env["SLURM_CONF"] = source["SLURM_CONF"]
    return env


def _tail(data: bytes) -> str:
    text = data.decode("utf-8", "replace").strip().replace("\n", " ")
    return "".join(c if c.isprintable() else "?" for c in text[-MAX_ERROR_TEXT:])


class SlurmCli:
    """Runs the Slurm commands named in the configuration."""

    def __init__(self, settings: SlurmSettings, prefix: str) -> None:
        self._settings = settings
        self._prefix = prefix
        self._env = command_env(settings)

    async def _run(self, argv: list[str], stdin: bytes | None = None) -> bytes:
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=self._env,
                start_new_session=True,
            )
        except OSError as exc:
            raise SlurmError(f"{os.path.basename(argv[0])}: cannot run ({exc.strerror})") from None
        try:
            async with asyncio.timeout(self._settings.command_timeout):
                out, err = await process.communicate(stdin)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
            raise SlurmError(f"{os.path.basename(argv[0])}: timed out after {self._settings.command_timeout:g}s") from None
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
            raise
        if process.returncode != 0:
            raise SlurmError(f"{os.path.basename(argv[0])}: exit {process.returncode}: {_tail(err)}")
        if len(out) > MAX_OUTPUT:
            raise SlurmError(f"{os.path.basename(argv[0])}: output too large")
        return out

    async def squeue(self) -> dict[str, SlurmJob]:
        """Our jobs, in any state Slurm still remembers; :class:`SlurmError` if not known."""
        out = await self._run([self._settings.squeue, "--me", "--states=all", "--noheader", f"--format={SQUEUE_FORMAT}"])
        # latin-1 never fails: someone else's job name may hold any bytes; our
        # lines are checked field by field against ASCII patterns anyway.
        text = out.decode("latin-1")
        return parse_squeue(text, self._prefix)

    async def sbatch(self, options: list[str], script: bytes) -> str:
        """Submit ``script`` (read by sbatch from its standard input); the new job's id."""
        out = await self._run([self._settings.sbatch, "--parsable", *options], stdin=script)
        try:
            return parse_sbatch(out.decode("ascii"))
        except UnicodeDecodeError:
            raise SlurmError("garbled sbatch output") from None

    async def scancel(self, job_ids: list[str]) -> None:
        if not job_ids:
            return
        for job_id in job_ids:
            if not _JOB_ID.fullmatch(job_id):
                raise ValueError("not a job id")
        await self._run([self._settings.scancel, "--", *job_ids])
