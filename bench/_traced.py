"""Run ``sluice ARGS`` under tracemalloc; SIGUSR1 writes its top allocations to OUT (bench/streams.py --trace).

python bench/_traced.py OUT serve --config FILE
"""

from __future__ import annotations

import runpy
import signal
import sys
import threading
import tracemalloc
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _write(out: str) -> None:
    try:
        snapshot = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
        lines = [f"traced: {sum(s.size for s in snapshot.statistics('filename')) / 2**20:.1f} MiB", "", "by line:"]
        lines += [str(stat) for stat in snapshot.statistics("lineno")[:40]]
        lines += ["", "by traceback:"]
        for stat in snapshot.statistics("traceback")[:15]:
            lines += ["", f"{stat.size / 2**20:.2f} MiB in {stat.count} blocks", *stat.traceback.format(limit=12)]
    except Exception:  # noqa: BLE001 (a profiling aid: say what went wrong, never stop the server)
        lines = ["the snapshot failed:", traceback.format_exc()]
    Path(out).write_text("\n".join(lines) + "\n")


def main() -> None:
    out = sys.argv[1]
    tracemalloc.start(12)
    # The snapshot runs on a thread: the server's loop goes on while it is taken.
    signal.signal(signal.SIGUSR1, lambda *_: threading.Thread(target=_write, args=(out,)).start())
    sys.argv = ["sluice", *sys.argv[2:]]
    runpy.run_module("appliance.cli", run_name="__main__")


if __name__ == "__main__":
    main()
