"""Side by side: Sluice over real sshd and over pipes, LiteLLM, and one SSH exec per request.

Every path talks to the same backend (one stand-in model server, no token
delay) with the same body, and every Sluice path runs with deployment-like
settings: quotas in memory (a policy high enough never to refuse), SQLite
accounting, metrics and JSON request logs on.  Rounds are interleaved (each
round runs every path once), and the table prints the median with the min-max
of the rounds, the p50 latency each path adds over calling the backend
directly with one connection, the gateway's CPU time per request for each of
its processes (read from /proc before and after each run; children that exit,
such as exec-mode gates, are counted through their parent's cutime/cstime),
and the ratios of Sluice over SSH to the other gateways.

    sudo .venv/bin/python bench/compare.py [--litellm /path/to/venv/bin/litellm]
        [--sshd /usr/sbin/sshd] [--rounds 3] [--seconds 5] [--plot compare.png]

Installs nothing.  Without --litellm the LiteLLM rows are left out; without
sshd (or root, which the sshd set-up needs) the SSH rows are.  --plot needs
matplotlib (the `plot` extra).  All traffic goes to 127.0.0.1, for a bounded
time.  The load generator (wrk) shares the cores with what it measures: the
printout says how many cores there were and how much the rounds varied.

"SSH exec per request" is Sluice's own exec mode (one SSH channel and one
Python gate process per request); the published design ran a shell script
with curl per request, which starts faster than a Python gate, so this row
is a pessimistic stand-in for it.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _load import free_port, wrk  # noqa: E402

MODEL = "standin-chat"
PLAIN = '{"model":"standin-chat","messages":[{"role":"user","content":"Say hello to the benchmark"}],"max_tokens":8}'
STREAMED = PLAIN[:-1] + ',"stream":true}'
# A policy no benchmark reaches: the quota machinery runs on every request, but never refuses.
QUOTAS = "[user]\nrequests_per_minute = 100000000\ntokens_per_minute = 100000000\nconcurrent_requests = 100000\n"
TICK = os.sysconf("SC_CLK_TCK")


# -- CPU accounting from /proc ----------------------------------------------------------------


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            tree.setdefault(int(fields[1]), []).append(int(entry))
    return tree


def _cpu_seconds(pid: int) -> float:
    """utime + stime of the process and of its children that have exited and been waited for."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(fields[i]) for i in (11, 12, 13, 14)) / TICK


def _tree(pid: int, tree: dict[int, list[int]]) -> list[int]:
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo += tree.get(current, [])
    return found


@dataclass
class Gateway:
    """A running path: its URL, the key wrk sends, and its processes by role."""

    name: str
    url: str
    key: str
    roles: Callable[[], dict[str, list[int]]] = field(default=lambda: {})

    def cpu(self) -> dict[str, float]:
        return {role: sum(_cpu_seconds(pid) for pid in pids) for role, pids in self.roles().items()}


def _serve_roles(serve: int) -> Callable[[], dict[str, list[int]]]:
    """`sluice serve`: the appliance process itself, and the gates it runs as children (pipe transport)."""

    def roles() -> dict[str, list[int]]:
        tree = _children()
        return {"appliance": [serve], "gate": [p for p in _tree(serve, tree) if p != serve]}

    return roles


def _ssh_roles(serve: int, sshd_pid: int) -> Callable[[], dict[str, list[int]]]:
    """Over SSH: the appliance, and sshd with the gates it starts (one tree: exited gates land in sshd's cutime)."""

    def roles() -> dict[str, list[int]]:
        return {"appliance": [serve], "sshd+gate": _tree(sshd_pid, _children())}

    return roles


# -- the paths --------------------------------------------------------------------------------


def _wait_ok(url: str, timeout: float = 60) -> None:
    import httpx2

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx2.get(url, timeout=5).status_code == 200:
                return
        except httpx2.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{url} did not answer 200 in {timeout:.0f} s")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def backend(workdir: Path) -> Iterator[tuple[str, str]]:
    token = secrets.token_urlsafe(24)
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "cluster.standin", "--port", str(port), "--model", MODEL, "--kind", "chat"],
        stdout=subprocess.PIPE,
        env={**os.environ, "SLUICE_BACKEND_TOKEN": token},
        cwd=ROOT,
    )
    assert process.stdout is not None
    process.stdout.readline()
    try:
        yield f"http://127.0.0.1:{port}", token
    finally:
        _stop(process)


