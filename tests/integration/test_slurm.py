"""The scheduler against a real single-node Slurm (slurmctld, slurmd, munge).

Jobs run the stand-in model server (the built-in ``standin`` job template, or
a test template that warms up slowly); requests go through a real gate
process in mux mode, as the appliance sends them.  Passes are driven by the
gate's own pings (the first test) or by ``sluice-cluster scheduler`` looping
once a second (the others, for pace).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import pytest

from policy.frames import GATE_KINDS, FrameDecoder, Kind, encode
from tests.conftest import ROOT
from tests.services.slurm import Slurm, slurm_cluster  # noqa: F401  (the session fixture)
from tests.services.standin import gate_tls, instance_stats

pytestmark = pytest.mark.integration

CHAT = {"model": "slurm-chat", "messages": [{"role": "user", "content": "hello from the tests"}], "max_tokens": 8}


# -- configuration -----------------------------------------------------------------


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    raise TypeError(value)


def standin_service(**changes: Any) -> dict[str, Any]:
    service: dict[str, Any] = {
        "backend": "slurm",
        "routes": ["chat", "completions"],
        "template": "standin",
        "vars": {"bind_host": "127.0.0.1", "token_delay": "0.01"},
        "time_limit": 10,
        "min_instances": 1,
        "max_instances": 1,
        "warmup_timeout": 30,
        "pending_timeout": 60,
        "backoff_base": 1,
        "backoff_max": 5,
        "hold_timeout": 60,
        "scale_down_delay": 600,
    }
    service.update(changes)
    return service


def write_config(
    directory: Path,
    slurm: Slurm,
    prefix: str,
    services: dict[str, dict[str, Any]],
    slurm_extra: dict[str, Any] | None = None,
) -> Path:
    lines = [
        "[gate]",
        'routing_table = "routing.json"',
        "request_timeout = 60",
        "[scheduler]",
        "pass_interval = 1",
        f'job_prefix = "{prefix}"',
        "[slurm]",
        f"slurm_conf = {_toml(str(slurm.conf))}",
        'node_host = "127.0.0.1"',
    ]
    lines += [f"{k} = {_toml(v)}" for k, v in (slurm_extra or {}).items()]
    for name, table in services.items():
        lines.append(f"[services.{json.dumps(name)}]")
        lines += [f"{k} = {_toml(v)}" for k, v in table.items()]
    path = directory / "cluster.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def read_state(config: Path) -> dict[str, Any]:
    try:
        return json.loads((config.parent / "state" / "slurm-state.json").read_text())
    except (OSError, ValueError):
        return {}


def table(config: Path, model: str = "slurm-chat") -> list[dict[str, Any]]:
    try:
        return json.loads((config.parent / "routing.json").read_text())["models"].get(model, [])
    except (OSError, ValueError, KeyError):
        return []


def wait_until(predicate: Any, timeout: float, interval: float = 0.2, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


async def async_wait_until(predicate: Any, timeout: float, interval: float = 0.2, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@contextlib.contextmanager
def scheduler_loop(config: Path) -> Iterator[Path]:
    """``sluice-cluster scheduler --config`` for the test's duration; yields its log file."""
    log = config.parent / "loop.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-I", "-m", "cluster.cli", "scheduler", "--config", str(config)],
            stdin=subprocess.DEVNULL, stdout=sink, stderr=sink, cwd=ROOT,
        )  # fmt: skip
    try:
        yield log
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def slurm(slurm_cluster: Slurm) -> Iterator[Slurm]:  # noqa: F811
    """The session's cluster, with every job cancelled after each test."""
    slurm_cluster.cancel_all()
    yield slurm_cluster
    slurm_cluster.cancel_all()


# -- a gate in mux mode --------------------------------------------------------------


@dataclass
class Reply:
    head: bytes = b""
    body: bytearray = field(default_factory=bytearray)
    end: bytes | None = None
    error: bytes | None = None
    head_at: float = 0.0
    first_body_at: float = 0.0
    done: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def ok(self) -> bool:
        return self.error is None and self.end is not None and self.head.startswith(b"200")

    def json(self) -> Any:
        return json.loads(self.body)


