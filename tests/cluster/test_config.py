"""The service configuration: the operator guide's example loads; mistakes are refused by name."""

from __future__ import annotations

import re
import ssl
from pathlib import Path

import pytest

from cluster.config import ConfigError, load_config
from cluster.scheduler.slurm_backend import sbatch_options
from cluster.scheduler.template import render_job_script
from tests.conftest import ROOT

DOC = ROOT / "docs" / "operator-slurm.md"


def _doc_example() -> str:
    return re.findall(r"```toml\n(.*?)```", DOC.read_text(), re.DOTALL)[0]


def test_the_operator_guide_example_loads(tmp_path: Path) -> None:
    (tmp_path / "cluster.toml").write_text(_doc_example())
    config = load_config(tmp_path / "cluster.toml")
    llama, e5 = config.services
    assert llama.model == "meta-llama/Llama-3.1-8B-Instruct" and llama.template_name == "vllm"
    assert llama.time_limit == 24 * 3600 and llama.renew_before == 1200 and llama.priority == 10
    assert len(llama.schedule) == 2 and e5.min_instances == 0 and e5.time_limit == 720 * 60
    options = sbatch_options(config, llama)
    assert "--job-name=sluice.meta-llama_Llama-3.1-8B-Instruct" in options
    assert {"--partition=gpu", "--gres=gpu:a100:1", "--cpus-per-task=8", "--mem=64G", "--qos=inference",
            "--time=1440", "--no-requeue"} <= set(options)  # fmt: skip
    assert "--output=/scratch/sluice/logs/meta-llama_Llama-3.1-8B-Instruct-%j.out" in options
    script = render_job_script(llama, port=23456, token="TOKEN-x_y", job_name="sluice.x", python="/venv/bin/python")
    assert "source /sw/vllm-0.8/bin/activate\n" in script
    assert "export VLLM_API_KEY='TOKEN-x_y'" in script
    assert ("exec vllm serve /models/Llama-3.1-8B-Instruct --served-model-name meta-llama/Llama-3.1-8B-Instruct "
            "--host 0.0.0.0 --port 23456") in script  # fmt: skip
    assert "{" not in script.replace("${", "")  # every placeholder filled
    e5_script = render_job_script(e5, port=1, token="t", job_name="j", python="p")
    assert "serve intfloat/e5-mistral-7b-instruct --served-model-name intfloat/e5-mistral-7b-instruct" in e5_script
    assert "--task embed" in e5_script and "module load vllm/0.8" in e5_script


BASE = """\
[gate]
routing_table = "routing.json"
[services.m]
backend = "slurm"
routes = ["chat"]
"""


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("colour = 'blue'\n", "services.m.colour is not a known setting"),
        ("command = ['x']\n", "services.m.command is not a known setting"),
        ("min_instances = 3\nmax_instances = 2\n", "min_instances <= max_instances"),
        ("time_limit = '1:30'\n", "whole minutes"),
        ("time_limit = 'soon'\n", "time_limit must be"),
        ("time_limit = 60\nrenew_before = 4000\n", "renew_before must be shorter"),
        ("scale_up_threshold = 0.2\nscale_down_threshold = 0.5\n", "scale_down_threshold must be below"),
        ("resources = { partition = 'gpu --account=x' }\n", "resources.partition must be printable ASCII"),
        ("resources = { nice = -5 }\n", "raise priority with a qos"),
        ("resources = { gpus = 4 }\n", "services.m.resources.gpus is not a known setting"),
        ("template = 'nonesuch'\n", "not a built-in template"),
        ("vars = { port = '1' }\n", "vars.port"),
        ('vars = { setup = "a\\nb" }\n', "vars.setup must be one line"),
        ("[[services.m.schedule]]\nstart = '25:00'\nend = '07:00'\n", "start must be HH:MM"),
        ("[[services.m.schedule]]\ndays = ['someday']\nstart = '20:00'\nend = '07:00'\n", "days must be"),
        ("hold_queue = -1\n", "hold_queue"),
    ],
)
def test_reject_service_mistakes(tmp_path: Path, extra: str, message: str) -> None:
    (tmp_path / "cluster.toml").write_text(BASE + extra)
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(tmp_path / "cluster.toml")


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("#!/bin/sh\nexec server --port {port}\n", "must use {token}"),
        ("#!/bin/sh\nexport KEY={token}\nexec server\n", "must use {port}"),
        (
            "#!/bin/sh\nexport KEY={token}\nexec server --port {port} {model_dir} {tls_keyfile} {tls_certfile} {tls_ca}\n",
            "uses {model_dir}",
        ),
        ("#!/bin/sh\nexport KEY={token}\nexec server --port {port}\n", "must use {tls_keyfile}"),
        ("#!/bin/sh\nexport KEY={token}\nexec server --port {port} {tls_keyfile} {tls_certfile}\n", "must use {tls_ca}"),
        ("exec server --port {port} {token}\n", "must start with #!"),
    ],
)
def test_reject_templates(tmp_path: Path, template: str, message: str) -> None:
    (tmp_path / "job.sbatch").write_text(template)
    (tmp_path / "cluster.toml").write_text(BASE + "template_file = 'job.sbatch'\n")
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(tmp_path / "cluster.toml")