def _appliance_toml(workdir: Path, name: str, port: int, cluster: str, key: str) -> Path:
    (workdir / "quotas.toml").write_text(QUOTAS)
    (workdir / "metrics.token").write_text(secrets.token_urlsafe(24))
    config = workdir / f"{name}.toml"
    config.write_text(
        "\n".join(
            [
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
                "",
                "[quotas]",
                'policy = "quotas.toml"',
                'storage = "memory://"',
                "",
                "[accounting]",
                'backend = "sqlite"',
                f'path = "{workdir / (name + "-usage.db")}"',
                "",
                "[metrics]",
                'token_file = "metrics.token"',
                "",
                "[logging]",
                'level = "info"',
                "requests = true",
                "",
            ]
        )
    )
    return config


@contextmanager
def sluice(
    workdir: Path,
    name: str,
    cluster: str,
    roles: Callable[[int], Callable[[], dict[str, list[int]]]],
) -> Iterator[Gateway]:
    key = "sk-bench-" + secrets.token_urlsafe(24)
    port = free_port()
    config = _appliance_toml(workdir, name, port, cluster, key)
    log = (workdir / f"{name}.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "appliance.cli", "serve", "--config", str(config)],
        cwd=workdir,
        stdout=log,
        stderr=log,
        stdin=subprocess.DEVNULL,
    )
    try:
        _wait_ok(f"http://127.0.0.1:{port}/readyz")
        yield Gateway(name, f"http://127.0.0.1:{port}/v1/chat/completions", key, roles(process.pid))
    finally:
        _stop(process)
        log.close()


def _pipe_cluster(gate_config: Path) -> str:
    argv = [sys.executable, "-m", "cluster.cli", "gate", "--config", str(gate_config), "--local-pipe"]
    command = ", ".join(f'"{a}"' for a in argv)
    return f'[[clusters]]\nname = "local"\ntransport = "local"\nmode = "mux"\ngate_command = [{command}]'


def _ssh_cluster(sshd: object, mode: str) -> str:
    return "\n".join(
        [
            "[[clusters]]",
            'name = "hpc"',
            'transport = "ssh"',
            f'mode = "{mode}"',
            'host = "127.0.0.1"',
            f"port = {sshd.port}",
            'user = "sluicegate"',
            f'client_key = "{sshd.client_key}"',  # type: ignore[attr-defined]
            f'known_hosts = "{sshd.known_hosts}"',
            "connections = 2",  # type: ignore[attr-defined]
        ]
    )


@contextmanager
def litellm(executable: str, workdir: Path, api_base: str, token: str) -> Iterator[Gateway]:
    key = "sk-litellm-" + secrets.token_urlsafe(24)
    port = free_port()
    config = workdir / "litellm.yaml"
    config.write_text(
        f"model_list:\n  - model_name: {MODEL}\n    litellm_params:\n      model: openai/{MODEL}\n"
        f"      api_base: {api_base}/v1\n      api_key: {token}\ngeneral_settings:\n  master_key: {key}\n"
    )
    log = (workdir / "litellm.log").open("wb")
    process = subprocess.Popen(
        [executable, "--config", str(config), "--host", "127.0.0.1", "--port", str(port), "--num_workers", "2"],
        cwd=workdir,
        stdout=log,
        stderr=log,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "LITELLM_LOG": "ERROR"},
        start_new_session=True,
    )
    try:
        _wait_ok(f"http://127.0.0.1:{port}/health/liveliness", timeout=120)
        yield Gateway(
            "LiteLLM proxy, 2 workers",
            f"http://127.0.0.1:{port}/v1/chat/completions",
            key,
            lambda: {"litellm": _tree(process.pid, _children())},
        )
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        log.close()


# -- runs and the table -----------------------------------------------------------------------


@dataclass
class Sample:
    rps: float
    p50: float
    cpu_ms: dict[str, float]


def measure(gateway: Gateway, body: str, connections: int, seconds: int, workdir: Path) -> Sample:
    before = gateway.cpu()
    result = wrk(gateway.url, gateway.key, connections, seconds, workdir, body=body)
    after = gateway.cpu()
    requests = max(result["rps"] * seconds, 1.0)
    cpu = {role: (after.get(role, 0.0) - before.get(role, 0.0)) * 1000 / requests for role in after}
    return Sample(result["rps"], result["p50"], cpu)


