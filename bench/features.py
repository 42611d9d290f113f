"""The appliance's CPU per request, per metering feature, for one or more source trees side by side.

Starts `sluice serve` over pipes or (--transport ssh) through a real sshd (mux
mode, one stand-in backend, no token delay) once per source tree and per
variant of the deployment-like settings of bench/compare.py (quotas in memory, SQLite accounting, metrics and JSON
request logs on): everything on, then each of quotas, accounting and metrics
off, then all three off.  Rounds are interleaved (each round runs every tree
and variant once, plain and streamed), and the table prints, per tree and
variant, the median (min-max) of the appliance's and the gate's CPU time per
request (from /proc, before and after each wrk run) and what each feature
costs (everything on minus that feature off).

    .venv/bin/python bench/features.py [--tree base=/path/to/other/checkout]
        [--rounds 3] [--seconds 5] [--connections 32] [--variants all,-quotas,...]

A tree is a checkout of Sluice; it runs with this interpreter and its
packages, with the tree first on PYTHONPATH (so the gate child runs that
tree's code too).  Metrics are turned off by starting the appliance without a
`Metrics` (no /metrics route, no HTTP metrics middleware): the serve command
has no setting for that.  Over SSH, the gate runs this checkout's code for
every tree (sshd starts it), and its CPU is counted with sshd's; the SSH run
needs root and shares the tests' system account: run it under
`flock /tmp/sluice-integ.lock`.  All traffic goes to 127.0.0.1, for a bounded time.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _load import free_port, wrk  # noqa: E402
from compare import (  # noqa: E402
    MODEL,
    PLAIN,
    QUOTAS,
    STREAMED,
    Gateway,
    _pipe_cluster,
    _serve_roles,
    _ssh_cluster,
    _ssh_roles,
    _stop,
    _wait_ok,
    backend,
)

FEATURES = ("quotas", "accounting", "metrics")
VARIANTS = ("all", "-quotas", "-accounting", "-metrics", "none")

_LAUNCH = """
import sys
sys.path.insert(0, {tree!r})
if {no_metrics!r}:
    import appliance.serve
    appliance.serve.Metrics = lambda: None
