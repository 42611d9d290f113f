"""Benchmark: 10,000 concurrent slow streamed chat requests through `sluice serve`; failures and RSS.

The stack is the deployed default over pipes: `sluice serve` (one worker
unless ``--workers``), the gate as local mux sessions, one stand-in model
that streams a token every ``--token-delay`` seconds (so that every stream
stays open while the others are opened), quotas in memory, SQLite
accounting, metrics and JSON request logs at their defaults.  What would
refuse 10,000 streams in the default configuration is raised, each named in
the printout:

* ``[server] max_connections`` (default 1,024 open client connections);
* the gate sessions of the cluster (default 1; a session carries at most
  ``appliance.transport.spread.MAX_SESSION_STREAMS``, 192, streams): enough
  sessions for every stream;
* the per-user quotas (the packaged policy: 16 concurrent requests, 600 per
  minute, 200,000 tokens per minute; every stream here is one user's): a
  policy that never refuses, so that the quota machinery still runs;
* the gate's ``request_timeout`` is 300 s, above a stream's length.

The client is this script: asyncio and raw sockets, one connection per
stream, its own open-file limit raised.  It opens every stream (at most
``--connect-burst`` at once connecting or waiting for their response head:
an appliance handed more new connections than it can read within
``[server] header_timeout`` closes the late ones, a deadline against slow
clients that then falls on fast ones), waits until every one has its
response head (all held at once),
samples the resident memory of the appliance and of the gates, then reads
every stream to its end and checks it ended with ``data: [DONE]``.  It prints
the failures (must be 0), the appliance's RSS while holding the streams and
its peak (target <= 400 MB), the gates' RSS (sum and largest), and the
memory per held stream.

    .venv/bin/python bench/streams.py [--streams 10000] [--token-delay 3] [--tokens 30]

All traffic goes to 127.0.0.1; the run ends when the streams do (about
``--tokens`` x ``--token-delay`` seconds after the last opens).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import os
import re
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from appliance.server.files import raise_file_limit  # noqa: E402
from appliance.transport.spread import MAX_SESSION_STREAMS  # noqa: E402
from bench._load import free_port  # noqa: E402
from bench.compare import MODEL, QUOTAS, _children, _stop, _tree, _wait_ok  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

# Connections in flight to the stand-in are the gates' (one per stream): one process serves them all.
RSS_TARGET_MB = 400

_STATUS = re.compile(r'"status":(\d+)')


def _rss_kib(pid: int, field_name: str = "VmRSS") -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


@contextmanager
def standin(token_delay: float, workdir: Path) -> Iterator[tuple[str, str, int]]:
    token = secrets.token_urlsafe(24)
    process = subprocess.Popen(
        [sys.executable, "-m", "cluster.standin", "--port", "0", "--model", MODEL, "--kind", "chat"]
        + ["--token-delay", str(token_delay)],
        stdout=subprocess.PIPE,
        env={**os.environ, "SLUICE_BACKEND_TOKEN": token},
        cwd=ROOT,
    )
    assert process.stdout is not None
    port = int(process.stdout.readline().split()[1])
    try:
        yield f"http://127.0.0.1:{port}", token, process.pid
    finally:
        _stop(process)


def _config(workdir: Path, port: int, gate_config: Path, key: str, args: argparse.Namespace) -> Path:
    argv = [sys.executable, "-m", "cluster.cli", "gate", "--config", str(gate_config), "--local-pipe"]
    command = ", ".join(f'"{a}"' for a in argv)
    sessions = math.ceil(args.streams / args.workers / MAX_SESSION_STREAMS) + 1
    (workdir / "quotas.toml").write_text(QUOTAS)
    (workdir / "metrics.token").write_text(secrets.token_urlsafe(24))
    (workdir / "access.toml").write_text(f'[groups.bench]\nmodels = ["{MODEL}"]\n')  # as deployed: default deny
    quotas = '[quotas]\npolicy = "quotas.toml"' if args.workers == 1 else "[quotas]\nenabled = false"
    config = workdir / "sluice.toml"
    config.write_text(
        f"""[server]
host = "127.0.0.1"
port = {port}
max_connections = {math.ceil(args.streams / args.workers) + 512}
workers = {args.workers}
{f"header_timeout = {args.header_timeout}" if args.header_timeout else ""}

[[clusters]]
name = "local"
transport = "local"
mode = "mux"
sessions = {sessions}
gate_command = [{command}]