def test_shell_variables_are_not_placeholders(tmp_path: Path) -> None:
    (tmp_path / "job.sbatch").write_text(
        "#!/bin/bash\nexport KEY='{token}'\nPORT={port}\necho ${PORT} ${port} $HOME\nexec srv --port \"$PORT\"\n"
        "# {tls_keyfile} {tls_certfile} {tls_ca}\n"
    )
    (tmp_path / "cluster.toml").write_text(BASE + "template_file = 'job.sbatch'\n")
    (service,) = load_config(tmp_path / "cluster.toml").services
    script = render_job_script(service, port=20001, token="tok", job_name="j", python="p")
    assert "PORT=20001\necho ${PORT} ${port} $HOME" in script


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ("[scheduler]\njob_prefix = 'a b'\n", "job_prefix"),
        ("[scheduler]\nport_min = 30000\nport_max = 30010\n", "port_min"),
        ("[slurm]\nnode_host = '{node}.{rack}'\n", "node_host"),
        ("[slurm]\nsqueue = 'squeue; rm -rf /'\n", "slurm.squeue"),
    ],
)
def test_reject_scheduler_and_slurm_settings(tmp_path: Path, section: str, message: str) -> None:
    (tmp_path / "cluster.toml").write_text(BASE.replace("[services.m]", section + "[services.m]"))
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(tmp_path / "cluster.toml")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 5400), ("1:00", 60), ("2:00:00", 7200), ("1-0", 86400), ("1-12:30", 131400), ("0-0:5:0", 300)],
)
def test_time_limit_forms_as_slurm_reads_them(tmp_path: Path, text: str, seconds: int) -> None:
    (tmp_path / "cluster.toml").write_text(BASE + f"time_limit = '{text}'\n")
    assert load_config(tmp_path / "cluster.toml").services[0].time_limit == seconds


def test_renew_before_needs_a_time_limit(tmp_path: Path) -> None:
    (tmp_path / "cluster.toml").write_text(BASE + "renew_before = 60\n")
    with pytest.raises(ConfigError, match="needs a time_limit"):
        load_config(tmp_path / "cluster.toml")


def test_two_models_may_not_share_a_job_name(tmp_path: Path) -> None:
    text = (
        BASE + '[services."a/b"]\nbackend = "slurm"\nroutes = ["chat"]\n[services."a:b"]\nbackend = "slurm"\nroutes = ["chat"]\n'
    )
    (tmp_path / "cluster.toml").write_text(text)
    with pytest.raises(ConfigError, match="differ only"):
        load_config(tmp_path / "cluster.toml")


LOCAL = """\
[gate]
routing_table = "routing.json"
[services.m]
backend = "local"
routes = ["chat"]
"""


