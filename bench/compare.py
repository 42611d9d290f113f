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

Two more kinds of row: the pipe path with one feature off at a time (quotas,
accounting, request logs, then all three), whose difference from the full
configuration in the same round is that feature's CPU per request (metrics
cannot be turned off, so their per-request updates are timed in process);
and sealed requests (bodies sealed by the SDK's code beforehand, each sent
once, since a replayed one is refused), printed as their CPU per request over
a clear one's, round by round, so a cost that grows with traffic shows.

    sudo .venv/bin/python bench/compare.py [--litellm /path/to/venv/bin/litellm]
        [--sshd /usr/sbin/sshd] [--rounds 3] [--seconds 5] [--no-features] [--no-exec]
        [--plot compare.png]

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
import io
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
from contextlib import ExitStack, contextmanager, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _load import free_port, wrk, wrk_script  # noqa: E402

if TYPE_CHECKING:
    from tests.services.sshd import Sshd

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
    base: str = ""  # Sluice's base URL (its sealed routes and keys hang off it)
    plan: list[tuple[str, int]] = field(default_factory=list)  # (body, connections) per round

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


# The features a deployment runs on every request, each of which a feature row turns off.
FEATURES = ("quotas", "accounting", "request logs")


def _appliance_toml(workdir: Path, name: str, port: int, cluster: str, key: str, off: tuple[str, ...] = ()) -> Path:
    (workdir / "quotas.toml").write_text(QUOTAS)
    (workdir / "metrics.token").write_text(secrets.token_urlsafe(24))
    config = workdir / f"{name}.toml"
    lines = ["[server]", 'host = "127.0.0.1"', f"port = {port}", "", cluster, ""]
    (workdir / "access.toml").write_text(f'[groups.bench]\nmodels = ["{MODEL}"]\n')
    digest = hashlib.sha256(key.encode()).hexdigest()
    lines += ["[[api_keys]]", 'user = "bench"', f'key_id = "{name}"', f'sha256 = "{digest}"', 'groups = ["bench"]', ""]
    lines += ["[access]", 'policy = "access.toml"', ""]  # the model granted to a group, as deployed (default deny)
    if "quotas" in off:
        lines += ["[quotas]", "enabled = false", ""]
    else:
        lines += ["[quotas]", 'policy = "quotas.toml"', 'storage = "memory://"', ""]
    if "accounting" not in off:
        lines += ["[accounting]", 'backend = "sqlite"', f'path = "{workdir / (name + "-usage.db")}"', ""]
    lines += ["[metrics]", 'token_file = "metrics.token"', ""]
    lines += ["[logging]", 'level = "info"', f"requests = {'false' if 'request logs' in off else 'true'}", ""]
    config.write_text("\n".join(lines))
    return config


@contextmanager
def sluice(
    workdir: Path,
    name: str,
    cluster: str,
    roles: Callable[[int], Callable[[], dict[str, list[int]]]],
    off: tuple[str, ...] = (),
) -> Iterator[Gateway]:
    key = "sk-bench-" + secrets.token_urlsafe(24)
    port = free_port()
    config = _appliance_toml(workdir, name, port, cluster, key, off)
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
        yield Gateway(name, f"http://127.0.0.1:{port}/v1/chat/completions", key, roles(process.pid), f"http://127.0.0.1:{port}")
    finally:
        _stop(process)
        log.close()


def _pipe_cluster(gate_config: Path) -> str:
    argv = [sys.executable, "-m", "cluster.cli", "gate", "--config", str(gate_config), "--local-pipe"]
    command = ", ".join(f'"{a}"' for a in argv)
    return f'[[clusters]]\nname = "local"\ntransport = "local"\nmode = "mux"\ngate_command = [{command}]'