class Gate:
    """``sluice-cluster gate`` in mux mode, as the appliance drives it."""

    def __init__(self, config: Path) -> None:
        self._config = config
        self._streams: dict[int, Reply] = {}
        self._next = 1
        self._process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Gate:
        with (self._config.parent / "gate.log").open("ab") as log:
            self._process = await asyncio.create_subprocess_exec(
                sys.executable, "-I", "-m", "cluster.cli", "gate", "--config", str(self._config), "--local-pipe",
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=log,
                env={"PATH": os.environ["PATH"], "SSH_ORIGINAL_COMMAND": "sluice/1 mux"}, cwd=ROOT,
            )  # fmt: skip
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._process is not None and self._process.stdin is not None
        self._process.stdin.close()
        try:
            await asyncio.wait_for(self._process.wait(), 30)
        except TimeoutError:
            self._process.kill()
            await self._process.wait()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)

    async def _read(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        decoder = FrameDecoder(GATE_KINDS)
        while True:
            data = await self._process.stdout.read(65536)
            if not data:
                for reply in self._streams.values():
                    if not reply.done.is_set():
                        reply.error = b"gate_gone"
                        reply.done.set()
                return
            for frame in decoder.feed(data):
                reply = self._streams.get(frame.stream)
                if reply is None:
                    continue
                now = time.monotonic()
                if frame.kind is Kind.HEAD:
                    reply.head, reply.head_at = frame.payload, now
                elif frame.kind is Kind.BODY:
                    reply.first_body_at = reply.first_body_at or now
                    reply.body += frame.payload
                elif frame.kind is Kind.END:
                    reply.end = frame.payload
                    reply.done.set()
                elif frame.kind is Kind.ERROR:
                    reply.error = frame.payload
                    reply.done.set()

    def open(self, line: str, body: bytes = b"") -> Reply:
        assert self._process is not None and self._process.stdin is not None
        stream, self._next = self._next, self._next + 1
        reply = self._streams[stream] = Reply()
        self._process.stdin.write(encode(Kind.OPEN, stream, line.encode()))
        if body:
            self._process.stdin.write(encode(Kind.DATA, stream, body))
        return reply

    async def request(self, line: str, body: bytes = b"", timeout: float = 90.0) -> Reply:
        reply = self.open(line, body)
        await asyncio.wait_for(reply.done.wait(), timeout)
        return reply

    async def call(self, document: dict[str, Any], route: str = "chat", timeout: float = 90.0) -> Reply:
        data = json.dumps(document).encode()
        return await self.request(f"call {route} {document['model']} {len(data)}", data, timeout)

    async def ping(self) -> Reply:
        return await self.request("ping")

    async def ready(self) -> dict[str, bool]:
        listing = (await self.request("models")).json()
        return {m["id"]: m["ready"] for m in listing["data"]}

    async def status(self, model: str) -> dict[str, Any]:
        listing = (await self.request("models")).json()
        return next(m for m in listing["data"] if m["id"] == model)


async def async_wait_until_async(check: Any, timeout: float, what: str) -> None:
    """Poll the coroutine function ``check`` until it returns True."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def run_clients(
    gate: Gate, workers: int, stop: asyncio.Event, document: dict[str, Any]
) -> list[tuple[float, float, Reply]]:
    """``workers`` clients sending ``document`` back to back until ``stop``: (start, end, reply) each."""
    results: list[tuple[float, float, Reply]] = []

    async def worker() -> None:
        while not stop.is_set():
            started = time.monotonic()
            reply = await gate.call(document)
            results.append((started, time.monotonic(), reply))

    await asyncio.gather(*(worker() for _ in range(workers)))
    return results


def _served(instance: dict[str, Any], config: Path) -> int:
    return int(instance_stats(instance, config.parent / "gate-tls")["served"])


def _cmdlines() -> bytes:
    lines = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                with open(f"/proc/{entry}/cmdline", "rb") as handle:
                    lines.append(handle.read())
    return b"\n".join(lines)


# -- the tests -----------------------------------------------------------------------


def test_pings_submit_a_job_that_serves_through_the_gate(slurm: Slurm, tmp_path: Path) -> None:
    """No scheduler loop: the gate's keepalive pings alone run the passes."""
    config = write_config(tmp_path, slurm, "t1", {"slurm-chat": standin_service()})

    async def scenario() -> None:
        async with Gate(config) as gate:
            assert (await gate.ready()) == {"slurm-chat": False}
            deadline = time.monotonic() + 30
            while not (await gate.ready())["slurm-chat"]:
                assert time.monotonic() < deadline, "no instance became ready"
                assert (await gate.ping()).ok
                await asyncio.sleep(0.3)
            plain = await gate.call(CHAT)
            assert plain.ok and plain.head == b"200 json"
            assert plain.json()["choices"][0]["message"]["content"]
            stream = await gate.call({**CHAT, "stream": True})
            assert stream.ok and stream.head == b"200 sse" and stream.body.endswith(b"data: [DONE]\n\n")

    asyncio.run(scenario())
    jobs = slurm.active("t1.")
    assert [j["name"] for j in jobs] == ["t1.slurm-chat"] and jobs[0]["state"] == "RUNNING"
    state = read_state(config)
    (record,) = state["jobs"]
    assert record["id"] == jobs[0]["id"] and record["ready"] is not None
    # the per-job token is on no command line, in no log, and not in status output
    token = record["token"].encode()
    assert token not in _cmdlines()
    for log in (config.parent / "state" / "logs").iterdir():
        assert token not in log.read_bytes()
    status = subprocess.run(
        [sys.executable, "-m", "cluster.cli", "status", "--config", str(config)],
        capture_output=True,
        cwd=ROOT,
        timeout=30,
        check=True,
    ).stdout
    assert b"slurm-chat" in status and jobs[0]["id"].encode() in status and b"ROUTING TABLE" in status
    assert token not in status
    document = json.loads(subprocess.run(
        [sys.executable, "-m", "cluster.cli", "status", "--config", str(config), "--json"],
        capture_output=True, cwd=ROOT, timeout=30, check=True).stdout)  # fmt: skip
    assert document["services"][0]["ready"] == 1
    assert document["routing_table"]["slurm-chat"][0]["id"] == f"slurm:{jobs[0]['id']}"
    assert "token" not in json.dumps(document)


def test_scale_up_under_load_and_down_after(slurm: Slurm, tmp_path: Path) -> None:
    service = standin_service(
        min_instances=1, max_instances=3, requests_per_instance=2, scale_up_threshold=0.5,
        scale_down_threshold=0.2, load_window=3, scale_down_delay=3,
        vars={"bind_host": "127.0.0.1", "token_delay": "0.02"},
    )  # fmt: skip
    config = write_config(tmp_path, slurm, "t2", {"slurm-chat": service})
    slow = {**CHAT, "max_tokens": 40, "stream": True}

    async def scenario() -> list[tuple[float, float, Reply]]:
        async with Gate(config) as gate:
            await async_wait_until(lambda: len(table(config)) == 1, 30, what="the first instance")
            stop = asyncio.Event()
            load = asyncio.create_task(run_clients(gate, 6, stop, slow))
            await async_wait_until(lambda: len(table(config)) == 3, 30, what="three instances under load")
            await asyncio.sleep(3)  # all three serve for a while
            stop.set()
            results = await load
            instances = table(config)
            assert all(_served(i, config) > 0 for i in instances), "least-outstanding balancing left an instance idle"
            await async_wait_until(lambda: len(table(config)) == 1, 40, what="scale down to one")
            return results

    with scheduler_loop(config):
        results = asyncio.run(scenario())
        wait_until(lambda: len(slurm.active("t2.")) == 1, 20, what="surplus jobs to end")
    assert results and all(reply.ok for _, _, reply in results)
    cancelled = [j for j in slurm.jobs() if j["name"] == "t2.slurm-chat" and j["state"] == "CANCELLED"]
    assert len(cancelled) == 2  # the two surplus jobs, drained then cancelled


def test_scancel_from_outside_is_replaced_without_failing_other_requests(slurm: Slurm, tmp_path: Path) -> None:
    config = write_config(tmp_path, slurm, "t3", {"slurm-chat": standin_service(min_instances=2, max_instances=2)})
    document = {**CHAT, "max_tokens": 20}

    async def scenario() -> tuple[list[tuple[float, float, Reply]], float, str]:
        async with Gate(config) as gate:
            await async_wait_until(lambda: len(table(config)) == 2, 30, what="two instances")
            victim = table(config)[0]
            stop = asyncio.Event()
            load = asyncio.create_task(run_clients(gate, 4, stop, document))
            await asyncio.sleep(1.5)
            died = threading.Event()
            dead_at: list[float] = []

            tls = gate_tls(config.parent / "gate-tls")

            def watch() -> None:  # when the victim stops answering: requests after that must not fail
                while not died.is_set():
                    try:
                        httpx2.get(f"https://127.0.0.1:{victim['port']}/health", timeout=0.5, verify=tls)
                    except httpx2.HTTPError:
                        dead_at.append(time.monotonic())
                        return
                    time.sleep(0.01)

            watcher = threading.Thread(target=watch)
            watcher.start()
            job_id = victim["id"].split(":")[1]
            await asyncio.to_thread(slurm.run, "scancel", job_id)
            await async_wait_until(
                lambda: len(table(config)) == 2 and victim["id"] not in {i["id"] for i in table(config)},
                30, what="a replacement",
            )  # fmt: skip
            await asyncio.sleep(1.5)
            stop.set()
            results = await load
            died.set()
            watcher.join()
            assert dead_at, "the cancelled job never stopped answering"
            return results, dead_at[0], job_id

    with scheduler_loop(config):
        results, dead_at, job_id = asyncio.run(scenario())
    failed = [(start, reply.error) for start, _, reply in results if not reply.ok]
    assert len(results) > 20
    # only requests that were already under way when the victim died may fail
    assert all(start < dead_at for start, _ in failed), failed
    assert len(failed) <= 4
    states = {j["id"]: j["state"] for j in slurm.jobs() if j["name"] == "t3.slurm-chat"}
    assert states[job_id] == "CANCELLED" and list(states.values()).count("RUNNING") == 2


SLOW_START_TEMPLATE = """\
#!/bin/sh
# a stand-in that takes a while to load, like a large model
SLUICE_BACKEND_TOKEN='{token}'
export SLUICE_BACKEND_TOKEN
sleep {startup_delay}
exec {python} -m cluster.standin --host 127.0.0.1 --port {port} --model {model} --kind chat --token-delay 0.01 \\
    --ssl-keyfile {tls_keyfile} --ssl-certfile {tls_certfile} --ssl-ca-certs {tls_ca} --ssl-cert-reqs 2
"""


def slow_from_zero(slurm: Slurm, tmp_path: Path, prefix: str, **changes: Any) -> Path:
    """The config of one slow-starting stand-in at zero instances (a large model's cold start)."""
    (tmp_path / "slow.sbatch").write_text(SLOW_START_TEMPLATE)
    service = standin_service(
        min_instances=0, max_instances=1, hold_queue=2, hold_timeout=60, load_window=2, scale_down_delay=2,
        vars={"startup_delay": "6"}, **changes,
    )  # fmt: skip
    del service["template"]
    service["template_file"] = "slow.sbatch"
    return write_config(tmp_path, slurm, prefix, {"slurm-chat": service})


def test_scale_from_zero_holds_requests_until_ready(slurm: Slurm, tmp_path: Path) -> None:
    config = slow_from_zero(slurm, tmp_path, "t4")

    async def scenario() -> None:
        async with Gate(config) as gate:
            await asyncio.sleep(2.5)  # a few passes at zero
            assert table(config) == [] and slurm.active("t4.") == []
            assert (await gate.ready()) == {"slurm-chat": False}
            started = time.monotonic()
            streamed = asyncio.create_task(gate.call({**CHAT, "stream": True}))
            plain = asyncio.create_task(gate.call(CHAT))
            await asyncio.sleep(0.2)
            refused = await gate.call(CHAT, timeout=5)  # the per-model queue holds two
            assert refused.error == b"503 no_backend" and time.monotonic() - started < 2
            # the listing's counts (the appliance's metrics): two held, one instance starting
            counts: dict[str, Any] = {}

            async def census() -> bool:
                counts.update((await gate.request("models")).json()["data"][0])
                return counts["held"] == 2 and counts["instances"] == {"ready": 0, "starting": 1}

            await async_wait_until_async(census, 4, what="two held, one starting in the listing")
            stream_reply, plain_reply = await asyncio.gather(streamed, plain)
            assert plain_reply.ok and plain_reply.head == b"200 json"
            assert stream_reply.ok and stream_reply.head == b"200 sse"
            assert stream_reply.head_at - started < 2, "the HEAD of a held stream goes out at once"
            assert stream_reply.body.startswith(b": status="), "progress comments while held"
            assert stream_reply.body.endswith(b"data: [DONE]\n\n")
            assert time.monotonic() - started > 6  # it really waited for the start
            # idle again: back to zero
            await async_wait_until(lambda: table(config) == [], 30, what="scale back to zero")

    with scheduler_loop(config):
        asyncio.run(scenario())
        wait_until(lambda: slurm.active("t4.") == [], 20, what="the job to end")


FAKE_SQUEUE = """\
#!/bin/sh
# squeue, unless the test says to fail, print garbage, or hang
mode=$(cat {mode} 2>/dev/null)
case "$mode" in
  fail) echo "squeue: error: slurm_load_jobs error: Socket timed out on send/recv operation" >&2; exit 1 ;;
  garbage) echo "S|1|RUNN"; exit 0 ;;
  noise) echo "Welcome to the cluster! Maintenance on Friday."; exit 0 ;;
  hang) exec sleep 30 ;;
esac
exec squeue "$@"
"""


def test_failing_squeue_keeps_the_jobs(slurm: Slurm, tmp_path: Path) -> None:
    mode = tmp_path / "mode"
    fake = tmp_path / "fake-squeue"
    fake.write_text(FAKE_SQUEUE.format(mode=mode))
    fake.chmod(0o755)
    config = write_config(tmp_path, slurm, "t5", {"slurm-chat": standin_service()},
                          {"squeue": str(fake), "command_timeout": 2})  # fmt: skip

    async def scenario() -> None:
        async with Gate(config) as gate:
            await async_wait_until(lambda: len(table(config)) == 1, 30, what="the instance")
            (instance,) = table(config)
            jobs_before = slurm.active("t5.")
            for broken in ("fail", "garbage", "noise", "hang"):
                mode.write_text(broken)
                failures = read_state(config).get("observe_failures", 0)
                await async_wait_until(
                    lambda f=failures: read_state(config).get("observe_failures", 0) >= f + 2, 20,
                    what=f"two passes with squeue {broken}",
                )  # fmt: skip
                assert table(config) == [instance], broken
                assert slurm.active("t5.") == jobs_before, broken
                assert (await gate.call(CHAT)).ok
            mode.write_text("")
            await async_wait_until(lambda: read_state(config).get("observe_failures") == 0, 20, what="recovery")
            assert table(config) == [instance] and slurm.active("t5.") == jobs_before
            assert (await gate.call(CHAT)).ok

    with scheduler_loop(config) as log:
        asyncio.run(scenario())
    assert b'"event":"observe_failed"' in log.read_bytes()


HOLDER = """\
import sys, time
from pathlib import Path
from cluster.scheduler.lock import PassLock
lock = PassLock(Path(sys.argv[1]))
assert lock.acquire()
print("held", flush=True)
time.sleep(120)
"""


def test_a_dead_lock_holder_does_not_stop_scheduling(slurm: Slurm, tmp_path: Path) -> None:
    config = write_config(tmp_path, slurm, "t6", {"slurm-chat": standin_service()})
    once = [sys.executable, "-I", "-m", "cluster.cli", "scheduler", "--config", str(config), "--once"]
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    lock = state / "slurm.lock"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(lock)], stdout=subprocess.PIPE, cwd=ROOT)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
        # a live holder: the pass steps aside at once and changes nothing
        started = time.monotonic()
        assert subprocess.run(once, check=False, cwd=ROOT, timeout=30).returncode == 0
        assert time.monotonic() - started < 10 and slurm.active("t6.") == []
        status = json.loads(subprocess.run(
            [sys.executable, "-m", "cluster.cli", "status", "--config", str(config), "--json"],
            capture_output=True, cwd=ROOT, timeout=30, check=True).stdout)  # fmt: skip
        assert status["backends"]["slurm"]["lock_holder"]["pid"] == holder.pid
    finally:
        holder.kill()  # dies holding the lock: the lock file stays behind with its content
        holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()
    assert json.loads(lock.read_text())["pid"] == holder.pid
    assert subprocess.run(once, check=False, cwd=ROOT, timeout=30).returncode == 0
    assert [j["name"] for j in slurm.active("t6.")] == ["t6.slurm-chat"]


