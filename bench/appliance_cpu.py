"""The appliance's own CPU time per request, for one or more checkouts side by side.

Starts ``sluice demo`` (pipes, mux mode, JSON request logs at info) from each
checkout given (its own ``.venv``), then runs wrk against each in turn,
interleaved round by round, plain and streamed, and prints the appliance
process's CPU time (utime + stime from /proc, its gate children excluded)
per request: median and min-max of the rounds, and each checkout's ratio
to the first one's, round by round (median).

    .venv/bin/python bench/appliance_cpu.py [--root /work/main] [--root .] [--rounds 3] [--seconds 10]

All traffic goes to 127.0.0.1, for a bounded time.  wrk shares the cores with
what it measures, so compare checkouts within one run, not across runs.
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import statistics
import subprocess
import tempfile
from pathlib import Path

from _load import BODY, free_port, wrk

STREAMED = BODY[:-1] + ',"stream":true}'
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` alone (not its children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def start(root: Path, key: str) -> tuple[subprocess.Popen[str], str]:
    port = free_port()
    argv = [str(root / ".venv/bin/python"), "-m", "appliance.cli", "demo", "--port", str(port), "--api-key", key]
    argv += ["--mode", "mux", "--token-delay", "0", "--log-level", "info"]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=root)
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith("Sluice demo ready"):
            return process, f"http://127.0.0.1:{port}/v1/chat/completions"
    raise SystemExit(f"the demo in {root} did not start")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, action="append", help="a checkout with its .venv (repeatable)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    roots = [r.resolve() for r in args.root or [Path(__file__).resolve().parent.parent]]
    workdir = Path(tempfile.mkdtemp(prefix="sluice-cpu-"))
    key = "sk-bench-" + secrets.token_urlsafe(24)
    demos = [start(root, key) for root in roots]
    results: dict[tuple[Path, str], list[tuple[float, float]]] = {}
    try:
        for _, url in demos:
            wrk(url, key, 4, 2, workdir)  # warm-up: gate started, pools filled
        for _ in range(args.rounds):
            for root, (process, url) in zip(roots, demos, strict=True):
                for name, body in (("plain", BODY), ("stream", STREAMED)):
                    before = cpu_seconds(process.pid)
                    result = wrk(url, key, args.connections, args.seconds, workdir, body=body)
                    used = cpu_seconds(process.pid) - before
                    requests = max(result["rps"] * args.seconds, 1.0)
                    results.setdefault((root, name), []).append((used * 1e6 / requests, result["rps"]))
    finally:
        for process, _ in demos:
            process.send_signal(signal.SIGTERM)
            process.wait(30)
    print(f"\n{os.cpu_count()} cores; {args.rounds} interleaved rounds of {args.seconds} s, {args.connections} connections")
    print(f"{'checkout':<24} {'body':<7} {'appliance CPU us/request':>28} {'req/s':>20}")
    for (root, name), samples in results.items():
        cpu = [s[0] for s in samples]
        rps = [s[1] for s in samples]
        print(
            f"{str(root)[-24:]:<24} {name:<7} {statistics.median(cpu):>10.0f} ({min(cpu):.0f}-{max(cpu):.0f})"
            f"{'':>6} {statistics.median(rps):>8.0f} ({min(rps):.0f}-{max(rps):.0f})"
        )
    for root in roots[1:]:
        for name in ("plain", "stream"):
            pairs = zip(results[(root, name)], results[(roots[0], name)], strict=True)
            ratio = statistics.median(mine[0] / base[0] for mine, base in pairs)
            print(f"{str(root)[-24:]} / {str(roots[0])[-24:]} ({name}): CPU per request x{ratio:.2f}, median of rounds")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