def test_reject_local_services_without_tls(tmp_path: Path) -> None:
    (tmp_path / "cluster.toml").write_text(LOCAL + "command = ['srv', '--port', '{port}']\n")
    with pytest.raises(ConfigError, match=re.escape("must pass {tls_keyfile}")):
        load_config(tmp_path / "cluster.toml")
    (tmp_path / "cluster.toml").write_text(LOCAL + "command = ['srv', '{port}']\nunsafe_plain_http = true\n")
    assert load_config(tmp_path / "cluster.toml").services[0].unsafe_plain_http


def test_the_gates_tls_directory_is_beside_the_config(tmp_path: Path) -> None:
    (tmp_path / "cluster.toml").write_text(BASE.replace('routing_table = "routing.json"', 'routing_table = "run/routing.json"'))
    assert load_config(tmp_path / "cluster.toml").gate.tls == tmp_path / "gate-tls"


@pytest.mark.parametrize(
    ("gate", "message"),
    [
        ('routing_table = "routing.json"\nspool_dir = "spool"\nstate_dir = "state"\n', "routing_table must be in gate.spool_dir"),
        ('routing_table = "spool/routing.json"\nspool_dir = "spool"\n', "state_dir must not be in gate.spool_dir"),
        ('routing_table = "spool/routing.json"\nspool_dir = "spool"\nstate_dir = "spool/s"\n', "state_dir must not be"),
    ],
)
def test_reject_two_account_layouts_that_share_private_state(tmp_path: Path, gate: str, message: str) -> None:
    (tmp_path / "cluster.toml").write_text(BASE.replace('routing_table = "routing.json"\n', gate))
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(tmp_path / "cluster.toml")


def test_two_accounts_layout(tmp_path: Path) -> None:
    gate = 'routing_table = "spool/routing.json"\nspool_dir = "spool"\nstate_dir = "jobs"\n'
    (tmp_path / "cluster.toml").write_text(BASE.replace('routing_table = "routing.json"\n', gate))
    config = load_config(tmp_path / "cluster.toml")
    assert config.split_accounts and config.gate.shared == tmp_path / "spool" and config.gate.state == tmp_path / "jobs"


STATIC = """\
[gate]
routing_table = "routing.json"
[[backends]]
model = "s"
routes = ["chat"]
"""


def test_static_https_backends_are_pinned(tmp_path: Path) -> None:
    from cluster.tls import init_gate_identity, pin_of

    identity, _ = init_gate_identity(tmp_path / "somecert")
    (tmp_path / "cluster.toml").write_text(STATIC + 'url = "https://gpu1:8443"\nserver_cert = "somecert/client.crt"\n')
    (backend,) = load_config(tmp_path / "cluster.toml").static
    assert backend.port == 8443 and backend.pin == pin_of(ssl.PEM_cert_to_DER_cert(identity.cert.read_text()))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('url = "https://gpu1:8443"\n', "needs server_cert"),
        ('url = "http://gpu1:8000"\nserver_cert = "x.pem"\n', "server_cert needs an https:// url"),
        ('url = "https://gpu1:8443"\nserver_cert = "missing.pem"\n', "cannot read a PEM certificate"),
        ('url = "ftp://gpu1:8443"\n', "url must be https://HOST:PORT"),
    ],
)
def test_reject_static_tls_mistakes(tmp_path: Path, extra: str, message: str) -> None:
    (tmp_path / "cluster.toml").write_text(STATIC + extra)
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(tmp_path / "cluster.toml")


def test_reject_names_the_file_the_key_and_the_fix(tmp_path: Path) -> None:
    (tmp_path / "cluster.toml").write_text(BASE + "hold_queue = -1\n")
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "cluster.toml")
    assert str(info.value) == f"{tmp_path / 'cluster.toml'}: services.m.hold_queue must be between 0 and 4096"
    assert info.value.key == "services.m.hold_queue"
    with pytest.raises(ConfigError, match="^" + re.escape(str(tmp_path / "missing.toml")) + ": cannot read"):
        load_config(tmp_path / "missing.toml")
