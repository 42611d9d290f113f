"""``sluice demo``: the whole request path on one machine.

Starts the local-process scheduler (which runs the stand-in models), the
appliance on 127.0.0.1, and the gate as a child process over pipes, speaking
the same bytes it would over SSH.  Stops everything on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Final

from hypercorn.asyncio import serve

from .app import Appliance, create_app
from .audit import AuditTrail, audit_event, install, open_store
from .auth.api_keys import ApiKeyStore
from .catalog import ClusterSet
from .demo_identity import demo_identity, demo_url, is_loopback
from .logs import configure_logging
from .metrics import Metrics
from .quotas.meter import demo_meter
from .server import hypercorn_config
from .server.files import files_needed, raise_file_limit
from .settings import ServerSettings
from .transport.local import LocalPipeTransport
from .web_chat import ChatPage

__all__ = ["run_demo", "DEMO_MODELS"]

DEMO_MODELS: Final = ("standin-chat", "standin-embed")

# The stand-in models take a fraction of a second to start; give slow
# machines plenty of room before declaring the demo broken.
READY_TIMEOUT: Final = 60.0

_CLUSTER_TOML: Final = """\
# Written by `sluice demo`: two stand-in models run as local processes, kept
# by the local-process scheduler with the same policy as Slurm jobs (see
# docs/operator-slurm.md): one instance each at least, a second one under load.
[gate]
routing_table = "routing.json"
state_dir = "state"
request_timeout = 120

[services.standin-chat]
backend = "local"
routes = ["chat", "completions", "responses", "transcriptions", "translations"]
revision = "standin-weights-1"
command = ["{{python}}", "-m", "cluster.standin", "--host", "127.0.0.1", "--port", "{{port}}",
           "--model", "{{model}}", "--kind", "chat", "--token-delay", "{token_delay}",
           "--ssl-keyfile", "{{tls_keyfile}}", "--ssl-certfile", "{{tls_certfile}}", "--ssl-ca-certs", "{{tls_ca}}",
           "--ssl-cert-reqs", "2"]
min_instances = 1
max_instances = 2
requests_per_instance = 32
load_window = 30
scale_down_delay = 60
warmup_timeout = 30

[services.standin-embed]
backend = "local"
routes = ["embeddings", "rerank", "score"]
command = ["{{python}}", "-m", "cluster.standin", "--host", "127.0.0.1", "--port", "{{port}}",
           "--model", "{{model}}", "--kind", "embeddings",
           "--ssl-keyfile", "{{tls_keyfile}}", "--ssl-certfile", "{{tls_certfile}}", "--ssl-ca-certs", "{{tls_ca}}",
           "--ssl-cert-reqs", "2"]
