"""The Hypercorn configuration: the headers of every answer are Hypercorn's own, made once a second."""

from __future__ import annotations

import time

import pytest
from hypercorn.config import Config

from appliance.server.config import hypercorn_config
from appliance.settings import ServerSettings


def test_answer_headers_are_hypercorns(monkeypatch: pytest.MonkeyPatch) -> None:
    config = hypercorn_config(ServerSettings(), "127.0.0.1:8080")
    now = [1_800_000_000.25]
    monkeypatch.setattr(time, "time", lambda: now[0])
    monkeypatch.setattr("hypercorn.config.time", lambda: now[0])
    first = config.response_headers("h11")
    first.append((b"x-changed", b"by a caller"))  # a caller's list is its own
    now[0] += 0.5
    assert config.response_headers("h11") == Config().response_headers("h11")
    assert config.response_headers("h11") == [(b"date", b"Fri, 15 Jan 2027 08:00:00 GMT"), (b"server", b"hypercorn-h11")]
    now[0] += 1
    assert config.response_headers("h11")[0] == (b"date", b"Fri, 15 Jan 2027 08:00:01 GMT")