from appliance.cli import main
sys.exit(main(["serve", "--config", {config!r}]))
"""


def _off(variant: str) -> set[str]:
    if variant == "all":
        return set()
    if variant == "none":
        return set(FEATURES)
    return {variant.removeprefix("-")}


def _config(workdir: Path, name: str, port: int, cluster: str, key: str, off: set[str]) -> Path:
    (workdir / "quotas.toml").write_text(QUOTAS)
    (workdir / "access.toml").write_text('[groups.bench]\nmodels = ["*"]\n')  # the default policy denies everything
    lines = [
        "[server]",
        'host = "127.0.0.1"',
        f"port = {port}",
        "",
        cluster,
        "",
        "[[api_keys]]",
        'user = "bench"',
        f'key_id = "{name}"',
        f'sha256 = "{hashlib.sha256(key.encode()).hexdigest()}"',
        'groups = ["bench"]',
        "",
        "[access]",
        'policy = "access.toml"',
        "",
        "[quotas]",
    ]
    lines += ['policy = "quotas.toml"', 'storage = "memory://"'] if "quotas" not in off else ["enabled = false"]
    if "accounting" not in off:
        lines += ["", "[accounting]", 'backend = "sqlite"', f'path = "{workdir / (name + "-usage.db")}"']
    lines += ["", "[logging]", 'level = "info"', "requests = true", ""]
    config = workdir / f"{name}.toml"
    config.write_text("\n".join(lines))
    return config


@contextmanager
def appliance(
    workdir: Path, tree: Path, name: str, cluster: str, off: set[str], roles: Callable[[int], Callable[[], dict[str, list[int]]]]
) -> Iterator[Gateway]:
    key = "sk-bench-" + secrets.token_urlsafe(24)
    port = free_port()
    config = _config(workdir, name, port, cluster, key, off)
    log = (workdir / f"{name}.log").open("wb")
    code = _LAUNCH.format(tree=str(tree), no_metrics="metrics" in off, config=str(config))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tree), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    process = subprocess.Popen(
        [sys.executable, "-c", code], cwd=workdir, stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=env
    )
    try:
        _wait_ok(f"http://127.0.0.1:{port}/readyz")
        yield Gateway(name, f"http://127.0.0.1:{port}/v1/chat/completions", key, roles(process.pid))
    finally:
        _stop(process)  # type: ignore[arg-type]
        log.close()


def _us(samples: list[float]) -> str:
    return f"{statistics.median(samples):6.0f} ({min(samples):.0f}-{max(samples):.0f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", action="append", default=[], help="NAME=PATH of a checkout (default: this one)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--bodies", default="plain,stream")
    parser.add_argument(
        "--transport",
        choices=("pipe", "ssh"),
        default="pipe",
        help="ssh: a real sshd runs the gate (root; under the tests' flock)",
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    trees = [tuple(t.split("=", 1)) for t in args.tree] or [("this", str(ROOT))]
    trees.append(("this", str(ROOT))) if args.tree and all(n != "this" for n, _ in trees) else None
    variants = [v for v in args.variants.split(",") if v]
    bodies = {"plain": PLAIN, "stream": STREAMED}
    chosen = [b for b in args.bodies.split(",") if b]
    workdir = Path(tempfile.mkdtemp(prefix="sluice-features-"))
    # (tree, variant, body) -> per round: (appliance us, gate us, req/s)
    results: dict[tuple[str, str, str], list[tuple[float, float, float]]] = {}
    with ExitStack() as stack:
        api_base, token = stack.enter_context(backend(workdir))
        gate_config = workdir / "cluster.toml"
        (workdir / "chat.token").write_text(token)
        gate_toml = (
            f'[gate]\nrouting_table = "routing.json"\n[[backends]]\nmodel = "{MODEL}"\n'
            f'url = "{api_base}"\nroutes = ["chat", "completions"]\ntoken_file = "chat.token"\n'
        )
        gate_config.write_text(gate_toml)
        if args.transport == "ssh":
            from tests.services import sshd as sshd_service

            server = sshd_service.Sshd(gate_toml, {"chat.token": token})
            stack.callback(server.stop)
            listener = int((server.dir / "sshd.pid").read_text())
            cluster = _ssh_cluster(server, "mux")

            def roles(pid: int) -> Callable[[], dict[str, list[int]]]:
                return _ssh_roles(pid, listener)

        else:
            cluster, roles = _pipe_cluster(gate_config), _serve_roles
        gateways: list[tuple[str, str, Gateway]] = []
        for tree_name, tree in trees:
            for variant in variants:
                name = f"{tree_name}{variant}".replace("-", "_")
                gateway = stack.enter_context(appliance(workdir, Path(tree), name, cluster, _off(variant), roles))
                gateways.append((tree_name, variant, gateway))
        for _, _, gateway in gateways:
            wrk(gateway.url, gateway.key, 8, 1, workdir, body=PLAIN)  # warm-up
        for round_index in range(args.rounds):
            order = gateways if round_index % 2 == 0 else gateways[::-1]
            for tree_name, variant, gateway in order:
                for body in chosen:
                    before = gateway.cpu()
                    result = wrk(gateway.url, gateway.key, args.connections, args.seconds, workdir, body=bodies[body])
                    after = gateway.cpu()
                    requests = max(result["rps"] * args.seconds, 1.0)
                    per = {role: (after[role] - before.get(role, 0.0)) * 1e6 / requests for role in after}
                    gate = sum(v for k, v in per.items() if k != "appliance")  # the gate (and sshd)
                    results.setdefault((tree_name, variant, body), []).append((per.get("appliance", 0.0), gate, result["rps"]))
                    print(
                        f"round {round_index + 1} {tree_name:>6} {variant:<12} {body:<6} "
                        f"appliance {per.get('appliance', 0):6.0f} us  gate {gate:6.0f} us  "
                        f"{result['rps']:6.0f} req/s",
                        flush=True,
                    )
    shutil.rmtree(workdir, ignore_errors=True)
    print(
        f"\n{os.cpu_count()} cores; {args.rounds} interleaved rounds of {args.seconds} s, {args.connections} connections;"
        " CPU microseconds per request, median (min-max)"
    )
    print(f"{'tree':<8} {'variant':<12} {'body':<7} {'appliance us':>20} {'gate us':>20} {'req/s':>20}")
    for (tree_name, variant, body), samples in results.items():
        print(
            f"{tree_name:<8} {variant:<12} {body:<7} {_us([s[0] for s in samples]):>20} "
            f"{_us([s[1] for s in samples]):>20} {_us([s[2] for s in samples]):>20}"
        )
    print("\nwhat each feature costs the appliance (all on minus that one off; medians):")
    for tree_name, _ in trees:
        for body in chosen:
            base = results.get((tree_name, "all", body))
            if base is None:
                continue
            everything = statistics.median(s[0] for s in base)
            parts = []
            for variant in variants:
                if variant != "all" and (tree_name, variant, body) in results:
                    cost = everything - statistics.median(s[0] for s in results[(tree_name, variant, body)])
                    parts.append(f"{variant.removeprefix('-') if variant != 'none' else 'all three'} {cost:.0f}")
            print(f"  {tree_name} {body}: all on {everything:.0f} us; " + ", ".join(parts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