@pytest.mark.slow
def test_time_limits_renewal_leaves_no_gap_and_timeouts_are_replaced(slurm: Slurm, tmp_path: Path) -> None:
    """Two services with a one-minute limit: one renews 50 s before the end (so
    every ~10 s, with no moment without a ready instance); one does not renew,
    runs into TIMEOUT, and is replaced."""
    renewing = standin_service(time_limit=1, renew_before=50)
    expiring = standin_service(time_limit=1, renew_before=0)
    config = write_config(tmp_path, slurm, "t7", {"slurm-chat": renewing, "slurm-other": expiring})

    async def scenario() -> tuple[str, int, list[tuple[float, float, Reply]]]:
        async with Gate(config) as gate:
            await async_wait_until(lambda: table(config) and table(config, "slurm-other"), 30, what="both ready")
            first = table(config, "slurm-other")[0]["id"]
            stop = asyncio.Event()
            load = asyncio.create_task(run_clients(gate, 2, stop, {**CHAT, "max_tokens": 4}))
            gaps = 0
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                gaps += not table(config)
                other = table(config, "slurm-other")
                if other and other[0]["id"] != first:
                    break
                await asyncio.sleep(0.1)
            stop.set()
            results = await load
            assert table(config, "slurm-other")[0]["id"] != first, "the timed-out job was not replaced"
            return first, gaps, results

    with scheduler_loop(config) as log:
        first, gaps, results = asyncio.run(scenario())
    assert gaps == 0, "the renewing service had a moment without a ready instance"
    assert results and all(reply.ok for _, _, reply in results)
    states = [j["state"] for j in slurm.jobs() if j["name"] == "t7.slurm-chat"]
    assert states.count("CANCELLED") >= 3 and "TIMEOUT" not in states  # renewed, drained, cancelled
    other = [j["state"] for j in slurm.jobs() if j["name"] == "t7.slurm-other"]
    assert other.count("TIMEOUT") == 1 and other.count("RUNNING") == 1
    # The loop saw the job end: Slurm's state at that pass (TIMEOUT, or COMPLETING while its
    # node cleans up: which one depends on when the pass ran), or its failing health probes first.
    seen, job = log.read_text(), first.rsplit(":", 1)[-1]  # the table's instance id is "slurm:<job id>"
    assert f"ended {job} " in seen or f'"job":"{job}","reason":"unhealthy"' in seen, seen


