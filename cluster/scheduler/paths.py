"""Where the scheduler keeps its files: one place for each path, shared by the
scheduler and the gate.

The gate reads the scheduler's state files (model status, census) and looks at
its lock (a kick is not needed while a pass runs) through these functions, so
it never imports the pass itself.  Nothing here touches the file system.
"""

from __future__ import annotations

from pathlib import Path

from ..config import ClusterConfig

__all__ = ["state_path", "lock_path", "load_dir"]


def state_path(config: ClusterConfig, backend: str) -> Path:
    return config.gate.state / f"{backend}-state.json"


def lock_path(config: ClusterConfig, backend: str) -> Path:
    return config.gate.state / f"{backend}.lock"


def load_dir(config: ClusterConfig) -> Path:
    return config.gate.shared / "load"
