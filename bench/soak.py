"""Soak benchmark (not in CI): the demo under steady mixed load for minutes, watching for leaks.

Starts `sluice demo` (mux), measures its capacity for small plain requests
for a few seconds, then sends, for ``--minutes`` (default 10), a steady rate
(default: half the measured capacity) of mixed traffic: plain chat, streamed
chat, and sealed chat through the SDK.  Prints the errors by kind, and for
every process of the demo (appliance, gate, scheduler, stand-ins) its RSS
and open file descriptors at the start and at the end of the run.

    .venv/bin/python bench/soak.py [--minutes 10] [--warmup 60] [--rate R] [--mix 0.5,0.3,0.2]

Targets (the issue's): 0 errors, RSS growth under 10% per process.  All
traffic goes to 127.0.0.1.  The load generator shares the machine's cores
with what it measures.
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import secrets
import signal
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx2

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _load import ROOT, start_demo  # noqa: E402

sys.path.insert(0, str(ROOT))

MESSAGES = [{"role": "user", "content": "Tell the soak test something"}]
CAPACITY_SECONDS = 8
CAPACITY_WORKERS = 16
WORKERS = 64
# Seconds between the last request and the end sample: past the appliance's idle-connection
# timeout ([server] header_timeout, 10 s), so that only what leaked is left open.
SETTLE = 12


def _children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = collections.defaultdict(list)
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    ppid = int(handle.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children[ppid].append(int(entry))
    return children


def family(pid: int) -> list[int]:
    children, found, todo = _children(), [pid], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def describe(pid: int) -> str:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    words = [a.decode(errors="replace") for a in argv if a]
    if "appliance.cli" in words:
        return "appliance"
    for role in ("gate", "scheduler"):
        if "cluster.cli" in words and role in words:
            return role
    if "cluster.standin" in words and "--model" in words:
        return "standin " + words[words.index("--model") + 1]
    return " ".join(words)[:40]


def sample(pid: int) -> tuple[int, int] | None:
    """(RSS in KiB, open file descriptors) of ``pid``, or None when it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None
    rss = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)
    return rss, fds


def snapshot(root: int) -> dict[int, tuple[str, int, int]]:
    found = {}
    for pid in family(root):
        measured = sample(pid)
        if measured is not None:
            found[pid] = (describe(pid), *measured)
    return found


class Load:
    """Sends requests of three kinds and counts outcomes (thread-safe)."""

    def __init__(self, url: str, key: str) -> None:
        from sluice_sdk import fetch_fingerprint, sealed_openai_client

        self.http = httpx2.Client(
            base_url=url,
            headers={"Authorization": f"Bearer {key}"},
            timeout=60,
            limits=httpx2.Limits(max_connections=WORKERS * 2, max_keepalive_connections=WORKERS),
        )
        self.sealed = sealed_openai_client(f"{url}/v1", key, fetch_fingerprint(f"{url}/v1"))
        self.outcomes: collections.Counter[str] = collections.Counter()
        self.lock = threading.Lock()

    def _count(self, outcome: str) -> None:
        with self.lock:
            self.outcomes[outcome] += 1

    def plain(self) -> None:
        response = self.http.post("/v1/chat/completions", json={"model": "standin-chat", "messages": MESSAGES, "max_tokens": 8})
        self._count("plain ok" if response.status_code == 200 else f"plain {response.status_code}")

    def streamed(self) -> None:
        body = {"model": "standin-chat", "messages": MESSAGES, "max_tokens": 16, "stream": True}
        with self.http.stream("POST", "/v1/chat/completions", json=body) as response:
            data = b"".join(response.iter_bytes())
        done = response.status_code == 200 and data.rstrip().endswith(b"data: [DONE]")
        self._count("streamed ok" if done else f"streamed {response.status_code} incomplete")

    def sealed_chat(self) -> None:
        answer = self.sealed.chat.completions.create(model="standin-chat", messages=MESSAGES, max_tokens=8)
        self._count("sealed ok" if answer.choices[0].message.content else "sealed empty")

    def run(self, kind: str) -> None:
        try:
            getattr(self, kind)()
        except Exception as exc:  # every failure is counted, by type, and the run goes on
            self._count(f"{kind} {type(exc).__name__}")

    def close(self) -> None:
        self.http.close()
        self.sealed.close()


