"""docs/operator-scale.md shows the HAProxy configuration the integration tests run."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from tests.services.haproxy import haproxy_config

DOC = Path(__file__).resolve().parents[1] / "docs" / "operator-scale.md"
SERVERS = [("app1", "10.0.0.11:8080"), ("app2", "10.0.0.12:8080"), ("app3", "10.0.0.13:8080")]


def _documented() -> str:
    blocks = re.findall(r"```haproxy\n(.*?)```", DOC.read_text(), re.S)
    assert len(blocks) == 1
    return blocks[0]


def test_documented_haproxy_configuration_is_the_tested_one() -> None:
    assert _documented() == haproxy_config("*:443 ssl crt /etc/haproxy/sluice.pem", SERVERS)


def test_documented_configuration_passes_haproxys_own_check(tmp_path: Path) -> None:
    config = tmp_path / "haproxy.cfg"
    config.write_text(_documented().replace("*:443 ssl crt /etc/haproxy/sluice.pem", "127.0.0.1:8443"))
    subprocess.run([shutil.which("haproxy") or "/usr/sbin/haproxy", "-c", "-q", "-f", str(config)], check=True)
