"""A real single-node Slurm (slurm-wlm 22.05 + munge) on localhost, for the tests.

What it sets up, as ../shared/REAL_COMPONENTS.md measured on these machines:
- munged, started as the munge user if it is not running (and stopped again
  only if this module started it and no other Slurm daemon still runs);
- a slurm.conf written from a template into a temporary directory (host =
  ``hostname -s``, memory about half of MemTotal, ``OverSubscribe=FORCE:4``
  so that more than one job per core runs, fast scheduling), with its own
  controller and node ports so that it cannot meet another cluster;
- ``slurmctld -c`` (no old state) and ``slurmd``, both daemonizing, waited
  for until the node is idle.

Stopping cancels every job first (job processes would outlive the daemons),
waits for them to end, then stops both daemons by their pid files.

The session fixture :func:`slurm_cluster` hands tests a :class:`Slurm`.
Slurm's daemons need root; the test command runs as root and installs the
packages (``scripts/test``).
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

__all__ = ["Slurm", "slurm_cluster"]

SLURM_CONF = """\
ClusterName=sluicetest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation={dir}/state
SlurmdSpoolDir={dir}/spool
SlurmctldPidFile={dir}/run/slurmctld.pid
SlurmdPidFile={dir}/run/slurmd.pid
SlurmctldLogFile={dir}/log/slurmctld.log
SlurmdLogFile={dir}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
ReturnToService=2
KillWait=5
MinJobAge=300
OverTimeLimit=0
SchedulerParameters=batch_sched_delay=0,sched_interval=1,bf_interval=1
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
"""

BINARIES = ("slurmctld", "slurmd", "sbatch", "squeue", "scancel", "sinfo", "munged", "munge", "unmunge")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _memory_mb() -> int:
    with open("/proc/meminfo") as handle:
        for line in handle:
            if line.startswith("MemTotal:"):
                return max(512, int(line.split()[1]) // 2048)
    return 1024


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _other_slurm_daemons() -> bool:
    """Whether a slurmctld or slurmd runs (another session's cluster, say)."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                with open(f"/proc/{entry}/cmdline", "rb") as handle:
                    name = os.path.basename(handle.read().split(b"\0", 1)[0])
                if name in (b"slurmctld", b"slurmd") and _alive(int(entry)):
                    return True
    return False


def _munge_works() -> bool:
    try:
        token = subprocess.run(["munge", "-n"], capture_output=True, timeout=5, check=True).stdout
        subprocess.run(["unmunge"], input=token, capture_output=True, timeout=5, check=True)
    except (OSError, subprocess.SubprocessError):
        return False
    return True


class Slurm:
    """One running single-node cluster; commands see it through :attr:`env`."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="sluice-slurm-"))
        self.conf = self.dir / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self.host = socket.gethostname().split(".")[0]
        self._munged_pid: int | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        missing = [b for b in BINARIES if shutil.which(b) is None and not Path(f"/usr/sbin/{b}").exists()]
        if missing:
            pytest.fail(f"Slurm/munge not installed ({', '.join(missing)}); scripts/test installs them", pytrace=False)
        if os.geteuid() != 0:
            pytest.fail("the Slurm integration tests start slurmctld/slurmd and need root", pytrace=False)
        self._start_munge()
        for sub in ("state", "spool", "run", "log"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        self.conf.write_text(
            SLURM_CONF.format(
                host=self.host, dir=self.dir, cpus=os.cpu_count() or 1, memory=_memory_mb(),
                ctld_port=_free_port(), slurmd_port=_free_port(),
            )
        )  # fmt: skip
        subprocess.run(["slurmctld", "-c", "-f", str(self.conf)], env=self.env, check=True, timeout=30)
        subprocess.run(["slurmd", "-f", str(self.conf)], env=self.env, check=True, timeout=30)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            state = self.run("sinfo", "-h", "-o", "%t", check=False).stdout.strip()
            if state == "idle":
                return
            time.sleep(0.2)
        raise RuntimeError(f"the Slurm node did not become idle: {self.log_tail()}")

    def _start_munge(self) -> None:
        if _munge_works():
            return
        run = Path("/run/munge")
        run.mkdir(parents=True, exist_ok=True)
        shutil.chown(run, "munge", "munge")
        subprocess.run(["runuser", "-u", "munge", "--", "/usr/sbin/munged"], check=True, timeout=30)
        deadline = time.monotonic() + 10
        while not _munge_works():
            if time.monotonic() > deadline:
                raise RuntimeError("munged did not start")
            time.sleep(0.1)
        with contextlib.suppress(OSError, ValueError):
            self._munged_pid = int((run / "munged.pid").read_text().strip())

    def stop(self) -> None:
        self.cancel_all()
        for name in ("slurmd", "slurmctld"):
            self._stop_pid(self.dir / "run" / f"{name}.pid")
        if self._munged_pid is not None and not _other_slurm_daemons():
            # munged serves every Slurm on the machine: another test session's
            # cluster may still need the one we started
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._munged_pid, signal.SIGTERM)
        shutil.rmtree(self.dir, ignore_errors=True)

    def _stop_pid(self, path: Path) -> None:
        try:
            pid = int(path.read_text().strip())
        except (OSError, ValueError):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    # ------------------------------------------------------------------ helpers

    def run(self, *argv: str, check: bool = True, input: bytes | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            list(argv), env=self.env, capture_output=True, text=input is None, input=input, timeout=30, check=check
        )

    def jobs(self, states: str = "all") -> list[dict[str, str]]:
        """Every job of this user: id, name, state, reason, node."""
        out = self.run("squeue", "--me", f"--states={states}", "--noheader", "--format=%i|%j|%T|%r|%N").stdout
        rows = []
        for line in out.splitlines():
            job_id, name, state, reason, node = line.split("|", 4)
            rows.append({"id": job_id, "name": name, "state": state, "reason": reason, "node": node})
        return rows

    def active(self, prefix: str = "") -> list[dict[str, str]]:
        return [j for j in self.jobs("PENDING,RUNNING,CONFIGURING,COMPLETING") if j["name"].startswith(prefix)]

    def cancel_all(self, timeout: float = 20.0) -> None:
        """Cancel every job of this user and wait until none holds the node."""
        self.run("scancel", f"--user={getpass.getuser()}", check=False)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.active():
                return
            time.sleep(0.2)

    def log_tail(self, lines: int = 20) -> str:
        text = ""
        for name in ("slurmctld.log", "slurmd.log"):
            with contextlib.suppress(OSError):
                text += f"--- {name}\n" + "\n".join((self.dir / "log" / name).read_text().splitlines()[-lines:]) + "\n"
        return text


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[Slurm]:
    """A running single-node Slurm for the whole test session; stopped (jobs first) at the end."""
    cluster = Slurm()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
