"""Metrics of several worker processes, seen as one appliance: prometheus_client's multiprocess mode.

With ``[server] workers`` above 1, each worker counts in its own process, and
a scrape reaches whichever worker accepts it.  So that every scrape shows the
whole appliance, the parent makes a private directory and names it in
``PROMETHEUS_MULTIPROC_DIR`` before it starts the workers: each worker's
counters, histograms and gauges then live in memory-mapped files there (one
per process and kind), and ``/metrics`` in any worker reads and sums them all.

* counters and histograms: summed over every worker that has lived, the dead
  ones included, so a restart never makes a counter go back;
* gauges (requests in flight, accounting backlog): summed over the live
  workers only (``livesum``; the parent removes a dead worker's files);
* what ``/metrics`` reads at scrape time from the answering worker (its own
  gate connections' statistics) carries a ``worker`` label: each worker's
  series stays its own, and a scrape shows the one that answered.

The directory is the parent's (mode 0700, removed when it stops); with one
worker none of this is used.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Final

from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

__all__ = ["ENV", "close_shared_metrics", "forget_worker", "shared_metrics_dir", "shared_registry"]

# prometheus_client reads this variable when it is first imported: a worker, spawned with it set,
# keeps its metric values in files there.
ENV: Final = "PROMETHEUS_MULTIPROC_DIR"


def shared_metrics_dir() -> Path:
    """A fresh private directory for the workers' metric files, named in the environment they inherit."""
    path = Path(tempfile.mkdtemp(prefix="sluice-metrics-"))  # mode 0700
    os.environ[ENV] = str(path)
    return path


def forget_worker(path: Path, pid: int | None) -> None:
    """A worker has ended: its live gauges no longer count (its counters do)."""
    if pid is not None:
        mark_process_dead(pid, str(path))  # type: ignore[no-untyped-call]


def close_shared_metrics(path: Path) -> None:
    os.environ.pop(ENV, None)
    shutil.rmtree(path, ignore_errors=True)


def shared_registry() -> CollectorRegistry | None:
    """In a worker of several: a registry that reads every worker's files; otherwise None."""
    path = os.environ.get(ENV)
    if not path:
        return None
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path)  # type: ignore[no-untyped-call]
    return registry
