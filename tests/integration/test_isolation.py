"""Two accounts on a real login node: what a job can and cannot touch.

Set up as docs/operator-slurm.md ("Two accounts") tells an admin to:

- the gate's account (``sluiceisogate``) runs the gate under real sshd, with -I;
  it owns its sealed-request keys (0700/0600) and its TLS client key (0600);
  its home is 0700; the code and the configuration belong to root;
- the jobs account (``sluicejobs``) runs the scheduler loop and, as its
  children, the model servers (stand-ins serving mutual TLS); it owns the
  scheduler's state and the jobs' TLS directories (0700) and writes the
  routing table into the spool;
- the spool (``sluicejobs:sluicespool``, 2770) is all they share: the routing
  table (0640) and the gates' load files and kicks (0640).

A job process (the jobs account) is then shown unable to read the gate's keys,
to write its code, home, configuration or authorized_keys, or to plant a
module the gate imports; any other user of the cluster is shown unable to
read a job's key or token, and to get a byte of HTTP from a job on any path,
even holding its token.  The gate still serves through all of it.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import signal
import ssl
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from policy.frames import GATE_KINDS, FrameDecoder, Kind
from tests.services.accounts import (
    GATE_USER,
    JOBS_USER,
    OTHER_USER,
    SPOOL_GROUP,
    chown,
    ensure_accounts,
    probe_as,
    run_as,
)
from tests.services.slurm import Slurm, slurm_cluster  # noqa: F401  (the session fixture)
from tests.services.sshd import Sshd

pytestmark = pytest.mark.integration

MODEL = "iso-chat"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}

CLUSTER_TOML = """\
[gate]
routing_table = "spool/routing.json"
spool_dir = "spool"
state_dir = "jobs/state"
request_timeout = 30

[services.iso-chat]
backend = "local"
routes = ["chat"]
command = ["{python}", "-m", "cluster.standin", "--host", "127.0.0.1", "--port", "{port}", "--model", "{model}",
           "--kind", "chat", "--ssl-keyfile", "{tls_keyfile}", "--ssl-certfile", "{tls_certfile}",
           "--ssl-ca-certs", "{tls_ca}", "--ssl-cert-reqs", "2"]
min_instances = 1
max_instances = 1
warmup_timeout = 30
"""


class TwoAccounts:
    """The layout, the gate under sshd, and the jobs account's scheduler loop (``wait``: for ``model``)."""

    def __init__(self, toml: str = CLUSTER_TOML, model: str | None = MODEL) -> None:
        self.sshd = Sshd(toml, user=GATE_USER)
        try:
            ensure_accounts()
            root = self.sshd.dir
            self.spool = root / "spool"
            self.spool.mkdir()
            chown(self.spool, JOBS_USER, SPOOL_GROUP)
            self.spool.chmod(0o2770)
            self.jobs = root / "jobs"
            self.jobs.mkdir(mode=0o700)
            chown(self.jobs, JOBS_USER)
            self.sshd.create_sealed_keys()
            self.gate_tls = root / "gate-tls"
            self.gate_tls.mkdir(mode=0o755)
            chown(self.gate_tls, GATE_USER)
            self.sshd.run_as_gate("tls", "init", "--config", str(self.sshd.config))
            self.log = Path(tempfile.mkstemp(prefix="sluice-jobs-loop-", suffix=".log")[1])
            with self.log.open("wb") as sink:
                self.loop = subprocess.Popen(
                    ["runuser", "-u", JOBS_USER, "--", str(self.sshd.gate_python), "-I", "-m", "cluster.cli",
                     "scheduler", "--config", str(self.sshd.config)],
                    cwd="/", stdin=subprocess.DEVNULL, stdout=sink, stderr=sink,
                )  # fmt: skip
            self.instance = self._wait_ready(model) if model else {}
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, model: str) -> dict[str, Any]:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                entries = json.loads((self.spool / "routing.json").read_text())["models"].get(model, [])
            except (OSError, ValueError, KeyError):
                entries = []
            if entries:
                return dict(entries[0])
            if self.loop.poll() is not None:
                break
            time.sleep(0.2)
        raise RuntimeError(f"the jobs account's scheduler did not start {model}: {self.log.read_text()[-2000:]}")

    def job_dir(self) -> Path:
        (directory,) = (self.jobs / "state" / "jobs").iterdir()
        return directory

    def ssh(self, command: str, body: bytes = b"") -> tuple[int, list[Any]]:
        done = subprocess.run(
            ["ssh", "-T", "-i", str(self.sshd.client_key), "-p", str(self.sshd.port), "-F", "/dev/null",
             "-o", f"UserKnownHostsFile={self.sshd.known_hosts}", "-o", "StrictHostKeyChecking=yes",
             "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", f"{GATE_USER}@127.0.0.1", command],
            input=body, capture_output=True, timeout=60,
        )  # fmt: skip
        return done.returncode, FrameDecoder(GATE_KINDS).feed(done.stdout)

    def chat(self, model: str = MODEL) -> tuple[int, list[Any]]:
        data = json.dumps({**CHAT, "model": model}).encode()
        return self.ssh(f"sluice/1 call chat {model} {len(data)}", data)

    def stop(self) -> None:
        loop = getattr(self, "loop", None)
        if loop is not None and loop.poll() is None:
            loop.send_signal(signal.SIGTERM)  # runuser passes it on; the loop stops its jobs
            try:
                loop.wait(30)
            except subprocess.TimeoutExpired:
                loop.kill()
                loop.wait()
        subprocess.run(["pkill", "-KILL", "-u", JOBS_USER], check=False)
        self.sshd.stop()
        log = getattr(self, "log", None)
        if log is not None:
            log.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def accounts() -> Iterator[TwoAccounts]:
    setup = TwoAccounts()
    try:
        yield setup
    finally:
        setup.stop()


