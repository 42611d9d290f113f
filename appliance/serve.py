"""``sluice serve --config FILE``: the appliance as deployed, from its configuration."""

from __future__ import annotations

import asyncio
import signal
from typing import Final

from hypercorn.asyncio import serve
from hypercorn.config import Config

from .app import Appliance, create_app
from .auth.api_keys import ApiKeyAuthenticator, ApiKeyStore
from .catalog import ClusterSet
from .settings import LocalCluster, Settings, SshCluster
from .transport.base import GateTransport
from .transport.local import LocalPipeTransport

__all__ = ["build_appliance", "run_server"]

# Seconds Hypercorn gives open requests to finish on shutdown.
GRACEFUL_TIMEOUT: Final = 5.0


def _transport(cluster: LocalCluster | SshCluster) -> GateTransport:
    if isinstance(cluster, SshCluster):
        from .transport.ssh import SshTransport

        return SshTransport(cluster)
    return LocalPipeTransport(cluster.gate_command, mode=cluster.mode, sessions=cluster.sessions)


def build_appliance(settings: Settings) -> Appliance:
    keys = ApiKeyStore()
    for entry in settings.api_keys:
        keys.add_digest(entry.sha256, entry.user, entry.key_id)
    clusters = ClusterSet({c.name: _transport(c) for c in settings.clusters})
    return Appliance(
        clusters,
        ApiKeyAuthenticator(keys),
        keepalive_interval=settings.server.keepalive_interval,
        request_timeout=settings.server.request_timeout,
    )


async def run_server(settings: Settings) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    config = Config()
    config.bind = [f"{settings.server.host}:{settings.server.port}"]
    config.accesslog = None
    config.graceful_timeout = GRACEFUL_TIMEOUT
    await serve(create_app(build_appliance(settings)), config, shutdown_trigger=stop.wait)  # type: ignore[arg-type]
    return 0