def test_model_status_from_zero_to_ready(slurm: Slurm, tmp_path: Path) -> None:
    """scaled_to_zero, then starting with an estimate once a request arrives, then ready; the held
    stream shows its progress as SSE comments, then the answer."""
    config = slow_from_zero(slurm, tmp_path, "t9", warmup_timeout=120)

    async def scenario() -> None:
        async with Gate(config) as gate:
            await asyncio.sleep(2.5)  # a few passes at zero
            at_zero = await gate.status("slurm-chat")
            assert at_zero["status"] == "scaled_to_zero" and at_zero["instances"]["ready"] == 0
            assert at_zero["estimated_wait"] == 120  # nothing measured yet: the warm-up bound
            streamed = asyncio.create_task(gate.call({**CHAT, "stream": True}))
            seen: list[dict[str, Any]] = []

            async def starting() -> bool:
                seen.append(await gate.status("slurm-chat"))
                return seen[-1]["status"] == "starting"

            deadline = time.monotonic() + 20
            while not await starting():
                assert time.monotonic() < deadline, seen
                await asyncio.sleep(0.3)
            assert seen[-1]["estimated_wait"] >= 5 and seen[-1]["instances"]["ready"] == 0
            reply = await streamed
            assert reply.ok and reply.head == b"200 sse"
            comments = [line for line in reply.body.split(b"\n") if line.startswith(b": status=")]
            assert comments and all(b"estimated_wait=" in c for c in comments), reply.body[:300]
            assert any(c.startswith(b": status=starting") for c in comments), comments
            assert reply.body.endswith(b"data: [DONE]\n\n")
            ready = await gate.status("slurm-chat")
            assert ready["status"] == "ready" and ready["instances"]["ready"] == 1 and "estimated_wait" not in ready

    with scheduler_loop(config):
        asyncio.run(scenario())
