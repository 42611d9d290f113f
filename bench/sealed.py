"""Sealed against clear requests: the gateway's CPU per request, round after round.

Starts `sluice demo` over pipes (mux mode, no token delay, request logs on:
in-memory quotas, SQLite accounting and metrics as the demo has them), then
runs, in interleaved rounds, wrk with the clear chat body on
/v1/chat/completions and wrk with sealed chat requests (RFC 9458, made
beforehand with the SDK, each one different: the gate refuses a replay) on
/v1/sealed/chat/completions, and prints the appliance's and the gate's CPU
time per request (from /proc, before and after each run), the ratio sealed
over clear, and how the sealed cost moves from round to round (it must not
grow with the number of sealed requests of the last minutes).

    .venv/bin/python bench/sealed.py [--rounds 6] [--seconds 5] [--connections 32]

All traffic goes to 127.0.0.1, for a bounded time.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _load import BODY, start_demo, wrk  # noqa: E402
from compare import _children, _cpu_seconds, _tree  # noqa: E402

MODEL = "standin-chat"

# One body after another, each after its length in six digits; each wrk thread sends every
# thread-count-th body from its own offset, so no body is sent twice.
SEALED_LUA = """
local bodies = {}
local f = assert(io.open("%(bodies)s", "rb"))
while true do
    local n = f:read(6)
    if not n then break end
    bodies[#bodies + 1] = f:read(tonumber(n))
end
f:close()
local threads = 0
function setup(thread)
    thread:set("first", threads)
    threads = threads + 1
end
function init(args)
    step = %(threads)d
    index = first + 1
end
function request()
    local body = bodies[index]
    if body == nil then body = "" end
    index = index + step
    return wrk.format("POST", nil, {
        ["Authorization"] = "Bearer %(key)s",
        ["Content-Type"] = "message/ohttp-req",
        ["Sluice-Model"] = "%(model)s",
    }, body)
end
"""


def seal_bodies(base: str, count: int, path: Path) -> None:
    """``count`` sealed chat requests to the key the demo serves, into ``path``."""
    import httpx2

    from sluice_sdk.bhttp import Request
    from sluice_sdk.client import seal_request
    from sluice_sdk.keyconfig import decode_key_configs

    configs = decode_key_configs(httpx2.get(f"{base}/v1/sealed/keys", timeout=10).content)
    config = next(c for c in configs if c.usable)
    headers = ((b"content-type", b"application/json"),)
    inner = Request(b"POST", b"https", b"sluice", b"/v1/chat/completions", headers, BODY.encode())
    with path.open("wb") as out:
        for _ in range(count):
            body, _opener = seal_request(config, inner)
            out.write(b"%06d" % len(body) + body)


def roles(demo: int) -> dict[str, list[int]]:
    """The appliance (the demo process) and its gate children (not the scheduler's stand-ins)."""
    tree = _children()
    gates = [p for p in _tree(demo, tree) if p != demo and b"gate" in _cmdline(p)]
    return {"appliance": [demo], "gate": gates}


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def cpu(demo: int) -> dict[str, float]:
    return {role: sum(_cpu_seconds(p) for p in pids) for role, pids in roles(demo).items()}


def sealed_wrk(url: str, key: str, bodies: Path, connections: int, seconds: int, workdir: Path) -> tuple[float, int]:
    threads = 1 if connections == 1 else 2
    script = workdir / "sealed.lua"
    script.write_text(SEALED_LUA % {"bodies": bodies, "threads": threads, "key": key, "model": MODEL})
    out = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    if "Non-2xx" in out or "Socket errors" in out:
        raise SystemExit(f"errors during the sealed run (too few bodies for the rate? raise --bodies):\n{out}")
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)), requests  # type: ignore[union-attr]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--bodies", type=int, default=12000, help="sealed requests made before each round")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    workdir = Path(tempfile.mkdtemp(prefix="sluice-sealed-"))
    key = "sk-bench-" + secrets.token_urlsafe(24)
    demo, base = start_demo(key, "--mode", "mux", "--token-delay", "0", "--log-level", "info")
    rows: list[tuple[int, str, float, float, float]] = []  # round, kind, appliance us, gate us, req/s
    sealed_total = 0
    try:
        clear_url, sealed_url = f"{base}/v1/chat/completions", f"{base}/v1/sealed/chat/completions"
        bodies = workdir / "bodies"
        seal_bodies(base, 3000, bodies)
        wrk(clear_url, key, 8, 2, workdir)  # warm-up, both paths
        sealed_wrk(sealed_url, key, bodies, 8, 1, workdir)
        for round_index in range(1, args.rounds + 1):
            seal_bodies(base, args.bodies, bodies)
            kinds = ("clear", "sealed") if round_index % 2 else ("sealed", "clear")
            for kind in kinds:
                before = cpu(demo.pid)
                if kind == "clear":
                    rps = wrk(clear_url, key, args.connections, args.seconds, workdir)["rps"]
                    requests = rps * args.seconds
                else:
                    rps, count = sealed_wrk(sealed_url, key, bodies, args.connections, args.seconds, workdir)
                    requests = count
                    sealed_total += count
                after = cpu(demo.pid)
                per = {role: (after[role] - before.get(role, 0.0)) * 1e6 / max(requests, 1) for role in after}
                rows.append((round_index, kind, per["appliance"], per["gate"], rps))
                print(
                    f"round {round_index} {kind:<6} appliance {per['appliance']:6.0f} us  gate {per['gate']:6.0f} us"
                    f"  {rps:6.0f} req/s  (sealed so far {sealed_total})",
                    flush=True,
                )
    finally:
        demo.send_signal(signal.SIGTERM)
        demo.wait(30)
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"\n{os.cpu_count()} cores; {args.rounds} interleaved rounds of {args.seconds} s, {args.connections} connections")
    for role, column in (("appliance", 2), ("gate", 3), ("both", None)):

        def value(row: tuple[int, str, float, float, float], column: int | None = column) -> float:
            return row[2] + row[3] if column is None else float(row[column])

        clear = [value(r) for r in rows if r[1] == "clear"]
        sealed = [value(r) for r in rows if r[1] == "sealed"]
        print(
            f"{role:<10} clear {statistics.median(clear):6.0f} us  sealed {statistics.median(sealed):6.0f} us"
            f"  sealed/clear {statistics.median(sealed) / statistics.median(clear):.2f}x"
            f"  sealed first/last round {sealed[0]:.0f}/{sealed[-1]:.0f} us"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
