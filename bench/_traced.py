"""Run ``sluice ARGS`` under tracemalloc; SIGUSR1 writes its top allocations to OUT (bench/streams.py --trace).

With OUT ending in ``.malloc``: no tracemalloc; SIGUSR1 writes CPython's allocator statistics there.

python bench/_traced.py OUT serve --config FILE
"""

from __future__ import annotations

import os
import runpy
import signal
import sys
import threading
import traceback
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _write(out: str) -> None:
    try:
        snapshot = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
        snapshot.dump(out + ".snapshot")  # for other groupings: tracemalloc.Snapshot.load
        lines = [f"traced: {sum(s.size for s in snapshot.statistics('filename')) / 2**20:.1f} MiB", "", "by line:"]
        lines += [str(stat) for stat in snapshot.statistics("lineno")[:40]]
        lines += ["", "by traceback:"]
        for stat in snapshot.statistics("traceback")[:15]:
            lines += ["", f"{stat.size / 2**20:.2f} MiB in {stat.count} blocks", *stat.traceback.format(limit=12)]
    except Exception:  # noqa: BLE001 (a profiling aid: say what went wrong, never stop the server)
        lines = ["the snapshot failed:", traceback.format_exc()]
    Path(out).write_text("\n".join(lines) + "\n")


def _malloc_stats(out: str) -> None:
    """CPython's small-object allocator: blocks in use against the arenas it holds (fragmentation)."""
    saved = os.dup(2)
    with open(out, "w") as handle:
        os.dup2(handle.fileno(), 2)
        try:
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _object_counts(out: str) -> None:
    """Objects the collector tracks, by type: count and shallow bytes (containers; their str and bytes not)."""
    import collections
    import gc

    counts: collections.Counter[str] = collections.Counter()
    sizes: collections.Counter[str] = collections.Counter()
    for item in gc.get_objects():
        name = f"{type(item).__module__}.{type(item).__qualname__}"
        counts[name] += 1
        sizes[name] += sys.getsizeof(item)
    with open(out, "a") as handle:
        handle.write("\nobjects by type (gc-tracked): bytes, count\n")
        for name, size in sizes.most_common(60):
            handle.write(f"{size:>12,} {counts[name]:>9,}  {name}\n")


_PAUSES: list[tuple[int, float, int]] = []  # (generation, seconds, objects tracked after), full collections


def _time_collections() -> None:
    """Record how long each collection of the oldest generation holds the loop."""
    import gc
    import time

    started = [0.0]

    def callback(phase: str, info: dict[str, int]) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            _PAUSES.append((2, time.perf_counter() - started[0], len(gc.get_objects(2)) if len(_PAUSES) < 64 else -1))

    gc.callbacks.append(callback)


def _write_pauses(out: str) -> None:
    with open(out, "a") as handle:
        handle.write(f"\nfull collections: {len(_PAUSES)}; longest {max((p[1] for p in _PAUSES), default=0):.3f} s\n")
        for generation, seconds, objects in _PAUSES:
            handle.write(f"  gen{generation} {seconds:.3f} s, {objects} objects in gen2 after\n")


def main() -> None:
    out = sys.argv[1]
    if out.endswith(".malloc"):  # no tracemalloc: the allocator's own statistics
        _time_collections()
        signal.signal(signal.SIGUSR1, lambda *_: (_malloc_stats(out), _object_counts(out), _write_pauses(out)))
    else:
        tracemalloc.start(12)
        # The snapshot runs on a thread: the server's loop goes on while it is taken.
        signal.signal(signal.SIGUSR1, lambda *_: threading.Thread(target=_write, args=(out,)).start())
    sys.argv = ["sluice", *sys.argv[2:]]
    runpy.run_module("appliance.cli", run_name="__main__")


if __name__ == "__main__":
    main()
