"""The pass lock: exclusive while its holder lives, free the moment it dies."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from cluster.scheduler.lock import PassLock, is_locked, lock_holder
from tests.conftest import ROOT

HOLDER = """\
import sys, time
from pathlib import Path
from cluster.scheduler.lock import PassLock
assert PassLock(Path(sys.argv[1])).acquire()
print("held", flush=True)
time.sleep(60)
"""


def _holder(path: Path) -> subprocess.Popen[bytes]:
    process = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], stdout=subprocess.PIPE, cwd=ROOT)
    assert process.stdout is not None and process.stdout.readline() == b"held\n"
    return process


def test_one_holder_at_a_time(tmp_path: Path) -> None:
    path = tmp_path / "slurm.lock"
    first, second = PassLock(path), PassLock(path)
    assert first.acquire()
    assert not second.acquire()
    assert is_locked(path) and lock_holder(path)["pid"] == os.getpid()  # type: ignore[index]
    first.release()
    assert not is_locked(path) and lock_holder(path) is None
    with second as held:
        assert held
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_blocking_acquire_waits_a_bounded_time(tmp_path: Path) -> None:
    path = tmp_path / "slurm.lock"
    holder = PassLock(path)
    assert holder.acquire()
    assert not PassLock(path).acquire(blocking=True, timeout=0.2)
    holder.release()
    assert PassLock(path).acquire(blocking=True, timeout=0.2)


def test_a_killed_holder_leaves_its_file_but_not_its_lock(tmp_path: Path) -> None:
    path = tmp_path / "slurm.lock"
    process = _holder(path)
    try:
        assert not PassLock(path).acquire()
        assert lock_holder(path)["pid"] == process.pid  # type: ignore[index]
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
        assert process.stdout is not None
        process.stdout.close()
    assert json.loads(path.read_text())["pid"] == process.pid  # stale content stays...
    lock = PassLock(path)
    assert lock.acquire()  # ...and means nothing
    assert json.loads(path.read_text())["pid"] == os.getpid()
    lock.release()


def test_garbage_in_the_lock_file_means_nothing(tmp_path: Path) -> None:
    path = tmp_path / "slurm.lock"
    path.write_text("pid 1 holds this forever\n")
    lock = PassLock(path)
    assert lock.acquire()
    lock.release()
