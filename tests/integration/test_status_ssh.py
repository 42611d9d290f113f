"""`sluice status` and the audit trail against `sluice serve` reaching a gate over real sshd."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.integration.test_ssh import Appliance, sshd, start_appliance, stop_appliance, wait_ready  # noqa: F401
from tests.services.sshd import Sshd

pytestmark = pytest.mark.integration


def _secret_file(path: Path, value: str) -> Path:
    path.write_text(value)
    path.chmod(0o600)
    return path


@pytest.fixture(scope="module")
def served(sshd: Sshd, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Appliance, Path]]:  # noqa: F811
    directory = tmp_path_factory.mktemp("status-ssh")
    token = _secret_file(directory / "metrics.token", secrets.token_urlsafe(24))
    audit_key = _secret_file(directory / "audit.key", secrets.token_urlsafe(32))
    extra = "\n".join(
        [
            "[quotas]",
            'on_storage_error = "unsafe-allow"',
            "[accounting]",
            'backend = "sqlite"',
            f'path = "{directory / "usage.db"}"',
            f'audit_key_file = "{audit_key}"',
            "[metrics]",
            f'token_file = "{token}"',
            "",
        ]
    )
    appliance = start_appliance(sshd, "mux", extra_toml=extra)
    config = sshd.dir / f"appliance-{appliance.url.rsplit(':', 1)[1]}.toml"
    try:
        wait_ready(appliance)
        yield appliance, config
    finally:
        stop_appliance(appliance)


def _sluice(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "appliance.cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=60,
        check=False,
    )


def test_status_over_real_ssh(served: tuple[Appliance, Path]) -> None:
    appliance, config = served
    answer = appliance.client().chat.completions.create(
        model="standin-chat", messages=[{"role": "user", "content": "Hello"}], max_tokens=4
    )
    assert answer.choices[0].message.content
    table = _sluice("status", "--config", str(config))
    assert table.returncode == 0, table.stderr
    assert any(line.split()[:3] == ["hpc", "up", "2/2"] for line in table.stdout.splitlines()), table.stdout
    assert any(line.split()[:3] == ["hpc", "standin-chat", "ready"] for line in table.stdout.splitlines())
    document = json.loads(_sluice("status", "--config", str(config), "--json").stdout)
    assert document["clusters"] == [
        {"cluster": "hpc", "up": True, "sessions": 2, "streams": 0, "slots": 2, "reconnects": 0, "connect_failures": 0}
    ]
    chat = next(m for m in document["models"] if m["model"] == "standin-chat")
    assert chat["instances_ready"] == 1 and chat["instances_starting"] == 0  # a static backend


def test_start_is_audited_with_its_unsafe_mode_and_signed(served: tuple[Appliance, Path]) -> None:
    _, config = served
    listing = _sluice("audit", "--config", str(config), "--json")
    assert listing.returncode == 0, listing.stderr
    records = [json.loads(line) for line in listing.stdout.splitlines()]
    assert [(r["kind"], r["subject"]) for r in records[:2]] == [
        ("config_loaded", str(config)),
        ("unsafe_mode", "quotas.on_storage_error=unsafe-allow"),
    ]
    assert records[0]["details"]["sha256"] == hashlib.sha256(config.read_bytes()).hexdigest()
    assert all(r["sig"] for r in records)
    verified = _sluice("audit", "verify", "--config", str(config))
    assert verified.returncode == 0 and "signatures checked" in verified.stdout