[[api_keys]]
user = "bench"
key_id = "streams"
sha256 = "{hashlib.sha256(key.encode()).hexdigest()}"

groups = ["bench"]

[access]
policy = "access.toml"

{quotas}

[accounting]
backend = "sqlite"
path = "{workdir / "usage.db"}"

[metrics]
token_file = "metrics.token"
"""
    )
    print(
        f"raised for {args.streams} streams: server.max_connections = {math.ceil(args.streams / args.workers) + 512} "
        f"(default 1024), clusters.sessions = {sessions} per worker ({MAX_SESSION_STREAMS} streams each; default 1), "
        f"quota policy: concurrent_requests = 100000, requests and tokens per minute 1e8 (packaged: 16, 600, 200000)"
        + ("" if args.workers == 1 else "; quotas off (several workers without Redis)"),
        flush=True,
    )
    return config


@dataclass
class Tally:
    opened: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    done: int = 0
    all_open: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)


async def _one(port: int, request: bytes, tally: Tally, burst: asyncio.Semaphore, total: int, timeout: float) -> None:
    writer = None
    phase = "connect"
    try:
        async with burst:  # at most this many streams being opened (connecting, or waiting for their head)
            reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
            writer.write(request)
            await writer.drain()
            phase = "head"
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        status = head.split(b" ", 2)[1]
        if status != b"200":
            tally.failures[f"status {status.decode(errors='replace')}"] += 1
            return
        tally.opened += 1
        if tally.opened == total - sum(tally.failures.values()):
            tally.all_open.set()
        phase = "body"
        body = await asyncio.wait_for(reader.read(), timeout * 10)
        if b"data: [DONE]" not in body[-64:]:
            tally.failures["stream cut"] += 1
            return
        tally.done += 1
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
        tally.failures[f"{type(exc).__name__} ({phase})"] += 1
    except TimeoutError:
        tally.failures[f"timeout ({phase})"] += 1
    finally:
        if tally.opened + sum(tally.failures.values()) >= total:
            tally.all_open.set()
        if writer is not None:
            writer.close()


def _processes(serve: int) -> tuple[list[int], list[int]]:
    """The appliance's processes (the parent and its workers) and the gates, by pid."""
    appliance, gates = [], []
    for pid in _tree(serve, _children()):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        (gates if b"cluster.cli" in cmdline else appliance).append(pid)
    return appliance, gates


def _netstat() -> dict[str, int]:
    """The kernel's TCP counters (whole machine): listen queue overflows, connections reset with unread data."""
    lines = Path("/proc/net/netstat").read_text().splitlines()
    found: dict[str, int] = {}
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        found.update(zip(names.split()[1:], (int(v) for v in values.split()[1:]), strict=False))
    return {k: found.get(k, 0) for k in ("ListenOverflows", "TCPAbortOnData", "TCPAbortOnClose")}


def _mb(kib: int) -> str:
    return f"{kib / 1024:.0f} MB"


