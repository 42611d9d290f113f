"""``sluice serve --config FILE``: the appliance as deployed, from its configuration."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import sqlite3
import sys
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from pathlib import Path

from hypercorn.asyncio import serve

from policy.events import event_line
from policy.loop import run_event_loop

from .app import Appliance, Extension, create_app
from .audit.startup import close_trail, open_trail, record_start
from .auth.api_keys import ApiKeyStore
from .auth.build import build_identity
from .catalog import ClusterSet
from .external import ExternalProxy
from .logs import configure_logging
from .metrics import Metrics, metrics_app
from .metrics_shared import close_shared_metrics, forget_worker, shared_metrics_dir
from .quotas.meter import Meter, build_meter
from .server import hypercorn_config
from .server.files import files_needed, raise_file_limit
from .server.workers import Supervisor, bind_socket, install_stop, spawn_context
from .settings import LocalCluster, Settings, SshCluster
from .transport.base import GateTransport
from .transport.local import LocalPipeTransport
from .web_chat import ChatPage

__all__ = ["Listeners", "build_appliance", "run_server", "worker_main"]


def _transport(cluster: LocalCluster | SshCluster) -> GateTransport:
    if isinstance(cluster, SshCluster):
        from .transport.ssh import SshTransport

        return SshTransport(cluster)
    return LocalPipeTransport(cluster.gate_command, mode=cluster.mode, sessions=cluster.sessions)


def _form_origins(settings: Settings) -> list[str]:
    """Where the chat's sign-out form may lead: the provider's logout, or the proxy's."""
    identity = settings.identity
    urls = [identity.oidc.issuer] if identity.oidc is not None else []
    header = identity.auth.trusted_header
    if header is not None and header.logout_url and not header.logout_url.startswith("/"):
        urls.append(header.logout_url)
    return urls


def build_appliance(settings: Settings, worker: int | None = None) -> Appliance:
    keys = ApiKeyStore()
    for entry in settings.api_keys:
        keys.add_digest(entry.sha256, entry.user, entry.key_id, entry.groups)
    clusters = ClusterSet({c.name: _transport(c) for c in settings.clusters})
    identity = build_identity(settings.identity, keys)
    extensions: list[Extension] = [ChatPage(_form_origins(settings)), identity]  # the chat first: it serves "/"
    if settings.external:
        external = ExternalProxy(settings.external)
        identity.extra_models = external.visible
        extensions.append(external)
    metrics = Metrics(worker)
    meter = build_meter(settings.metering, metrics)
    if settings.external and meter.quotas is not None:
        external.use_limits(meter.quotas)  # the external upstreams' limits on the quotas' store (Redis)
    token_file = settings.metering.metrics.token_file
    metrics_token = None
    if token_file is not None:
        from .auth.secret import read_secret_file

        metrics_token = read_secret_file(token_file, "metrics.token_file", min_length=16)
    return Appliance(
        clusters,
        identity.authenticator,
        identity.access,
        metering=meter,
        keepalive_interval=settings.server.keepalive_interval,
        request_timeout=settings.server.request_timeout,
        extensions=extensions,
        public_url=settings.identity.auth.public_url,
        body_timeout=settings.server.body_timeout,
        output_ceilings=settings.server.output_ceilings,
        sealed_keys_ttl=settings.server.sealed_keys_ttl,
        metrics=metrics,
        metrics_token=metrics_token,
        access_log=settings.metering.logging.requests,
    )


async def run_server(settings: Settings, config_path: Path | None = None) -> int:
    """Serve until SIGTERM or SIGINT: in this process, or in ``[server] workers`` supervised ones."""
    configure_logging(settings.metering.logging.level)
    if settings.server.workers > 1:
        return await _run_workers(settings, config_path)
    _raise_file_limit(settings)
    return await _serve(settings, config_path)


