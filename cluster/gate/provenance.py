"""What produced an answer: the model's configured revision and its server's version.

The revision is the operator's (``revision = "..."`` beside a service or a
static backend in the cluster config: a weights revision or hash).  The
version is the model server's own, from its ``GET /version`` (vLLM and the
stand-in answer ``{"version": "..."}``), asked once per instance and kept for
:data:`VERSION_TTL` seconds; a server that does not say is named by revision
alone.  Both travel to the appliance with the usage numbers (the END frame),
and the model listing carries them too, for the headers of streamed answers.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Final

from policy.errors import SluiceError

from ..backend_client import BackendPool
from ..routing import Instance

__all__ = ["VERSION_TTL", "Provenance"]

# How long an instance's version is trusted (a job keeps its server for its life).
VERSION_TTL: Final = 600.0
# How long asking for it may take: the request waits for the answer.
VERSION_TIMEOUT: Final = 2.0
# The most instances remembered (entries beyond are forgotten, oldest first).
MAX_REMEMBERED: Final = 1024
# A version string: printable, short, no separators that could split a header.
_VERSION_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+\-]{0,63}", re.ASCII)


class Provenance:
    """Revisions from the config, versions from the servers, for one gate process."""

    def __init__(self, revisions: dict[str, str], pool: BackendPool) -> None:
        self._revisions = dict(revisions)
        self._pool = pool
        self._versions: dict[tuple[str, int, str | None], tuple[float, str | None]] = {}
        self._latest: dict[str, str] = {}  # model -> the last version seen

    def listing(self, model: str) -> dict[str, str]:
        """What the model listing says of ``model``: its revision and last seen server version."""
        out = {}
        if model in self._revisions:
            out["revision"] = self._revisions[model]
        if model in self._latest:
            out["backend_version"] = self._latest[model]
        return out

    async def of(self, model: str, instance: Instance) -> dict[str, str]:
        """The revision of ``model`` and the version of the server ``instance``."""
        out = {}
        if model in self._revisions:
            out["revision"] = self._revisions[model]
        version = await self._version(instance)
        if version is not None:
            out["backend_version"] = version
            self._latest[model] = version
        return out

    async def _version(self, instance: Instance) -> str | None:
        key = (instance.host, instance.port, instance.pin)
        now = time.monotonic()
        cached = self._versions.get(key)
        if cached is not None and now - cached[0] < VERSION_TTL:
            return cached[1]
        version = None
        try:
            async with asyncio.timeout(VERSION_TIMEOUT):
                response = await self._pool.request(
                    instance.host,
                    instance.port,
                    instance.token,
                    "GET",
                    "/version",
                    b"",
                    VERSION_TIMEOUT,
                    pin=instance.pin,
                )
                try:
                    data = await response.read(4096) if response.status == 200 else b""
                finally:
                    response.close()
            document = json.loads(data) if data else None
            value = document.get("version") if isinstance(document, dict) else None
            if isinstance(value, str) and _VERSION_RE.fullmatch(value) is not None:
                version = value
        except (SluiceError, TimeoutError, ValueError, RecursionError):
            version = None
        if len(self._versions) >= MAX_REMEMBERED:
            self._versions.pop(next(iter(self._versions)))
        self._versions[key] = (now, version)
        return version