def capacity(load: Load) -> float:
    """Plain requests per second with CAPACITY_WORKERS in flight."""
    stop = time.monotonic() + CAPACITY_SECONDS
    done = 0
    lock = threading.Lock()

    def worker() -> None:
        nonlocal done
        while time.monotonic() < stop:
            load.run("plain")
            with lock:
                done += 1

    threads = [threading.Thread(target=worker) for _ in range(CAPACITY_WORKERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return done / CAPACITY_SECONDS


def paced(load: Load, kinds: list[str], rate: float, at_a_third: Callable[[], None] = lambda: None) -> None:
    """Sends ``kinds`` at ``rate`` per second (each on a worker); calls ``at_a_third`` a third of the way."""
    began = time.monotonic()
    with ThreadPoolExecutor(WORKERS) as pool:
        for index, kind in enumerate(kinds):
            delay = began + index / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            pool.submit(load.run, kind)
            if index == len(kinds) // 3:
                at_a_third()


def mix(seed: int, shares: list[float], count: int) -> list[str]:
    rng = random.Random(seed)  # noqa: S311 - a load mix, not a secret
    return rng.choices(["plain", "streamed", "sealed_chat"], weights=shares, k=count)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, help="requests per second (default: half the measured capacity)")
    parser.add_argument(
        "--warmup", type=float, default=60.0, help="seconds of the mix before the first sample (lazy imports, pools, caches)"
    )
    parser.add_argument("--mix", default="0.5,0.3,0.2", help="shares of plain, streamed and sealed requests")
    args = parser.parse_args()
    shares = [float(x) for x in args.mix.split(",")]
    key = "sk-soak-" + secrets.token_urlsafe(24)
    demo, url = start_demo(key, "--mode", "mux", "--token-delay", "0.002")
    load = Load(url, key)
    try:
        measured = capacity(load)
        rate = args.rate or measured / 2
        # The mix before the first sample: the first sealed request imports the sealing code and
        # opens the replay store, which is start-up, not growth.
        paced(load, mix(7, shares, int(rate * args.warmup)), rate)
        load.outcomes.clear()
        time.sleep(2)
        start = snapshot(demo.pid)  # after every path (plain, streamed, sealed) has run at the soak's rate
        print(
            f"capacity: {measured:.0f} plain requests/s; soak: {rate:.1f} requests/s for {args.minutes:g} min "
            f"after {args.warmup:g} s of warm-up, mix plain/streamed/sealed {args.mix}",
            flush=True,
        )
        warm: dict[int, tuple[str, int, int]] = {}

        def sample() -> None:
            warm.update(snapshot(demo.pid))  # after a third of the run: allocators and pools have grown

        began = time.monotonic()
        paced(load, mix(12, shares, int(rate * args.minutes * 60)), rate, sample)
        elapsed = time.monotonic() - began
        load.close()  # the client's kept-alive connections would otherwise count as open descriptors
        time.sleep(SETTLE)
        end = snapshot(demo.pid)
    finally:
        load.close()
        demo.send_signal(signal.SIGTERM)
        demo.wait(30)
    sent = sum(load.outcomes.values())
    errors = {k: v for k, v in load.outcomes.items() if not k.endswith(" ok")}
    print(f"\nsent {sent} requests in {elapsed:.0f} s ({sent / elapsed:.1f}/s)")
    for outcome, count in sorted(load.outcomes.items()):
        print(f"  {outcome:<32} {count}")
    print(f"errors: {sum(errors.values())}")
    print(
        f"\n{'process':<24} {'pid':>7} {'RSS start':>10} {'RSS 1/3':>9} {'RSS end':>9} {'growth':>7} "
        f"{'since 1/3':>9} {'fds start':>9} {'fds end':>8}"
    )
    for pid in sorted(set(start) | set(end)):
        name = (start.get(pid) or end[pid])[0]
        before, middle, after = start.get(pid), warm.get(pid), end.get(pid)
        if before and after:
            growth = (after[1] - before[1]) / before[1] * 100 if before[1] else 0.0
            late = (after[1] - middle[1]) / middle[1] * 100 if middle and middle[1] else 0.0
            print(
                f"{name:<24} {pid:>7} {before[1] / 1024:>8.1f}Mi {(middle or before)[1] / 1024:>7.1f}Mi "
                f"{after[1] / 1024:>7.1f}Mi {growth:>6.1f}% {late:>8.1f}% {before[2]:>9} {after[2]:>8}"
            )
        else:
            which = "started during the run" if after else "ended during the run"
            values = after or before
            print(f"{name:<24} {pid:>7} ({which}: {values[1] / 1024:.1f}Mi, {values[2]} fds)")  # type: ignore[index]
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
