"""``[server]`` settings: worker processes, and what several workers refuse to share."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from appliance.settings import MAX_WORKERS, ConfigError, parse_settings

CLUSTER: dict[str, Any] = {"name": "local", "transport": "local", "gate_command": ["gate", "--local-pipe"]}


def _settings(server: dict[str, Any], **tables: Any) -> Any:
    return parse_settings({"server": server, "clusters": [CLUSTER], **tables}, Path("."))


def test_one_worker_by_default() -> None:
    assert _settings({}).server.workers == 1


def test_several_workers_with_quotas_in_redis_or_none() -> None:
    assert _settings({"workers": 4}, quotas={"storage": "async+redis://redis.internal:6379/0"}).server.workers == 4
    assert _settings({"workers": MAX_WORKERS}, quotas={"enabled": False}).server.workers == MAX_WORKERS


def test_reject_several_workers_with_quotas_in_memory() -> None:
    with pytest.raises(ConfigError) as caught:
        _settings({"workers": 2})
    assert caught.value.key == "server.workers"
    message = str(caught.value)
    assert "2 times every limit" in message and "quotas.storage" in message and "server.workers = 1" in message


@pytest.mark.parametrize("workers", [0, MAX_WORKERS + 1, 1.5, True, "2"])
def test_reject_workers_out_of_bounds(workers: object) -> None:
    with pytest.raises(ConfigError) as caught:
        _settings({"workers": workers}, quotas={"enabled": False})
    assert caught.value.key == "server.workers"