def _ok(frames: list[Any]) -> bool:
    return bool(frames) and frames[0].kind is Kind.HEAD and frames[0].payload == b"200 json" and frames[-1].kind is Kind.END


def test_the_gate_serves_a_job_of_the_other_account_over_mutual_tls(accounts: TwoAccounts) -> None:
    status, frames = accounts.chat()
    assert status == 0 and _ok(frames), frames
    # the job is the jobs account's process; the gate is the gate's
    assert accounts.instance["pin"] and accounts.instance["host"] == "127.0.0.1"
    table = accounts.spool / "routing.json"
    info = table.stat()
    assert pwd.getpwuid(info.st_uid).pw_name == JOBS_USER and grp.getgrgid(info.st_gid).gr_name == SPOOL_GROUP
    assert stat.S_IMODE(info.st_mode) == 0o640
    # the gate's load file (written when the exec-mode gate ended) is the gate's, readable by the group
    deadline = time.monotonic() + 5
    loads: list[Path] = []
    while not loads and time.monotonic() < deadline:
        loads = list((accounts.spool / "load").glob("*.json"))
        time.sleep(0.1)
    assert loads and all(pwd.getpwuid(p.stat().st_uid).pw_name == GATE_USER for p in loads)
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o640 and grp.getgrgid(p.stat().st_gid).gr_name == SPOOL_GROUP
               for p in loads)  # fmt: skip
    # the scheduler's state and the jobs' keys are the jobs account's alone
    for path in (accounts.jobs / "state", accounts.job_dir()):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700 and pwd.getpwuid(path.stat().st_uid).pw_name == JOBS_USER


def test_reject_a_job_touching_the_gates_keys_code_home_and_authorized_keys(accounts: TwoAccounts) -> None:
    sshd = accounts.sshd
    home = Path(pwd.getpwnam(GATE_USER).pw_dir)
    (sealed_key,) = (sshd.dir / "sealed-keys").glob("key-*.json")
    install = sshd.gate_python.parents[2] / "src" / "cluster"
    denied = [
        ("read", sealed_key),                                   # the sealed-request private key
        ("list", sshd.dir / "sealed-keys"),
        ("create", sshd.dir / "sealed-keys" / "key-999.json"),
        ("read", accounts.gate_tls / "client.key"),             # the gate's TLS client key
        ("append", accounts.gate_tls / "client.crt"),           # ... and the certificate jobs trust
        ("create", accounts.gate_tls / "client.key.new"),
        ("list", home),                                         # the gate's home
        ("create", home / "cluster.py"),                        # a module planted where the gate starts
        ("create", home / "sitecustomize.py"),
        ("append", install / "gate" / "entry.py"),              # the gate's code
        ("create", install / "evil.py"),
        ("append", sshd.dir / "authorized_keys" / GATE_USER),   # the forced command
        ("create", sshd.dir / "authorized_keys" / "new"),
        ("append", sshd.config),                                # the configuration
        ("replace", sshd.config),
    ]  # fmt: skip
    allowed = [
        ("read", accounts.gate_tls / "client.crt"),  # public: each job's clients.pem lists it
        ("read", accounts.spool / "routing.json"),  # its own jobs' entries (it writes them)
        ("create", accounts.spool / "probe"),  # the spool is shared (see the operator guide)
    ]
    results = probe_as(JOBS_USER, denied + allowed)
    for action, path in denied:
        assert results[(action, str(path))] in ("EACCES", "EPERM"), (action, path, results[(action, str(path))])
    for action, path in allowed:
        assert results[(action, str(path))] == "ok", (action, path, results[(action, str(path))])


