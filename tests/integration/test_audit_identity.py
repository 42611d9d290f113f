"""The audit trail of a real sign-in: OIDC sign-in and sign-out, groups, a key made and revoked on the web
page, and the configuration's unsafe mode, from `sluice serve` with SQLite accounting."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT, Cluster
from tests.integration.test_identity import Running, create_key, csrf, key_id, run_identity_appliance, sign_in

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def running(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    directory = tmp_path_factory.mktemp("audit-identity")
    extra = f'\n[accounting]\nbackend = "sqlite"\npath = "{directory / "usage.db"}"\n'
    with run_identity_appliance(cluster, directory, extra) as found:
        yield found


def _audit(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "appliance.cli", "audit", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )


def test_web_sign_in_keys_and_sign_out_are_audited(running: Running) -> None:
    browser = sign_in(running, "alice")
    key = create_key(browser, "laptop", ["standin-chat"])
    page = browser.get("/account/")
    revoked = browser.post(f"/account/keys/{key_id(key)}/revoke", data={"csrf": csrf(page.text)})
    assert revoked.status_code == 303
    page = browser.get("/account/")
    assert browser.post("/account/logout", data={"csrf": csrf(page.text)}).status_code == 303
    browser.close()
    listing = _audit(running.config, "--json")
    assert listing.returncode == 0, listing.stderr
    records = [json.loads(line) for line in listing.stdout.splitlines()]
    kinds = [r["kind"] for r in records]
    assert kinds[:2] == ["config_loaded", "unsafe_mode"] and records[1]["subject"] == "auth.cookie_secure=false"
    user = next(r["actor"] for r in records if r["kind"] == "sign_in")
    mine = [(r["kind"], r["subject"]) for r in records[2:] if user in (r["actor"], r["subject"], r["details"].get("owner"))]
    assert mine == [
        ("groups_changed", user),
        ("sign_in", user),
        ("key_created", key_id(key)),
        ("key_scoped", key_id(key)),
        ("key_revoked", key_id(key)),
        ("sign_out", user),
    ]
    assert key not in listing.stdout
    verified = _audit(running.config, "verify")
    assert verified.returncode == 0 and "intact" in verified.stdout
