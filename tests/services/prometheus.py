"""A real Prometheus server (Debian's ``prometheus``) scraping an appliance's ``/metrics``.

``scripts/test`` installs ``prometheus``; :class:`PrometheusServer` writes a
configuration with one scrape job (every second, with the metrics token as
``authorization: {credentials: ...}``), starts the server on a loopback port
with its own storage directory, and answers PromQL through the HTTP API.
Tests poll :meth:`query` until the samples they need are there; nothing here
sleeps a fixed time.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from tests.conftest import free_port

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"


class PrometheusServer:
    def __init__(self, target: str, token: str, metrics_path: str = "/metrics") -> None:
        if not Path(PROMETHEUS).exists():
            raise RuntimeError(f"{PROMETHEUS} is missing: scripts/test installs prometheus")
        self.dir = Path(tempfile.mkdtemp(prefix="sluice-prometheus-"))
        self.port = free_port()
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [
                {
                    "job_name": "sluice",
                    "metrics_path": metrics_path,
                    "scrape_timeout": "1s",
                    "authorization": {"credentials": token},
                    "static_configs": [{"targets": [target]}],
                }
            ],
        }
        (self.dir / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
        (self.dir / "prometheus.yml").chmod(0o600)
        self.log = (self.dir / "prometheus.log").open("wb")
        self.process = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={self.dir / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def api(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=10) as answer:  # noqa: S310 (loopback)
            document = json.loads(answer.read())
        if document.get("status") != "success":
            raise RuntimeError(f"prometheus: {document}")
        return document["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector ``expr`` evaluates to now."""
        data = self.api("/api/v1/query", query=expr)
        if data["resultType"] != "vector":
            raise RuntimeError(f"{expr} is a {data['resultType']}, not a vector")
        return list(data["result"])

    def wait_for(self, expr: str, check: Any = bool, timeout: float = 60.0) -> list[dict[str, Any]]:
        """Poll ``expr`` until ``check(result)`` holds; the result."""
        deadline = time.monotonic() + timeout
        result: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            try:
                result = self.query(expr)
            except OSError:  # the server is still starting
                result = []
            if check(result):
                return result
            time.sleep(0.25)
        targets = self.api("/api/v1/targets")
        raise AssertionError(f"{expr} never satisfied the check: {result}; targets: {targets}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)