async def run(args: argparse.Namespace, port: int, key: str, serve: int, standin_pid: int) -> int:
    body = json.dumps(
        {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": args.tokens, "stream": True}
    ).encode()
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
        b"authorization: Bearer " + key.encode() + b"\r\nconnection: close\r\n"
        b"content-length: %d\r\n\r\n%s" % (len(body), body)
    )
    appliance, gates = _processes(serve)
    idle = {pid: _rss_kib(pid) for pid in appliance + gates}
    tally = Tally()
    counters = _netstat()
    burst = asyncio.Semaphore(args.connect_burst)
    began = time.monotonic()
    tasks = [asyncio.create_task(_one(port, request, tally, burst, args.streams, args.timeout)) for _ in range(args.streams)]
    await tally.all_open.wait()
    opened_in = time.monotonic() - began
    appliance, gates = _processes(serve)
    held = {pid: _rss_kib(pid) for pid in appliance + gates}
    peak_while_held = {pid: _rss_kib(pid, "VmHWM") for pid in appliance}
    if args.trace is not None:
        os.kill(serve, signal.SIGUSR1)  # the traced appliance writes its top allocations
    print(f"{tally.opened} streams open at once after {opened_in:.1f} s (failures so far: {sum(tally.failures.values())})")
    await asyncio.gather(*tasks)
    total = time.monotonic() - began
    kernel = {k: v - counters[k] for k, v in _netstat().items()}
    peak = {pid: _rss_kib(pid, "VmHWM") for pid in appliance}
    failures = sum(tally.failures.values())
    appliance_held = sum(held.get(p, 0) for p in appliance)
    appliance_idle = sum(idle.get(p, 0) for p in appliance)
    gates_held = [held.get(p, 0) for p in gates]
    print(f"\n{os.cpu_count()} cores; {args.streams} streams, a token every {args.token_delay} s, {args.tokens} tokens each")
    print(f"streams read to [DONE]:  {tally.done} of {args.streams} in {total:.1f} s")
    print(f"failures:                {failures} {dict(tally.failures) if failures else ''}")
    print(
        f"appliance RSS:           {_mb(appliance_held)} holding them ({len(appliance)} process(es); idle before: "
        f"{_mb(appliance_idle)}; {(appliance_held - appliance_idle) / max(tally.opened, 1):.1f} KiB per held stream)"
    )
    print(
        f"appliance peak RSS:      {_mb(sum(peak_while_held.values()))} when all were held, "
        f"{_mb(sum(peak.values()))} over the run (VmHWM; target <= {RSS_TARGET_MB} MB)"
    )
    print(
        f"gate RSS:                {_mb(sum(gates_held))} in {len(gates)} gate processes holding them "
        f"(largest {_mb(max(gates_held, default=0))}; idle before {_mb(sum(idle.get(p, 0) for p in gates))})"
    )
    print(f"kernel TCP counters:     {kernel} (whole machine, during the run)")
    print(f"stand-in RSS:            {_mb(_rss_kib(standin_pid, 'VmHWM'))} peak (one process serving every stream)")
    return 0 if failures == 0 else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=10_000)
    parser.add_argument("--token-delay", type=float, default=3.0, help="seconds between streamed tokens (default 3)")
    parser.add_argument("--tokens", type=int, default=30, help="tokens per stream (default 30)")
    parser.add_argument("--workers", type=int, default=1, help="appliance workers (default 1)")
    parser.add_argument("--connect-burst", type=int, default=256, help="connections being opened at once at most")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to connect and get a response head")
    parser.add_argument("--header-timeout", type=float, help="[server] header_timeout (default: the default, 10 s)")
    parser.add_argument(
        "--trace",
        type=Path,
        help="profile: run the appliance under tracemalloc and write its top allocations, taken while the "
        "streams are held, to this file (slower; the RSS then includes tracemalloc's own); a name ending in "
        ".malloc: CPython's allocator statistics instead, without tracemalloc",
    )
    args = parser.parse_args()
    limit = raise_file_limit(args.streams + 256)
    if not limit.enough:
        raise SystemExit(f"this client needs {args.streams + 256} open files: {limit.shortfall()}")
    workdir = Path(tempfile.mkdtemp(prefix="sluice-streams-"))
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, workdir, True)
        api_base, token, standin_pid = stack.enter_context(standin(args.token_delay, workdir))
        (workdir / "chat.token").write_text(token)
        gate_config = workdir / "cluster.toml"
        gate_config.write_text(
            f'[gate]\nrouting_table = "routing.json"\nrequest_timeout = 300\n[[backends]]\nmodel = "{MODEL}"\n'
            f'url = "{api_base}"\nroutes = ["chat", "completions"]\ntoken_file = "chat.token"\n'
        )
        key = "sk-bench-" + secrets.token_urlsafe(24)
        port = free_port()
        config = _config(workdir, port, gate_config, key, args)
        log = stack.enter_context((workdir / "sluice.log").open("wb"))
        command = [sys.executable, "-m", "appliance.cli", "serve", "--config", str(config)]
        if args.trace is not None:
            command[1:3] = [str(ROOT / "bench" / "_traced.py"), str(args.trace.resolve())]
        process = subprocess.Popen(
            command,
            cwd=workdir,
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
        )
        stack.callback(_stop, process)
        _wait_ok(f"http://127.0.0.1:{port}/readyz", timeout=120)
        time.sleep(2)  # the gate sessions up
        status = asyncio.run(run(args, port, key, process.pid, standin_pid))
        lines = (workdir / "sluice.log").read_text(errors="replace").splitlines()
        statuses = Counter(m.group(1) for m in map(_STATUS.search, lines) if m)
        print(f"appliance log: {len(lines)} lines; request statuses {dict(statuses)}")
        for line in [line for line in lines if '"level":"ERROR"' in line or '"level":"WARNING"' in line][:5]:
            print(f"  {line[:300]}")
        print(f"soft open-file limit of this client: {resource.getrlimit(resource.RLIMIT_NOFILE)[0]}")
    return status


if __name__ == "__main__":
    sys.exit(main())