def test_reject_other_users_reading_a_jobs_secrets(accounts: TwoAccounts) -> None:
    job = accounts.job_dir()
    attempts = [
        ("read", job / "server.key"),
        ("list", job),
        ("read", accounts.spool / "routing.json"),  # holds the tokens
        ("read", accounts.jobs / "state" / "local-state.json"),
        ("list", accounts.spool),
        ("read", accounts.gate_tls / "client.key"),
    ]
    results = probe_as(OTHER_USER, attempts)
    assert all(result in ("EACCES", "EPERM") for result in results.values()), results


_NO_CERT_GET = r"""
import json, socket, ssl, sys
port, token, paths = int(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
out = {}
for path in paths:
    for scheme in ("tls", "plain"):
        got = b""
        raw = socket.create_connection(("127.0.0.1", port), timeout=5)
        stream = raw
        try:
            if scheme == "tls":
                context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
                stream = context.wrap_socket(raw)
            stream.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n".encode())
            while True:
                piece = stream.recv(65536)
                if not piece:
                    break
                got += piece
        except (OSError, ssl.SSLError):
            pass
        finally:
            stream.close()
        out[f"{scheme} {path}"] = got.decode("latin-1")
print(json.dumps(out))
"""


@pytest.mark.parametrize("user", [OTHER_USER, JOBS_USER])
def test_reject_requests_without_the_gates_certificate_on_every_path(accounts: TwoAccounts, user: str) -> None:
    """Even with the job's bearer token: no byte of HTTP on /v1, /metrics, /tokenize, /health ..."""
    paths = ["/health", "/metrics", "/tokenize", "/invocations", "/stats", "/v1/models", "/version"]
    done = run_as(user, ["/usr/bin/python3", "-I", "-c", _NO_CERT_GET, str(accounts.instance["port"]),
                         accounts.instance["token"], json.dumps(paths)])  # fmt: skip
    assert done.returncode == 0, done.stderr
    answers = json.loads(done.stdout)
    assert len(answers) == 2 * len(paths)
    assert not any("HTTP/" in answer or MODEL in answer for answer in answers.values()), answers


def test_reject_modules_planted_in_the_gates_home(accounts: TwoAccounts) -> None:
    """Had a job (single-account mode) planted a package in the home, the gate (-I) would not import it."""
    home = Path(pwd.getpwnam(GATE_USER).pw_dir)
    markers = Path(tempfile.mkdtemp(prefix="sluice-planted-"))
    markers.chmod(0o1777)
    marker = markers / "ran"
    code = f"import pathlib, sys; pathlib.Path({str(marker)!r}).write_text(repr((__file__, sys.argv, sys.flags.isolated, sys.executable)))\n"
    planted = [home / "cluster", home / "sitecustomize.py", home / "usercustomize.py"]
    try:
        (home / "cluster").mkdir()
        for path in (home / "cluster" / "__init__.py", home / "cluster" / "cli.py", *planted[1:]):
            path.write_text(code)
        for path in [*planted, home / "cluster" / "__init__.py", home / "cluster" / "cli.py"]:
            chown(path, GATE_USER)
        status, frames = accounts.ssh("sluice/1 ping")
        assert status == 0 and _ok(frames) and not marker.exists(), marker.read_text()
        status, frames = accounts.chat()
        assert status == 0 and _ok(frames) and not marker.exists()
        # the finding: the forced command as it was (no -I) runs the planted package as the gate
        old = [str(accounts.sshd.gate_python), "-m", "cluster.cli", "gate", "--config", str(accounts.sshd.config)]
        subprocess.run(["runuser", "-u", GATE_USER, "--", *old], cwd=home, capture_output=True, timeout=60,
                       env={"PATH": os.environ["PATH"], "SSH_ORIGINAL_COMMAND": "sluice/1 ping"})  # fmt: skip
        assert marker.exists()
    finally:
        shutil.rmtree(home / "cluster", ignore_errors=True)
        for path in planted[1:]:
            path.unlink(missing_ok=True)
        shutil.rmtree(markers, ignore_errors=True)


