"""The Slurm backend: services as batch jobs, one ``sbatch`` per instance.

Each job gets a name ``<job_prefix>.<model>`` (characters other than letters,
digits, ``.``, ``_`` and ``-`` replaced), a random port, a random token, the
service's resources and time limit, ``--no-requeue`` (the scheduler replaces
failed jobs itself, so Slurm's end states stay visible), and the job script
rendered from the service's template on sbatch's standard input.
"""

from __future__ import annotations

import sys

from ..config import ClusterConfig, Service
from ..tls import JobIdentity
from .engine import node_host
from .phases import ENDED_STATES, RUNNING_STATES
from .slurm import SlurmCli
from .state import JobRecord, ensure_private_dir
from .template import render_job_script

__all__ = ["SlurmBackend", "job_name", "sbatch_options"]


def job_name(config: ClusterConfig, service: Service) -> str:
    return f"{config.scheduler.job_prefix}.{service.job_key}"


def sbatch_options(config: ClusterConfig, service: Service) -> list[str]:
    """Every sbatch option of a job of ``service``: from the configuration only."""
    log_dir = config.log_dir
    options = [
        f"--job-name={job_name(config, service)}",
        f"--output={log_dir}/{service.job_key}-%j.out",
        f"--chdir={log_dir}",
        "--no-requeue",
        "--nodes=1",
        "--ntasks=1",
    ]
    if service.time_limit is not None:
        options.append(f"--time={service.time_limit // 60}")
    options += service.resources.sbatch_options()
    return options


class SlurmBackend:
    name = "slurm"

    def __init__(self, config: ClusterConfig, cli: SlurmCli | None = None) -> None:
        self._config = config
        self._cli = cli or SlurmCli(config.slurm, config.scheduler.job_prefix)

    async def observe(self, jobs: dict[str, JobRecord], now: float) -> list[str]:
        listed = await self._cli.squeue()  # SlurmError: the caller keeps what it knew
        for record in jobs.values():
            job = listed.get(record.id)
            if job is None:
                record.state = "GONE"  # ended and purged (MinJobAge) since the last pass
                if record.ended is None:
                    record.ended = now
                continue
            record.state, record.reason, record.node = job.state, job.reason, job.node
            record.time_left, record.observed = job.time_left, now
            record.expected_start = job.start_time if job.state == "PENDING" else None
            if job.state in RUNNING_STATES:
                if record.started is None:
                    record.started = now
                record.host = node_host(self._config.slurm.node_host, job.node)
            if job.state in ENDED_STATES and record.ended is None:
                record.ended = now
        return [job_id for job_id, job in listed.items() if job_id not in jobs and job.state not in ENDED_STATES]

    async def submit(self, service: Service, port: int, token: str, now: float, tls: JobIdentity | None) -> JobRecord:
        ensure_private_dir(self._config.log_dir)
        name = job_name(self._config, service)
        script = render_job_script(service, port=port, token=token, job_name=name, python=sys.executable, tls=tls)
        job_id = await self._cli.sbatch(sbatch_options(self._config, service), script.encode())
        return JobRecord(job_id, service.model, port, token, submitted=now, observed=now)

    async def cancel(self, job_ids: list[str]) -> None:
        await self._cli.scancel(job_ids)

    def port_free(self, port: int) -> bool:
        return True  # the node is not known before the job starts; a clash fails the job, which is replaced
