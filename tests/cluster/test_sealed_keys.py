"""The gate's sealed-request key ring on disk: retired keys are deleted after their window."""

from __future__ import annotations

import math
import time
from pathlib import Path

from cluster import sealed_keys


def _config(tmp_path: Path) -> Path:
    config = tmp_path / "cluster.toml"
    config.write_text("")
    return config


def _files(config: Path) -> set[str]:
    return {path.name for path in sealed_keys.keys_dir(config).glob("key-*.json")}


def test_reject_retired_key_kept_after_its_window_on_load(tmp_path: Path) -> None:
    """Finding 16: a gate that loads the ring deletes the files of keys past their window."""
    config = _config(tmp_path)
    sealed_keys.create(config)
    sealed_keys.rotate(config, overlap=60)
    assert _files(config) == {"key-000.json", "key-001.json"}
    ring = sealed_keys.load_ring(config)  # within the window: both stay
    assert ring is not None and _files(config) == {"key-000.json", "key-001.json"}
    later = time.time() + 61
    ring = sealed_keys.load_ring(config, clock=lambda: later)
    assert ring is not None and ring.current.key_id == 1
    assert _files(config) == {"key-001.json"}


def test_reject_retired_key_kept_after_its_window_on_rotation(tmp_path: Path) -> None:
    config = _config(tmp_path)
    sealed_keys.create(config)
    sealed_keys.rotate(config, overlap=0)
    time.sleep(0.01)
    new = sealed_keys.rotate(config, overlap=3600)  # takes the lowest free id: the expired key's
    assert new.key_id == 0 and _files(config) == {"key-000.json", "key-001.json"}
    ring = sealed_keys.load_ring(config)
    assert ring is not None and ring.current.config.fingerprint() == new.config.fingerprint()


def test_purge_reports_the_next_expiry(tmp_path: Path) -> None:
    config = _config(tmp_path)
    assert sealed_keys.purge_expired(config) == math.inf  # no ring at all
    sealed_keys.create(config)
    assert sealed_keys.purge_expired(config) == math.inf
    before = time.time()
    sealed_keys.rotate(config, overlap=60)
    assert before + 60 <= sealed_keys.purge_expired(config) <= time.time() + 60
    assert sealed_keys.purge_expired(config, clock=lambda: time.time() + 61) == math.inf
    assert _files(config) == {"key-001.json"}