def test_the_scheduler_of_the_jobs_account_cannot_make_the_gates_key(accounts: TwoAccounts) -> None:
    """Two accounts: a job's certificate list is built from the gate's public certificate only."""
    clients = (accounts.job_dir() / "clients.pem").read_bytes()
    assert (accounts.gate_tls / "client.crt").read_bytes() in clients
    assert stat.S_IMODE((accounts.gate_tls / "client.key").stat().st_mode) == 0o600
    assert pwd.getpwuid((accounts.gate_tls / "client.key").stat().st_uid).pw_name == GATE_USER
    assert ssl.PEM_cert_to_DER_cert((accounts.job_dir() / "server.crt").read_text())
    assert os.path.exists(accounts.spool / "load")


# -- a Slurm job of the jobs account, started by the gate's kick --------------------------

SLURM_TOML = """\
[gate]
routing_table = "spool/routing.json"
spool_dir = "spool"
state_dir = "jobs/state"
request_timeout = 60

[scheduler]
pass_interval = 20         # a pass sooner than this after the loop's first one was kicked
job_prefix = "iso"

[slurm]
slurm_conf = {slurm_conf}
node_host = "127.0.0.1"

[services.iso-slurm]
backend = "slurm"
routes = ["chat"]
template = "standin"
vars = {{ bind_host = "127.0.0.1", token_delay = "0" }}
time_limit = 10
min_instances = 0
max_instances = 1
warmup_timeout = 60
hold_timeout = 60
"""


def test_a_held_request_kicks_a_slurm_job_of_the_jobs_account(slurm_cluster: Slurm, tmp_path: Path) -> None:  # noqa: F811
    """The gate's kick crosses the uid boundary through the spool; Slurm runs the job as sluicejobs."""
    # the test cluster's slurm.conf lives in root's temporary directory: let the jobs account read it
    slurm_cluster.dir.chmod(0o755)
    slurm_cluster.conf.chmod(0o644)
    setup = TwoAccounts(SLURM_TOML.format(slurm_conf=json.dumps(str(slurm_cluster.conf))), model=None)
    try:
        time.sleep(1.0)  # the loop's first pass: nothing to run at zero instances
        assert not (setup.spool / "slurm.kick").exists()
        asked = time.monotonic()
        with ThreadPoolExecutor(1) as pool:
            reply = pool.submit(setup.chat, "iso-slurm")  # held: kicks, waits for the job
            while not _jobs_of(slurm_cluster) and time.monotonic() - asked < 15:
                time.sleep(0.1)
            submitted_after = time.monotonic() - asked
            status, frames = reply.result()
        # the loop's next own pass was 20 s away: the gate's kick started this one
        assert submitted_after < 10, submitted_after
        assert status == 0 and _ok(frames), (frames, setup.log.read_text()[-3000:])
        kick = setup.spool / "slurm.kick"
        assert pwd.getpwuid(kick.stat().st_uid).pw_name == GATE_USER
        assert _jobs_of(slurm_cluster) == [f"iso.iso-slurm|{JOBS_USER}|RUNNING"]
        entry = json.loads((setup.spool / "routing.json").read_text())["models"]["iso-slurm"][0]
        server = next(p for p in os.listdir("/proc") if p.isdigit() and _listens(int(p), entry["port"]))
        assert pwd.getpwuid(os.stat(f"/proc/{server}").st_uid).pw_name == JOBS_USER
    finally:
        subprocess.run(["scancel", "--user", JOBS_USER], env=slurm_cluster.env, check=False, timeout=30)
        setup.stop()


def _jobs_of(slurm: Slurm) -> list[str]:
    """The jobs account's jobs: name, user, state."""
    done = subprocess.run(["squeue", "--noheader", "--user", JOBS_USER, "--format=%j|%u|%T"],
                          env=slurm.env, capture_output=True, text=True, timeout=30)  # fmt: skip
    return done.stdout.split()


def _listens(pid: int, port: int) -> bool:
    """Whether ``pid``'s command line names ``--port port`` (the stand-in the job started)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"cluster.standin" in b" ".join(argv) and str(port).encode() in argv
