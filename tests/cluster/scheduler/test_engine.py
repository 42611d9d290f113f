"""A Slurm pass end to end against a scripted Slurm (no daemons), on a simulated clock.

The engine and the Slurm backend are the real ones; only the three Slurm
commands are replaced by :class:`FakeCli`, and health checks by a set of
job ids that answer.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import stat
from pathlib import Path

import pytest

from cluster.config import ClusterConfig, load_config
from cluster.scheduler.engine import CANCEL_RETRY, Engine
from cluster.scheduler.load import LoadMeter
from cluster.scheduler.paths import state_path
from cluster.scheduler.plan import DRAIN_GRACE
from cluster.scheduler.slurm import SlurmError, SlurmJob
from cluster.scheduler.slurm_backend import SlurmBackend
from cluster.scheduler.state import JobRecord, load_state, save_state
from cluster.tls import pin_of


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeCli:
    """squeue / sbatch / scancel as a dictionary of jobs."""

    def __init__(self) -> None:
        self.listed: dict[str, SlurmJob] = {}
        self.squeue_error: str | None = None
        self.sbatch_error: str | None = None
        self.scancel_error: str | None = None
        self.submissions: list[tuple[list[str], bytes]] = []
        self.cancels: list[list[str]] = []
        self.next_id = 100

    async def squeue(self) -> dict[str, SlurmJob]:
        if self.squeue_error:
            raise SlurmError(self.squeue_error)
        return dict(self.listed)

    async def sbatch(self, options: list[str], script: bytes) -> str:
        if self.sbatch_error:
            raise SlurmError(self.sbatch_error)
        job_id = str(self.next_id)
        self.next_id += 1
        name = next(o.split("=", 1)[1] for o in options if o.startswith("--job-name="))
        self.listed[job_id] = SlurmJob(job_id, "PENDING", "Priority", "", 3600.0, name)
        self.submissions.append((options, script))
        return job_id

    async def scancel(self, job_ids: list[str]) -> None:
        self.cancels.append(list(job_ids))
        if self.scancel_error:
            raise SlurmError(self.scancel_error)
        for job_id in job_ids:
            job = self.listed.get(job_id)
            if job is not None:
                self.listed[job_id] = SlurmJob(job_id, "CANCELLED", "None", job.node, job.time_left, job.name)

    def run(self, job_id: str, node: str = "gpu01") -> None:
        job = self.listed[job_id]
        self.listed[job_id] = SlurmJob(job_id, "RUNNING", "None", node, job.time_left, job.name)

    def end(self, job_id: str, state: str) -> None:
        job = self.listed[job_id]
        self.listed[job_id] = SlurmJob(job_id, state, "None", job.node, job.time_left, job.name)


CONFIG = """\
[gate]
routing_table = "routing.json"
[scheduler]
job_prefix = "sl"
[slurm]
node_host = "{{node}}.ib"
[services.chat-model]
backend = "slurm"
routes = ["chat"]
template = "standin"
time_limit = "1:00:00"
min_instances = {min}
max_instances = 3
requests_per_instance = 2
load_window = 30
scale_down_delay = 60
backoff_base = 10
resources = {{ partition = "gpu", gres = "gpu:a100:1", qos = "inference" }}
"""


class Harness:
    def __init__(self, directory: Path, minimum: int = 1) -> None:
        (directory / "cluster.toml").write_text(CONFIG.format(min=minimum))
        self.config: ClusterConfig = load_config(directory / "cluster.toml")
        self.clock = Clock()
        self.cli = FakeCli()
        self.healthy: set[str] = set()
        self.engine = Engine(self.config, SlurmBackend(self.config, self.cli), self.clock)  # type: ignore[arg-type]

        async def healthy(record: JobRecord) -> bool:
            return record.id in self.healthy

        self.engine.healthy = healthy  # type: ignore[method-assign]

    def run_pass(self, seconds: float = 5.0):  # type: ignore[no-untyped-def]
        self.clock.now += seconds
        return asyncio.run(self.engine.run_pass())

    def state(self):  # type: ignore[no-untyped-def]
        return load_state(state_path(self.config, "slurm"))

    def table(self) -> dict[str, list[dict[str, object]]]:
        return json.loads(self.config.gate.routing_table.read_text())["models"]

    def ready_job(self) -> str:
        """Run passes until one job is ready; its id."""
        self.run_pass()
        (job_id,) = self.cli.listed
        self.cli.run(job_id)
        self.healthy.add(job_id)
        self.run_pass()
        self.run_pass()
        assert [i["id"] for i in self.table()["chat-model"]] == [f"slurm:{job_id}"]
        return job_id


@pytest.fixture
def harness(tmp_path: Path) -> Harness:
    return Harness(tmp_path)


def test_submit_probe_and_publish(harness: Harness) -> None:
    report = harness.run_pass()
    assert report.submitted == ["100"] and harness.table() == {"chat-model": []}
    options, script = harness.cli.submissions[0]
    record = harness.state().jobs["100"]
    assert "--job-name=sl.chat-model" in options and "--time=60" in options and "--no-requeue" in options
    assert {"--partition=gpu", "--gres=gpu:a100:1", "--qos=inference"} <= set(options)
    # the token is in the script (sbatch reads it on stdin), on no argument
    assert record.token.encode() in script and not any(record.token in o for o in options)
    assert f"--port {record.port}".encode() in script
    harness.cli.run("100")
    harness.run_pass()  # running, not answering yet: not in the table
    assert harness.table() == {"chat-model": []}
    harness.healthy.add("100")
    harness.run_pass()
    (entry,) = harness.table()["chat-model"]
    assert entry == {"id": "slurm:100", "host": "gpu01.ib", "port": record.port, "token": record.token, "pin": record.pin}
    # the job's own TLS files, private to the scheduler's account, named in the script; the pin is the certificate's
    tls = Path(record.tls_dir)
    assert tls.parent == harness.config.job_dir and stat.S_IMODE(tls.stat().st_mode) == 0o700
    flags = f"--ssl-keyfile {tls / 'server.key'} --ssl-certfile {tls / 'server.crt'} --ssl-ca-certs {tls / 'clients.pem'}"
    assert f"{flags} --ssl-cert-reqs 2".encode() in script
    assert pin_of(ssl.PEM_cert_to_DER_cert((tls / "server.crt").read_text())) == record.pin
    assert (harness.config.gate.tls / "client.crt").read_bytes() in (tls / "clients.pem").read_bytes()


def test_state_and_table_are_private(harness: Harness) -> None:
    harness.ready_job()
    for path in (state_path(harness.config, "slurm"), harness.config.gate.routing_table):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(harness.config.gate.state.stat().st_mode) == 0o700


@pytest.mark.parametrize("error", ["squeue: exit 1: slurm_load_jobs error", "squeue: timed out after 30s", "garbled squeue line"])
def test_failed_squeue_keeps_every_job(harness: Harness, error: str) -> None:
    job_id = harness.ready_job()
    table_before = harness.config.gate.routing_table.read_bytes()
    jobs_before = harness.state().jobs
    harness.cli.squeue_error = error
    harness.cli.listed.clear()  # whatever Slurm "says" now is not heard
    for _ in range(5):
        report = harness.run_pass(60)
        assert not report.observed and report.error == error
    state = harness.state()
    assert state.jobs.keys() == jobs_before.keys() and state.observe_failures == 5
    assert harness.config.gate.routing_table.read_bytes() == table_before
    assert harness.cli.submissions[1:] == [] and harness.cli.cancels == []
    harness.cli.squeue_error = None
    harness.cli.listed[job_id] = SlurmJob(job_id, "RUNNING", "None", "gpu01", 3000.0, "sl.chat-model")
    assert harness.run_pass().observed and harness.state().observe_failures == 0
    assert harness.config.gate.routing_table.read_bytes() == table_before


def test_job_gone_from_a_good_squeue_is_replaced_at_once(harness: Harness) -> None:
    job_id = harness.ready_job()
    del harness.cli.listed[job_id]  # ended and purged between passes
    report = harness.run_pass()
    assert report.submitted == ["101"] and job_id not in harness.state().jobs
    assert harness.table() == {"chat-model": []}


@pytest.mark.parametrize("end_state", ["NODE_FAIL", "FAILED", "TIMEOUT", "CANCELLED", "OUT_OF_MEMORY"])
def test_ended_job_is_replaced(harness: Harness, end_state: str) -> None:
    job_id = harness.ready_job()
    harness.cli.end(job_id, end_state)
    report = harness.run_pass()
    assert report.submitted == ["101"] and harness.table() == {"chat-model": []}


def test_orphans_of_ours_are_cancelled_and_others_left_alone(harness: Harness) -> None:
    harness.cli.listed["55"] = SlurmJob("55", "RUNNING", "None", "gpu02", 100.0, "sl.chat-model")
    harness.cli.listed["56"] = SlurmJob("56", "COMPLETED", "None", "gpu02", 100.0, "sl.chat-model")
    report = harness.run_pass()
    assert report.cancelled == ["55"] and harness.cli.cancels == [["55"]]


def test_garbled_state_file_is_moved_aside_and_its_jobs_become_orphans(harness: Harness) -> None:
    job_id = harness.ready_job()
    path = state_path(harness.config, "slurm")
    path.write_text("{ not json")
    report = harness.run_pass()
    assert job_id in report.cancelled and report.submitted == ["101"]
    assert [p.name for p in path.parent.glob("slurm-state.json.garbled-*")]


def test_failed_scancel_is_retried(harness: Harness) -> None:
    harness.cli.listed["55"] = SlurmJob("55", "RUNNING", "None", "gpu02", 100.0, "sl.other-model")
    harness.config.gate.state.mkdir(mode=0o700)
    state = harness.state()
    state.jobs["55"] = JobRecord("55", "other-model", 20001, "t" * 43, submitted=harness.clock.now)
    save_state(state_path(harness.config, "slurm"), state)
    harness.cli.scancel_error = "scancel: exit 1: Socket timed out"
    harness.run_pass()
    assert harness.cli.cancels[-1] == ["55"] and harness.state().jobs["55"].cancel_reason == "unconfigured"
    harness.run_pass(5)
    assert len(harness.cli.cancels) == 1  # not again at once
    harness.cli.scancel_error = None
    harness.run_pass(CANCEL_RETRY + 1)
    assert len(harness.cli.cancels) == 2
    harness.run_pass()
    assert "55" not in harness.state().jobs  # CANCELLED now: forgotten


def test_failed_sbatch_backs_off(harness: Harness) -> None:
    harness.cli.sbatch_error = "sbatch: error: Batch job submission failed: Invalid account"
    harness.run_pass()
    assert harness.state().services["chat-model"].failures == 1
    harness.cli.sbatch_error = None
    assert harness.run_pass(5).submitted == []  # backing off (10 s)
    assert harness.run_pass(6).submitted == ["100"]


def test_stuck_warm_up_is_cancelled_and_retried(harness: Harness) -> None:
    harness.run_pass()
    harness.cli.run("100")
    harness.run_pass()
    report = harness.run_pass(harness.config.services[0].warmup_timeout + 1)
    assert "100" in report.cancelled and harness.state().jobs["100"].cancel_reason == "warmup_timeout"


def test_unhealthy_ready_job_leaves_the_table_then_is_replaced(harness: Harness) -> None:
    job_id = harness.ready_job()
    harness.healthy.clear()
    harness.run_pass()
    assert harness.table() == {"chat-model": []}  # one failed check: out of the table
    harness.healthy.add(job_id)
    harness.run_pass()
    assert len(harness.table()["chat-model"]) == 1  # answers again: back
    harness.healthy.clear()
    for _ in range(3):
        report = harness.run_pass()
    assert job_id in report.cancelled and report.submitted == ["101"]


def _meter(harness: Harness) -> tuple[LoadMeter, Clock]:
    clock = Clock(harness.clock.now)
    return LoadMeter(harness.config.gate.state / "load", clock), clock


def test_gate_load_scales_up_and_drain_waits_for_requests_in_flight(harness: Harness) -> None:
    job_id = harness.ready_job()
    meter, gate_clock = _meter(harness)
    # five requests in flight on the one instance, for the whole window
    for _ in range(5):
        meter.change("chat-model", in_flight=1, instance=f"slurm:{job_id}")
    for _ in range(6):
        gate_clock.now = harness.clock.now + 5
        meter.flush()
        report = harness.run_pass()
    assert harness.state().summary["chat-model"]["target"] == 3
    assert len(report.submitted) + len(harness.cli.submissions) >= 3
    for new in [j for j in harness.cli.listed if j != job_id]:
        harness.cli.run(new)
        harness.healthy.add(new)
    harness.run_pass()
    harness.run_pass()
    assert len(harness.table()["chat-model"]) == 3
    # the load goes away but for one long request on the newest instance (the one drained first)
    newest = max(harness.cli.listed, key=int)
    for _ in range(5):
        meter.change("chat-model", in_flight=-1, instance=f"slurm:{job_id}")
    meter.change("chat-model", in_flight=1, instance=f"slurm:{newest}")
    draining = None
    for _ in range(60):
        gate_clock.now = harness.clock.now + 10
        meter.flush()
        harness.run_pass(10)
        draining = next((r.id for r in harness.state().jobs.values() if r.drain), None)
        if draining:
            break
    assert draining == newest
    assert f"slurm:{newest}" not in {i["id"] for i in harness.table()["chat-model"]}
    # out of the table, but it stays while a gate reports a request on it
    for _ in range(3):
        gate_clock.now = harness.clock.now + DRAIN_GRACE + 1
        meter.flush()
        harness.run_pass(DRAIN_GRACE + 1)
        assert harness.state().jobs[newest].cancelled is None
    meter.change("chat-model", in_flight=-1, instance=f"slurm:{newest}")
    gate_clock.now = harness.clock.now + 1
    meter.flush()
    harness.run_pass(1)
    assert harness.state().jobs[newest].cancel_reason == "drained"
    meter.close()


def test_ports_in_the_routing_table_or_in_use_by_jobs_are_not_handed_out(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = harness.ready_job()
    taken = harness.state().jobs[job_id].port
    offers = iter([taken, taken, 23456])
    monkeypatch.setattr("cluster.scheduler.engine.random.randint", lambda low, high: next(offers))
    del harness.cli.listed[job_id]  # ended: a replacement is submitted while the table still lists the old port
    harness.run_pass()
    (new,) = [r for r in harness.state().jobs.values() if r.id != job_id]
    assert new.port == 23456


def test_an_ended_jobs_tls_directory_is_removed(harness: Harness) -> None:
    job_id = harness.ready_job()
    directory = Path(harness.state().jobs[job_id].tls_dir)
    assert (directory / "server.key").exists()
    harness.cli.end(job_id, "FAILED")
    harness.run_pass()
    harness.run_pass()
    assert job_id not in harness.state().jobs and not directory.exists()