def _ssh_cluster(sshd: Sshd, mode: str) -> str:
    return "\n".join(
        [
            "[[clusters]]",
            'name = "hpc"',
            'transport = "ssh"',
            f'mode = "{mode}"',
            'host = "127.0.0.1"',
            f"port = {sshd.port}",
            'user = "sluicegate"',
            f'client_key = "{sshd.client_key}"',
            f'known_hosts = "{sshd.known_hosts}"',
            "connections = 2",
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
        _wait_ok(f"http://127.0.0.1:{port}/health/liveliness", timeout=300)  # slow to import on a busy machine
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


def _sampled(gateway: Gateway, seconds: int, run: Callable[[], dict[str, float]]) -> Sample:
    """One wrk run, with the CPU each of the gateway's processes spent on it, per request."""
    before = gateway.cpu()
    result = run()
    after = gateway.cpu()
    requests = max(result["rps"] * seconds, 1.0)
    cpu = {role: (after.get(role, 0.0) - before.get(role, 0.0)) * 1000 / requests for role in after}
    return Sample(result["rps"], result["p50"], cpu)


def measure(gateway: Gateway, body: str, connections: int, seconds: int, workdir: Path) -> Sample:
    return _sampled(gateway, seconds, lambda: wrk(gateway.url, gateway.key, connections, seconds, workdir, body=body))


# -- sealed requests ----------------------------------------------------------------------------

# wrk sends each pre-sealed body once (a replayed one is refused): the bodies are read from a
# file of hex-length-prefixed records, and thread k of n sends records k, k+n, k+2n, ...
SEALED_LUA = """local path, threads, counter = "%s", %d, 0
function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
end
function init(args)
  bodies = {}
  local f = assert(io.open(path, "rb"))
  local data = f:read("*a")
  f:close()
  local pos = 1
  while pos <= #data do
    local size = tonumber(data:sub(pos, pos + 7), 16)
    bodies[#bodies + 1] = data:sub(pos + 8, pos + 7 + size)
    pos = pos + 8 + size
  end
  index = id + 1
  headers = {["Content-Type"] = "message/ohttp-req", ["Authorization"] = "Bearer %s", ["Sluice-Model"] = "%s"}
end
function request()
  local body = bodies[index]
  index = index + threads
  return wrk.format("POST", nil, headers, body)
end
"""


def _seal_bodies(gateway: Gateway, count: int, path: Path) -> None:
    """``count`` sealed chat requests to the gate's served key, padded as the SDK pads, in ``path``."""
    import httpx2

    from sluice_sdk.bhttp import Request, encode_request
    from sluice_sdk.client import with_date
    from sluice_sdk.keyconfig import decode_key_configs
    from sluice_sdk.ohttp import encapsulate_request
    from sluice_sdk.transport import DEFAULT_PAD_TO, _padded

    answer = httpx2.get(f"{gateway.base}/v1/sealed/keys", timeout=10)
    config = next(c for c in decode_key_configs(answer.content) if c.usable)
    headers = ((b"content-type", b"application/json"),)
    inner = Request(b"POST", b"https", b"sluice", b"/v1/chat/completions", headers, PLAIN.encode())
    with path.open("wb") as out:
        for _ in range(count):
            body, _opener = encapsulate_request(config, _padded(encode_request(with_date(inner)), DEFAULT_PAD_TO))
            out.write(b"%08x" % len(body) + body)


def measure_sealed(gateway: Gateway, connections: int, seconds: int, workdir: Path, expected_rps: float) -> Sample:
    bodies = workdir / f"sealed-{gateway.key[-8:]}.bin"
    _seal_bodies(gateway, int(expected_rps * seconds * 2) + 2000, bodies)
    script = workdir / "sealed.lua"
    script.write_text(SEALED_LUA % (bodies, 1 if connections == 1 else 2, gateway.key, MODEL))
    url = f"{gateway.base}/v1/sealed/chat/completions"
    return _sampled(gateway, seconds, lambda: wrk_script(url, connections, seconds, script))


def _median_range(values: list[float], digits: int = 0) -> str:
    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def report(results: dict[tuple[str, str, int], list[Sample]], rounds: int, seconds: int, plot: Path | None) -> None:
    print(f"\n{os.cpu_count()} cores; {rounds} interleaved rounds of {seconds} s per row; median (min-max)")
    print(f"\n{'path':<44} {'body':<8} {'conns':>5} {'req/s':>22} {'p50 ms':>20} {'gateway CPU ms/request':<40}")
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
            f"{name:<44} {body:<8} {connections:>5} {_median_range([s.rps for s in samples]):>22} "
            f"{_median_range([s.p50 for s in samples], 3):>20} {cpu}"
        )
    print()
    for (name, body, connections), samples in results.items():
        if connections == 1 and name != "backend directly" and body in direct_p50:
            added = statistics.median(s.p50 for s in samples) - direct_p50[body]
            print(f"{name} ({body}): adds {added:.3f} ms at p50 over the backend directly, 1 connection")
    for other in (LITELLM, EXEC):
        for body in ("plain", "stream"):
            mine = [s.rps for (n, b, c), ss in results.items() if n == SSH and b == body and c > 1 for s in ss]
            theirs = [s.rps for (n, b, c), ss in results.items() if n == other and b == body and c > 1 for s in ss]
            if mine and theirs and statistics.median(theirs) > 0:
                print(
                    f"{SSH} / {other} ({body}, many connections): "
                    f"{statistics.median(mine) / statistics.median(theirs):.1f}x requests/s"
                )
    _feature_costs(results)
    _sealed_ratios(results)
    if plot is not None:
        _plot(results, plot)


def _total(sample: Sample) -> float:
    return sum(sample.cpu_ms.values())


def _per_round(
    results: dict[tuple[str, str, int], list[Sample]], row: tuple[str, str, int], base: tuple[str, str, int]
) -> list[tuple[Sample, Sample]]:
    """The samples of ``row`` beside those of ``base`` taken in the same round."""
    return list(zip(results.get(row, []), results.get(base, []), strict=False))


def _feature_costs(results: dict[tuple[str, str, int], list[Sample]]) -> None:
    """Each feature's CPU per request: the full configuration less the one with that feature off, round by round."""
    full = next(((n, b, c) for (n, b, c) in results if n == PIPE and b == "plain" and c > 1), None)
    if full is None or not any(n == _feature_row(ALL_OFF) for (n, _, _) in results):
        return  # no feature rows (--no-features)
    print(f"\nCPU per plain request each feature costs ({PIPE}, {full[2]} connections; full less feature off, per round):")
    for feature in (*FEATURES, ALL_OFF):
        pairs = _per_round(results, (_feature_row(feature), *full[1:]), full)
        if not pairs:
            continue
        cost = [_total(on) - _total(off) for off, on in pairs]
        appliance = [on.cpu_ms.get("appliance", 0.0) - off.cpu_ms.get("appliance", 0.0) for off, on in pairs]
        print(f"  {feature:<13} {_median_range(cost, 3)} ms in all, {_median_range(appliance, 3)} ms of it in the appliance")
    print(f"  metrics       {_metrics_cost():.3f} ms (always counted, so measured in process: a plain request's updates)")


def _metrics_cost(requests: int = 20000) -> float:
    """Milliseconds of CPU the metric updates of one plain request take (the calls the middleware and meter make)."""
    from appliance.metrics import Metrics

    metrics = Metrics()
    started = time.process_time()
    for _ in range(requests):
        series = metrics.series("chat", MODEL)  # as the meter does (appliance/quotas/meter.py)
        series.in_flight.inc()
        series.requests(200).inc()
        series.latency.observe(0.004)
        series.token_rate.observe(2000.0)
        series.prompt_tokens.inc(12)
        series.completion_tokens.inc(8)
        series.in_flight.dec()
        metrics.http_requests.labels("/v1/chat/completions", "200").inc()
        metrics.http_duration.labels("/v1/chat/completions").observe(0.004)
    return (time.process_time() - started) * 1000 / requests


def _sealed_ratios(results: dict[tuple[str, str, int], list[Sample]]) -> None:
    """Gateway CPU per sealed request over a clear one, per round (flat over rounds: no cost that grows with traffic)."""
    for name, body, connections in list(results):
        if body != "sealed":
            continue
        pairs = _per_round(results, (name, body, connections), (name, "plain", connections))
        ratios = [_total(sealed) / max(_total(clear), 1e-9) for sealed, clear in pairs]
        rounds = ", ".join(f"{_total(sealed):.3f}" for sealed, _ in pairs)
        print(
            f"{name}: sealed / clear gateway CPU per request {_median_range(ratios, 2)}x; "
            f"sealed ms per request by round: {rounds}"
        )


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


PIPE = "Sluice over pipes (mux)"
SSH = "Sluice over real sshd (mux)"
EXEC = "SSH exec per request (exec mode)"
LITELLM = "LiteLLM proxy, 2 workers"
ALL_OFF = "all three"


def _feature_row(feature: str) -> str:
    return f"{PIPE}, {feature} off"


def _create_sealed_keys(gate_config: Path) -> None:
    """The gate's key for sealed requests, made by the cluster side's own command (as the demo does)."""
    argv = [sys.executable, "-m", "cluster.cli", "keys", "create", "--config", str(gate_config)]
    subprocess.run(argv, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL)


def _gateways(stack: ExitStack, args: argparse.Namespace, workdir: Path, api_base: str, token: str) -> list[Gateway]:
    """Every path, started: the backend itself, Sluice over pipes (and with features off), over sshd, LiteLLM."""
    n = args.connections
    clear = [("plain", 1), ("plain", n), ("stream", n)]
    gate_config = workdir / "cluster.toml"
    (workdir / "chat.token").write_text(token)
    gate_toml = (
        f'[gate]\nrouting_table = "routing.json"\n[[backends]]\nmodel = "{MODEL}"\n'
        f'url = "{api_base}"\nroutes = ["chat", "completions"]\ntoken_file = "chat.token"\n'
    )
    gate_config.write_text(gate_toml)
    _create_sealed_keys(gate_config)
    gateways = [Gateway("backend directly", f"{api_base}/v1/chat/completions", token, plan=clear)]

    def started(
        name: str,
        label: str,
        cluster: str,
        roles: Callable[[int], Callable[[], dict[str, list[int]]]],
        plan: list[tuple[str, int]],
        off: tuple[str, ...] = (),
    ) -> None:
        gateway = stack.enter_context(sluice(workdir, name, cluster, roles, off))
        gateway.name, gateway.plan = label, plan
        gateways.append(gateway)

    started("pipe", PIPE, _pipe_cluster(gate_config), _serve_roles, [*clear, ("sealed", n)])
    if args.features:
        for feature in FEATURES:
            started(
                f"pipe-no-{feature.split()[0]}",
                _feature_row(feature),
                _pipe_cluster(gate_config),
                _serve_roles,
                [("plain", n)],
                (feature,),
            )
        started("pipe-bare", _feature_row(ALL_OFF), _pipe_cluster(gate_config), _serve_roles, [("plain", n)], FEATURES)
    if os.geteuid() == 0 and Path(args.sshd).exists():
        from tests.services import sshd as sshd_service

        sshd_service.SSHD = args.sshd
        server = sshd_service.Sshd(gate_toml, {"chat.token": token})
        stack.callback(server.stop)
        server.create_sealed_keys()
        listener = int((server.dir / "sshd.pid").read_text())

        def ssh_roles(pid: int) -> Callable[[], dict[str, list[int]]]:
            return _ssh_roles(pid, listener)

        started("ssh-mux", SSH, _ssh_cluster(server, "mux"), ssh_roles, [*clear, ("sealed", n)])
        if args.exec:
            started("ssh-exec", EXEC, _ssh_cluster(server, "exec"), ssh_roles, clear)
    else:
        print("no SSH rows: run as root with sshd installed", file=sys.stderr)
    if args.litellm:
        gateway = stack.enter_context(litellm(args.litellm, workdir, api_base, token))
        gateway.plan = clear
        gateways.append(gateway)
    return gateways


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--litellm", help="the litellm executable of a LiteLLM installation")
    parser.add_argument("--sshd", default="/usr/sbin/sshd", help="sshd to run the gate under (needs root)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--no-features", dest="features", action="store_false", help="leave out the feature-cost rows")
    parser.add_argument("--no-exec", dest="exec", action="store_false", help="leave out the exec-per-request rows")
    parser.add_argument("--plot", type=Path)
    parser.add_argument("--readme", type=Path, help="also write the printout into this file's performance block")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    workdir = Path(tempfile.mkdtemp(prefix="sluice-compare-"))
    results: dict[tuple[str, str, int], list[Sample]] = {}
    with ExitStack() as stack:
        api_base, token = stack.enter_context(backend(workdir))
        gateways = _gateways(stack, args, workdir, api_base, token)
        for gateway in gateways:  # warm-up
            wrk(gateway.url, gateway.key, 4, 1, workdir, body=PLAIN)
        for _ in range(args.rounds):
            for gateway in gateways:
                for body_name, connections in gateway.plan:
                    if body_name == "sealed":
                        clear_rps = results[(gateway.name, "plain", connections)][-1].rps
                        sample = measure_sealed(gateway, connections, args.seconds, workdir, clear_rps)
                    else:
                        body = STREAMED if body_name == "stream" else PLAIN
                        sample = measure(gateway, body, connections, args.seconds, workdir)
                    results.setdefault((gateway.name, body_name, connections), []).append(sample)
    shutil.rmtree(workdir, ignore_errors=True)
    printout = io.StringIO()
    with redirect_stdout(printout):
        report(results, args.rounds, args.seconds, args.plot)
    print(printout.getvalue(), end="")
    if args.readme is not None:
        _write_readme(args.readme, printout.getvalue(), args)
    return 0


README_BEGIN = "<!-- bench/compare.py output: begin -->"
README_END = "<!-- bench/compare.py output: end -->"


def _machine() -> str:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "unknown CPU",
    )
    memory = int(Path("/proc/meminfo").read_text().split()[1]) // (1024 * 1024)
    return f"{os.cpu_count()} cores ({model}), {memory} GiB, load generator on the same cores"


def _write_readme(path: Path, printout: str, args: argparse.Namespace) -> None:
    """Replace the block between the README's markers with this run: when, where, how, and what it printed."""
    text = path.read_text()
    if README_BEGIN not in text or README_END not in text:
        raise SystemExit(f"{path} has no {README_BEGIN} ... {README_END} block to replace")
    options = f"--rounds {args.rounds} --seconds {args.seconds} --connections {args.connections}"
    block = (
        f"{README_BEGIN}\n"
        f"Run {time.strftime('%Y-%m-%d', time.gmtime())} on {_machine()}:\n\n"
        f"```\nsudo .venv/bin/python bench/compare.py --litellm LITELLM {options}\n{printout.strip()}\n```\n"
        f"{README_END}"
    )
    head, rest = text.split(README_BEGIN, 1)
    path.write_text(head + block + rest.split(README_END, 1)[1])
    print(f"{path}: performance block rewritten")


if __name__ == "__main__":
    sys.exit(main())
