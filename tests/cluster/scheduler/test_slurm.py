"""The Slurm command adapter: strict parsing, argv only, timeouts, a clean environment.

Commands are replaced by small scripts that record what they were given.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from cluster.config import SlurmSettings
from cluster.scheduler.slurm import (
    SlurmCli,
    SlurmError,
    command_env,
    parse_sbatch,
    parse_squeue,
    parse_time_left,
)

GOOD = (
    "S|1234|RUNNING|None|gpu01|1:59:30|2026-12-05T08:00:00|sl.chat-model\n"
    "S|1235|PENDING|Resources||2:00:00|2026-12-05T09:30:00|sl.chat-model\n"
    "S|77|RUNNING|None|cpu3|UNLIMITED|N/A|someone's | odd | job\n"
    "S|1236|TIMEOUT|TimeLimit|gpu02|0:00|N/A|sl.embed\n"
)


def test_parse_squeue_keeps_our_jobs_only() -> None:
    jobs = parse_squeue(GOOD, "sl")
    assert sorted(jobs) == ["1234", "1235", "1236"]
    assert jobs["1234"].node == "gpu01" and jobs["1234"].time_left == 7170.0
    assert jobs["1235"].node == "" and jobs["1235"].reason == "Resources"
    assert jobs["1236"].state == "TIMEOUT" and jobs["1236"].time_left == 0.0


def test_parse_squeue_fed_line_by_line_gives_the_same() -> None:
    whole = parse_squeue(GOOD, "sl")
    merged: dict[str, object] = {}
    for line in GOOD.splitlines(keepends=True):
        merged.update(parse_squeue(line, "sl"))
    assert merged == whole
    assert parse_squeue("", "sl") == {}  # a good, empty answer is no jobs


@pytest.mark.parametrize(
    "text",
    [
        "S|1234|RUNNING|None|gpu01|1:59:30|N/A\n",  # a field short (truncated output)
        "1234|RUNNING|None|gpu01|1:59:30|N/A|sl.x\n",  # no sentinel
        "Welcome to the cluster!\n",  # noise on stdout
        "S|12a4|RUNNING|None|gpu01|1:59:30|N/A|sl.x\n",  # job id
        "S|1234|running|None|gpu01|1:59:30|N/A|sl.x\n",  # state word
        "S|1234|RUNNING|None|gpu 01|1:59:30|N/A|sl.x\n",  # node
        "S|1234|RUNNING|None|gpu01|soon|N/A|sl.x\n",  # time left
        "S|1234|RUNNING|None|gpu01|1:00|N/A|sl.x\nS|1234|RUNNING|None|gpu01|1:00|N/A|sl.x\n",  # duplicate
        GOOD + "S|1|RUNN",  # cut off mid-line
    ],
)
def test_reject_garbled_squeue(text: str) -> None:
    with pytest.raises(SlurmError):
        parse_squeue(text, "sl")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("0:05", 5.0), ("59:59", 3599.0), ("1:00:00", 3600.0), ("2-03:04:05", 183845.0), ("UNLIMITED", None),
     ("NOT_SET", None), ("INVALID", None)],
)  # fmt: skip
def test_time_left(text: str, seconds: float | None) -> None:
    assert parse_time_left(text) == seconds


@pytest.mark.parametrize(("text", "job"), [("4242\n", "4242"), ("4242;cluster2\n", "4242"), ("7", "7")])
def test_parse_sbatch(text: str, job: str) -> None:
    assert parse_sbatch(text) == job


@pytest.mark.parametrize("text", ["", "Submitted batch job 4242\n", "4242\n4243\n", "0\n", "4242;bad cluster\n"])
def test_reject_garbled_sbatch(text: str) -> None:
    with pytest.raises(SlurmError):
        parse_sbatch(text)


def test_command_env_strips_what_changes_slurm_commands_and_ssh() -> None:
    environ = {
        "PATH": "/usr/bin", "HOME": "/home/svc", "SQUEUE_FORMAT": "%i", "SBATCH_EXPORT": "NONE",
        "SLURM_JOB_ID": "9", "SSH_ORIGINAL_COMMAND": "sluice/1 ping", "SSH_CONNECTION": "x",
        "SLUICE_BACKEND_TOKEN": "leak", "SLURM_CONF": "/etc/slurm/other.conf",
    }  # fmt: skip
    env = command_env(SlurmSettings(), environ)
    assert env == {"PATH": "/usr/bin", "HOME": "/home/svc", "SLURM_CONF": "/etc/slurm/other.conf"}
    assert command_env(SlurmSettings(slurm_conf=Path("/x/slurm.conf")), environ)["SLURM_CONF"] == "/x/slurm.conf"


RECORDER = """\
#!/bin/sh
# records its argv (one per line) and stdin, then answers as told
printf '%s\\n' "$@" > {dir}/{name}.argv
cat > {dir}/{name}.stdin
env > {dir}/{name}.env
{answer}
"""


def _tool(directory: Path, name: str, answer: str) -> str:
    path = directory / name
    path.write_text(RECORDER.format(dir=directory, name=name, answer=answer))
    path.chmod(0o755)
    return str(path)


def _cli(tmp_path: Path, timeout: float = 5.0, **answers: str) -> SlurmCli:
    tools = {name: _tool(tmp_path, name, answers.get(name, "exit 0")) for name in ("sbatch", "squeue", "scancel")}
    return SlurmCli(SlurmSettings(command_timeout=timeout, **tools), "sl")


def test_sbatch_reads_the_script_on_stdin_and_gets_only_options(tmp_path: Path) -> None:
    cli = _cli(tmp_path, sbatch="echo 4242")
    script = b"#!/bin/sh\nexport VLLM_API_KEY='s3cret-token'\nexec true\n"
    job = asyncio.run(cli.sbatch(["--job-name=sl.m", "--time=60"], script))
    assert job == "4242"
    assert (tmp_path / "sbatch.argv").read_text().splitlines() == ["--parsable", "--job-name=sl.m", "--time=60"]
    assert (tmp_path / "sbatch.stdin").read_bytes() == script
    assert "s3cret-token" not in (tmp_path / "sbatch.env").read_text()


def test_squeue_arguments_and_a_failing_squeue(tmp_path: Path) -> None:
    cli = _cli(tmp_path, squeue="printf 'S|5|RUNNING|None|n1|1:00|N/A|sl.m\\n'")
    assert list(asyncio.run(cli.squeue())) == ["5"]
    assert (tmp_path / "squeue.argv").read_text().splitlines() == [
        "--me", "--states=all", "--noheader", "--format=S|%i|%T|%r|%N|%L|%S|%j"]  # fmt: skip
    failing = _cli(tmp_path, squeue="echo 'slurm_load_jobs error: Unable to contact slurm controller' >&2; exit 1")
    with pytest.raises(SlurmError, match="exit 1: slurm_load_jobs error"):
        asyncio.run(failing.squeue())


def test_a_hanging_command_times_out(tmp_path: Path) -> None:
    cli = _cli(tmp_path, timeout=0.5, squeue="exec sleep 30")
    started = time.monotonic()
    with pytest.raises(SlurmError, match="timed out"):
        asyncio.run(cli.squeue())
    assert time.monotonic() - started < 5


def test_missing_command(tmp_path: Path) -> None:
    cli = SlurmCli(SlurmSettings(squeue=str(tmp_path / "nope")), "sl")
    with pytest.raises(SlurmError, match="cannot run"):
        asyncio.run(cli.squeue())


def test_scancel_takes_job_ids_only(tmp_path: Path) -> None:
    cli = _cli(tmp_path)
    asyncio.run(cli.scancel(["12", "13"]))
    assert (tmp_path / "scancel.argv").read_text().splitlines() == ["--", "12", "13"]
    with pytest.raises(ValueError):
        asyncio.run(cli.scancel(["-u root"]))