min_instances = 1
max_instances = 1
warmup_timeout = 30
"""


def write_cluster_config(directory: Path, token_delay: float) -> Path:
    path = directory / "cluster.toml"
    path.write_text(_CLUSTER_TOML.format(token_delay=repr(float(token_delay))))
    return path


def gate_argv(config: Path) -> list[str]:
    return [sys.executable, "-I", "-m", "cluster.cli", "gate", "--config", str(config), "--local-pipe"]


async def _wait_ready(appliance: Appliance, stop: asyncio.Event) -> bool:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline and not stop.is_set():
        if await appliance.ping():
            with contextlib.suppress(Exception):
                await appliance.clusters.refresh()
                models = await appliance.clusters.models()
                if all(name in models and models[name].ready for name in DEMO_MODELS):
                    return True
        await asyncio.sleep(0.2)
    return False


async def run_demo(
    port: int, api_key: str, mode: str, sessions: int, token_delay: float, log_level: str = "warning", host: str = "127.0.0.1"
) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    runtime = Path(tempfile.mkdtemp(prefix="sluice-demo-"))
    config_path = write_cluster_config(runtime, token_delay)
    # Quotas in memory, accounting in SQLite in the runtime directory, metrics, JSON logs.
    configure_logging(log_level)
    server_settings = ServerSettings(host=host, port=port)
    files = raise_file_limit(files_needed(server_settings.max_connections))
    if not files.enough:
        print(f"sluice demo: {files.shortfall()}", file=sys.stderr, flush=True)
    metrics = Metrics()
    meter = demo_meter(runtime, metrics)
    try:
        await meter.start()
    except BaseException:
        shutil.rmtree(runtime, ignore_errors=True)
        raise
    metrics_token = secrets.token_urlsafe(24)
    trail = AuditTrail(open_store("sqlite", path=runtime / "usage.db"))
    install(trail)
    audit_event("config_loaded", "sluice demo", str(runtime / "cluster.toml")[:256], mode=mode, sessions=sessions)
    # The gate's key for sealed requests, made by the cluster side's own command:
    # the appliance never holds (or imports the code that uses) that private key.
    create_keys = await asyncio.create_subprocess_exec(
        sys.executable,
        "-I",
        "-m",
        "cluster.cli",
        "keys",
        "create",
        "--config",
        str(config_path),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
    )
    if await create_keys.wait() != 0:
        print("sluice demo: could not create the gate's key for sealed requests", file=sys.stderr)
    scheduler = await asyncio.create_subprocess_exec(
        sys.executable, "-I", "-m", "cluster.cli", "scheduler", "--config", str(config_path), stdin=asyncio.subprocess.DEVNULL
    )
    keys = ApiKeyStore()
    keys.add(api_key, user="demo", key_id="demo")
    transport = LocalPipeTransport(gate_argv(config_path), mode=mode, sessions=sessions)
    url = demo_url(host, port)
    if not is_loopback(host):
        print(
            f"sluice demo: {host} is not a loopback address: the chat's one-click sign-in is off, and the API key "
            "and answers travel as plain http",
            file=sys.stderr,
            flush=True,
        )
    identity = demo_identity(runtime, url, host, keys)
    appliance = Appliance(
        ClusterSet.single(transport),
        identity.authenticator,
        identity.access,
        metering=meter,
        metrics=metrics,
        metrics_token=metrics_token,
        extensions=[ChatPage(), identity],
        body_timeout=server_settings.body_timeout,
        public_url=url,
    )
    config = hypercorn_config(server_settings, url.removeprefix("http://"), graceful_timeout=3.0)
    # Starlette is an ASGI 3 app; its ASGI types and Hypercorn's are declared apart and do not match.
    server = asyncio.create_task(serve(create_app(appliance), config, shutdown_trigger=stop.wait))  # type: ignore[arg-type]
    status = 0
    try:
        if await _wait_ready(appliance, stop):
            print(f"Sluice demo ready at {url}", flush=True)
            print(f"  web chat: {url}/", flush=True)
            print(f"  base URL: {url}/v1", flush=True)
            print(f"  API key:  {api_key}", flush=True)
            print(f"  models:   {', '.join(DEMO_MODELS)} (gate in {mode} mode)", flush=True)
            print(f"  metrics:  curl -H 'Authorization: Bearer {metrics_token}' {url}/metrics", flush=True)
            print(f"  usage:    sluice usage --database {runtime / 'usage.db'}", flush=True)
            print(f"  audit:    sluice audit --database {runtime / 'usage.db'}", flush=True)
            print("Press Ctrl-C to stop.", flush=True)
        elif not stop.is_set():
            print("sluice demo: the models did not become ready; see the messages above", file=sys.stderr)
            status = 1
            stop.set()
        done, _ = await asyncio.wait({server, asyncio.create_task(stop.wait())}, return_when=asyncio.FIRST_COMPLETED)
        if server in done and not stop.is_set():
            status = 1  # the server ended on its own (port in use, say)
            server.result()
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server, 10)
        await meter.aclose()
        install(None)
        trail.close()
        if scheduler.returncode is None:
            scheduler.terminate()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(scheduler.wait(), 10)
        if scheduler.returncode is None:
            scheduler.kill()
            await scheduler.wait()
        shutil.rmtree(runtime, ignore_errors=True)
    print("Sluice demo stopped.", flush=True)
    return status


def new_demo_key() -> str:
    return "sk-demo-" + secrets.token_urlsafe(24)