def _median_range(values: list[float], digits: int = 0) -> str:
    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def report(results: dict[tuple[str, str, int], list[Sample]], rounds: int, seconds: int, plot: Path | None) -> None:
    print(f"\n{os.cpu_count()} cores; {rounds} interleaved rounds of {seconds} s per row; median (min-max)")
    print(f"\n{'path':<34} {'body':<8} {'conns':>5} {'req/s':>22} {'p50 ms':>20} {'gateway CPU ms/request':<40}")
    direct_p50 = {
        body: statistics.median(s.p50 for s in samples)
        for (name, body, c), samples in results.items()
        if name == "backend directly" and c == 1
    }
    for (name, body, connections), samples in results.items():
        roles = sorted({role for sample in samples for role in sample.cpu_ms})
        cpu = ", ".join(f"{role} {statistics.median(s.cpu_ms.get(role, 0.0) for s in samples):.3f}" for role in roles)
        total = statistics.median(sum(s.cpu_ms.values()) for s in samples)
        cpu = f"{total:.3f} ({cpu})" if roles else "-"
        print(
            f"{name:<34} {body:<8} {connections:>5} {_median_range([s.rps for s in samples]):>22} "
            f"{_median_range([s.p50 for s in samples], 3):>20} {cpu}"
        )
    print()
    for (name, body, connections), samples in results.items():
        if connections == 1 and name != "backend directly" and body in direct_p50:
            added = statistics.median(s.p50 for s in samples) - direct_p50[body]
            print(f"{name} ({body}): adds {added:.3f} ms at p50 over the backend directly, 1 connection")
    ssh = "Sluice over real sshd (mux)"
    for other in ("LiteLLM proxy, 2 workers", "SSH exec per request (exec mode)"):
        for body in ("plain", "stream"):
            mine = [s.rps for (n, b, c), ss in results.items() if n == ssh and b == body and c > 1 for s in ss]
            theirs = [s.rps for (n, b, c), ss in results.items() if n == other and b == body and c > 1 for s in ss]
            if mine and theirs:
                print(
                    f"{ssh} / {other} ({body}, many connections): "
                    f"{statistics.median(mine) / statistics.median(theirs):.1f}x requests/s"
                )
    if plot is not None:
        _plot(results, plot)


def _plot(results: dict[tuple[str, str, int], list[Sample]], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("no chart: matplotlib is missing (pip install the `plot` extra)", file=sys.stderr)
        return
    rows = [(f"{n}\n{b}", statistics.median(s.rps for s in ss)) for (n, b, c), ss in results.items() if c > 1]
    figure, axis = plt.subplots(figsize=(10, 0.5 + 0.5 * len(rows)))
    axis.barh([r[0] for r in rows], [r[1] for r in rows])
    axis.set_xlabel("requests/s (median of rounds)")
    axis.invert_yaxis()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    print(f"chart: {path}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--litellm", help="the litellm executable of a LiteLLM installation")
    parser.add_argument("--sshd", default="/usr/sbin/sshd", help="sshd to run the gate under (needs root)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--plot", type=Path)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    workdir = Path(tempfile.mkdtemp(prefix="sluice-compare-"))
    results: dict[tuple[str, str, int], list[Sample]] = {}
    with ExitStack() as stack:
        api_base, token = stack.enter_context(backend(workdir))
        gate_config = workdir / "cluster.toml"
        (workdir / "chat.token").write_text(token)
        gate_toml = (
            f'[gate]\nrouting_table = "routing.json"\n[[backends]]\nmodel = "{MODEL}"\n'
            f'url = "{api_base}"\nroutes = ["chat", "completions"]\ntoken_file = "chat.token"\n'
        )
        gate_config.write_text(gate_toml)
        gateways = [Gateway("backend directly", f"{api_base}/v1/chat/completions", token)]
        gateways.append(stack.enter_context(sluice(workdir, "pipe", _pipe_cluster(gate_config), _serve_roles)))
        gateways[-1].name = "Sluice over pipes (mux)"
        if os.geteuid() == 0 and Path(args.sshd).exists():
            from tests.services import sshd as sshd_service

            sshd_service.SSHD = args.sshd
            server = sshd_service.Sshd(gate_toml, {"chat.token": token})
            stack.callback(server.stop)
            listener = int((server.dir / "sshd.pid").read_text())
            for mode, label in (("mux", "Sluice over real sshd (mux)"), ("exec", "SSH exec per request (exec mode)")):
                gateway = stack.enter_context(
                    sluice(workdir, f"ssh-{mode}", _ssh_cluster(server, mode), lambda pid: _ssh_roles(pid, listener))
                )
                gateway.name = label
                gateways.append(gateway)
        else:
            print("no SSH rows: run as root with sshd installed", file=sys.stderr)
        if args.litellm:
            gateways.append(stack.enter_context(litellm(args.litellm, workdir, api_base, token)))
        for gateway in gateways:  # warm-up
            wrk(gateway.url, gateway.key, 4, 1, workdir, body=PLAIN)
        for _ in range(args.rounds):
            for gateway in gateways:
                plan = [("plain", PLAIN, 1), ("plain", PLAIN, args.connections), ("stream", STREAMED, args.connections)]
                for body_name, body, connections in plan:
                    sample = measure(gateway, body, connections, args.seconds, workdir)
                    results.setdefault((gateway.name, body_name, connections), []).append(sample)
    shutil.rmtree(workdir, ignore_errors=True)
    report(results, args.rounds, args.seconds, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