def _raise_file_limit(settings: Settings) -> None:
    limit = raise_file_limit(files_needed(settings.server.max_connections))
    if not limit.enough:
        print(f"sluice: {limit.shortfall()}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Listeners:
    """The sockets a worker serves on, bound by the parent (see appliance.server.workers)."""

    api: socket.socket
    admin: socket.socket | None = None

    def close(self) -> None:
        self.api.close()
        if self.admin is not None:
            self.admin.close()


def _bind(sock: socket.socket | None, fallback: str) -> str:
    """Hypercorn's bind for an inherited socket (which it then owns), or the address to bind."""
    return fallback if sock is None else f"fd://{sock.detach()}"


async def _serve(
    settings: Settings, config_path: Path | None, listeners: Listeners | None = None, worker: int | None = None
) -> int:
    """One appliance on its own event loop: the whole server, or one worker of several (``worker``)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    api_bind = _bind(listeners.api if listeners else None, f"{settings.server.host}:{settings.server.port}")
    config = hypercorn_config(settings.server, api_bind)
    appliance = build_appliance(settings, worker)
    # The shared stores (PostgreSQL): connected, and their schema checked, before the first request.
    from .auth.build import IdentityServices
    from .migrations import SchemaError

    for extension in appliance.extensions:
        if isinstance(extension, IdentityServices):
            try:
                await extension.start()
            except (OSError, RuntimeError, SchemaError) as exc:
                print(f"sluice: cannot open the identity database: {exc}", file=sys.stderr)
                return 2
    # Quotas, accounting, metrics: started before the first request, closed after the last.
    meter = appliance.metering
    if isinstance(meter, Meter):
        try:
            await meter.start()
        except (OSError, sqlite3.Error, RuntimeError) as exc:  # the accounting store cannot be opened (or its schema)
            logging.getLogger("sluice.metering").error(event_line("metering_start_failed", error=type(exc).__name__))
            print(f"sluice: cannot start accounting: {exc}", file=sys.stderr)
            return 2
    # Audit trail (appliance/audit): beside the accounting; the configuration and unsafe modes first.
    # Workers append their own events (sign-ins, keys) to the one chain; the parent recorded the start.
    try:
        trail = open_trail(settings.metering.accounting)
    except (OSError, sqlite3.Error, RuntimeError, ValueError) as exc:
        print(f"sluice: cannot open the audit trail: {exc}", file=sys.stderr)
        if isinstance(meter, Meter):
            await meter.aclose()
        return 2
    if worker is None:
        record_start(settings, config_path)
    # Starlette is an ASGI 3 app; its ASGI types and Hypercorn's are declared apart and do not match.
    servers = [serve(create_app(appliance), config, shutdown_trigger=stop.wait)]  # type: ignore[arg-type]
    admin = settings.metering.metrics.admin_bind
    if admin is not None and appliance.metrics is not None:
        admin_config = hypercorn_config(settings.server, _bind(listeners.admin if listeners else None, f"{admin[0]}:{admin[1]}"))
        admin_app = metrics_app(appliance.metrics, appliance.clusters, appliance.metrics_token)
        # Starlette is an ASGI 3 app; its ASGI types and Hypercorn's are declared apart and do not match.
        servers.append(serve(admin_app, admin_config, shutdown_trigger=stop.wait))  # type: ignore[arg-type]
    try:
        await asyncio.gather(*servers)
    finally:
        if isinstance(meter, Meter):
            await meter.aclose()
        close_trail(trail)
    return 0


def worker_main(settings: Settings, config_path: Path | None, index: int, listeners: Listeners) -> None:
    """A worker process's entry (spawned by the parent): serve on the inherited sockets until SIGTERM."""
    configure_logging(settings.metering.logging.level)
    raise_file_limit(files_needed(settings.server.max_connections))  # the parent has said it if short
    sys.exit(run_event_loop(_serve(settings, config_path, listeners, index)))


async def _run_workers(settings: Settings, config_path: Path | None) -> int:
    """The parent of ``[server] workers`` processes: bind once, record the start, supervise."""
    _raise_file_limit(settings)  # inherited by the workers
    server = settings.server
    try:
        api = bind_socket(server.host, server.port)
    except OSError as exc:
        print(f"sluice: cannot listen on {server.host}:{server.port}: {exc}", file=sys.stderr)
        return 2
    admin = None
    admin_bind = settings.metering.metrics.admin_bind
    if admin_bind is not None:
        try:
            admin = bind_socket(*admin_bind)
        except OSError as exc:
            api.close()
            print(f"sluice: cannot listen on metrics.admin_bind {admin_bind[0]}:{admin_bind[1]}: {exc}", file=sys.stderr)
            return 2
    listeners = Listeners(api, admin)
    # The configuration and unsafe modes, recorded once (not once per worker start), then the trail closed:
    # the workers append to the same chain (each append locks the chain's head: one writer at a time).
    try:
        trail = open_trail(settings.metering.accounting)
    except (OSError, sqlite3.Error, RuntimeError, ValueError) as exc:
        print(f"sluice: cannot open the audit trail: {exc}", file=sys.stderr)
        listeners.close()
        return 2
    record_start(settings, config_path)
    close_trail(trail)
    metrics_dir = shared_metrics_dir()
    context = spawn_context()

    def start(index: int) -> BaseProcess:
        process = context.Process(
            target=worker_main, args=(settings, config_path, index, listeners), name=f"sluice-worker-{index}"
        )
        process.start()
        return process

    supervisor = Supervisor(start, server.workers, on_death=lambda p: forget_worker(metrics_dir, p.pid))
    install_stop(supervisor)
    try:
        return await supervisor.run()
    finally:
        listeners.close()
        close_shared_metrics(metrics_dir)
