"""Short runs of the atheris fuzz targets in threat_model/fuzz/ (auditors run the long ones).

Each target states one invariant -- any input is accepted as a typed value or
rejected with a SluiceError -- and atheris reports anything else as a crash.
Every target runs as its own process, exactly as an auditor starts it
(``python threat_model/fuzz/fuzz_X.py -atheris_runs=N``), so libFuzzer's
process-wide state never touches pytest; all of them run at once, with a fixed
seed so that a failure here reproduces.  A crash leaves its input under the
test's tmp_path (``-artifact_prefix``) and the traceback in the failure.

atheris must be installed: without it this test fails, it does not skip.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

FUZZ_DIR = ROOT / "threat_model" / "fuzz"

# Iterations per target (about two seconds in all, side by side on two idle cores), and a
# time limit per target that ends the run first on a loaded machine.
RUNS = {"fuzz_grammar": 100_000, "fuzz_frames": 25_000, "fuzz_bodies": 25_000, "fuzz_multipart": 25_000}
MAX_SECONDS = 4
SEED = 20_240_601

IMPORT_CHECK = """
import importlib, sys
for name in sys.argv[1:]:
    module = importlib.import_module("threat_model.fuzz." + name)
    assert callable(module.TestOneInput) and callable(module.main), name
    assert module.__doc__ and "Invariant:" in module.__doc__, name
print("imported", len(sys.argv) - 1)
"""


def _require_atheris() -> None:
    if importlib.util.find_spec("atheris") is None:
        pytest.fail(
            "atheris is not installed, so the fuzz targets in threat_model/fuzz cannot run: "
            f"`{sys.executable} -m pip install atheris` (it belongs in the `test` extra of pyproject.toml)",
            pytrace=False,
        )


@pytest.fixture(scope="module")
def short_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[int, str, Path]]:
    _require_atheris()
    processes = {}
    for name, runs in RUNS.items():
        artifacts = tmp_path_factory.mktemp(name)
        argv = [
            sys.executable,
            str(FUZZ_DIR / f"{name}.py"),
            f"-atheris_runs={runs}",
            f"-seed={SEED}",
            f"-max_total_time={MAX_SECONDS}",
            f"-artifact_prefix={artifacts}/",
        ]
        processes[name] = (subprocess.Popen(argv, cwd=artifacts, stdout=subprocess.PIPE, stderr=subprocess.STDOUT), artifacts)
    importer = subprocess.Popen(
        [sys.executable, "-c", IMPORT_CHECK, *RUNS], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    results = {}
    for name, (process, artifacts) in processes.items():
        out, _ = process.communicate(timeout=MAX_SECONDS + 60)
        results[name] = (process.returncode, out.decode(errors="replace"), artifacts)
    out, _ = importer.communicate(timeout=60)
    results["import"] = (importer.returncode, out.decode(errors="replace"), ROOT)
    return results


def test_atheris_is_installed() -> None:
    _require_atheris()


def test_fuzz_targets_are_importable(short_runs: dict[str, tuple[int, str, Path]]) -> None:
    status, output, _ = short_runs["import"]
    assert status == 0, output[-3000:]


@pytest.mark.parametrize("name", sorted(RUNS))
def test_fuzz_target_short_run(name: str, short_runs: dict[str, tuple[int, str, Path]]) -> None:
    status, output, artifacts = short_runs[name]
    crashes = sorted(p.name for p in artifacts.iterdir())
    assert status == 0 and not crashes, f"{name} found a crash (inputs in {artifacts}: {crashes}):\n{output[-4000:]}"
    assert re.search(r"^Done \d+ (runs )?in \d+ second", output, re.MULTILINE), output[-2000:]
