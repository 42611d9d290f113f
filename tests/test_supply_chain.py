"""The supply chain: locked, hash-checked dependencies, one HTTP client stack, licenses listed.

`scripts/test` itself installs the suite's environment from
`requirements/test.lock` with `--require-hashes`, so the whole suite passing
is the proof that the locks make a working environment; these tests hold the
locks to the pins in pyproject.toml and show that a tampered hash is refused.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REQUIREMENTS = ROOT / "requirements"
LOCKS = ("build.lock", "cluster.lock", "appliance.lock", "test.lock")
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\;]+)", re.M)
# Which pyproject extras each lock is compiled from (scripts/lock).
LOCK_EXTRAS = {
    "cluster.lock": ("cluster",),
    "appliance.lock": ("appliance", "postgres"),
    "test.lock": ("appliance", "postgres", "cluster", "test"),
}


def _pins(text: str) -> dict[str, str]:
    return {name.lower().replace("_", "-"): version for name, version in PIN.findall(text)}


def _entries(lock: Path) -> list[str]:
    """One string per requirement of a lock file (its continuation lines joined)."""
    text = lock.read_text()
    entries = re.split(r"\n(?=[A-Za-z0-9])", "\n" + text)
    return [entry.strip() for entry in entries if PIN.match(entry.strip())]


@pytest.mark.parametrize("lock", LOCKS)
def test_every_locked_requirement_is_pinned_with_hashes(lock: str) -> None:
    entries = _entries(REQUIREMENTS / lock)
    assert entries
    for entry in entries:
        assert re.search(r"--hash=sha256:[0-9a-f]{64}", entry), entry.splitlines()[0]


@pytest.mark.parametrize("lock", LOCKS)
def test_reject_a_lock_that_names_an_index(lock: str) -> None:
    text = (REQUIREMENTS / lock).read_text()
    for option in ("--index-url", "--extra-index-url", "--find-links", "--trusted-host", "-i ", "-f "):
        assert not re.search(rf"^\s*{re.escape(option)}", text, re.M), option


@pytest.mark.parametrize("lock", sorted(LOCK_EXTRAS))
def test_locks_agree_with_the_pins_in_pyproject(lock: str) -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    locked = _pins((REQUIREMENTS / lock).read_text())
    for extra in LOCK_EXTRAS[lock]:
        for requirement in extras[extra]:
            match = re.match(r"([A-Za-z0-9._-]+)(\[[^\]]*\])?==([^;\s]+)", requirement)
            assert match, f"[{extra}] {requirement} is not pinned exactly"
            name = match.group(1).lower().replace("_", "-")
            assert locked.get(name) == match.group(3), f"{lock} is stale for {name}: run scripts/lock"


def test_the_venv_is_the_lock() -> None:
    """What the suite runs on is exactly what test.lock pins."""
    from importlib import metadata

    for name, version in _pins((REQUIREMENTS / "test.lock").read_text()).items():
        assert metadata.version(name) == version, name


@pytest.mark.integration
def test_reject_a_tampered_hash(tmp_path: Path) -> None:
    """pip refuses a download whose hash is not the locked one (and takes it when it is)."""
    entry = next(e for e in _entries(REQUIREMENTS / "test.lock") if e.lower().startswith("iniconfig=="))
    good = tmp_path / "good.txt"
    good.write_text(entry + "\n")
    tampered = tmp_path / "tampered.txt"
    tampered.write_text(re.sub(r"sha256:[0-9a-f]{64}", "sha256:" + "0" * 64, entry) + "\n")

    def download(requirements: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--disable-pip-version-check",
                "--no-deps",
                "--require-hashes",
                "--only-binary=:all:",
                "-d",
                str(tmp_path / requirements.stem),
                "-r",
                str(requirements),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    refused = download(tampered)
    assert refused.returncode != 0
    assert "DO NOT MATCH THE HASHES" in refused.stderr
    assert download(good).returncode == 0


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_one_http_client_stack() -> None:
    """httpx2 (what the official openai client uses) everywhere; the older httpx nowhere of ours."""
    offenders = [
        str(path.relative_to(ROOT))
        for folder in ("policy", "cluster", "appliance", "sluice_sdk", "threat_model", "tests", "bench")
        for path in (ROOT / folder).rglob("*.py")
        if "httpx" in _imports(path)
    ]
    assert offenders == []


def test_licenses_list_every_runtime_dependency() -> None:
    listed = {}
    for line in (ROOT / "docs" / "licenses.md").read_text().splitlines():
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if len(cells) == 4 and re.match(r"\d", cells[1]):
            listed[cells[0].lower().replace("_", "-")] = (cells[1], cells[2])
    for lock in ("appliance.lock", "cluster.lock"):
        for name, version in _pins((REQUIREMENTS / lock).read_text()).items():
            assert name in listed, f"{name} missing from docs/licenses.md: run scripts/licenses"
            assert listed[name][0] == version, f"{name}: docs/licenses.md is stale, run scripts/licenses"
            assert listed[name][1] not in ("", "UNKNOWN"), name
