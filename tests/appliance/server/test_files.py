"""The open-file limit: raised to the hard limit at start, and a clear message when it is short."""

from __future__ import annotations

import logging
import resource

import pytest

from appliance.server import files
from appliance.server.files import FILE_OVERHEAD, files_needed, raise_file_limit


def test_files_needed_counts_connections_and_overhead() -> None:
    assert files_needed(10_000) == 10_000 + FILE_OVERHEAD


def test_the_soft_limit_is_raised_to_the_hard_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    current = [1024, 65536]
    monkeypatch.setattr(files.resource, "getrlimit", lambda _: tuple(current))

    def setrlimit(which: int, limits: tuple[int, int]) -> None:
        assert which == resource.RLIMIT_NOFILE
        current[:] = list(limits)

    monkeypatch.setattr(files.resource, "setrlimit", setrlimit)
    limit = raise_file_limit(files_needed(10_000))
    assert current == [65536, 65536]
    assert (limit.before, limit.soft, limit.hard) == (1024, 65536, 65536) and limit.enough


def test_a_short_hard_limit_is_said_with_the_fix(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(files.resource, "getrlimit", lambda _: (1024, 4096))
    monkeypatch.setattr(files.resource, "setrlimit", lambda *_: None)
    with caplog.at_level(logging.WARNING, "sluice.server"):
        limit = raise_file_limit(files_needed(10_000))
    assert limit.soft == 4096 and not limit.enough
    message = limit.shortfall()
    assert "4096" in message and "max_connections" in message and "ulimit -Hn" in message
    assert "file_limit_short" in caplog.text


def test_a_refused_raise_keeps_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(files.resource, "getrlimit", lambda _: (1024, resource.RLIM_INFINITY))

    def refuse(*_: object) -> None:
        raise ValueError("not allowed")

    monkeypatch.setattr(files.resource, "setrlimit", refuse)
    limit = raise_file_limit(100)
    assert limit.soft == 1024 and limit.hard == files.UNLIMITED_TARGET and limit.enough


def test_the_real_limit_can_be_raised_in_this_process() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        limit = raise_file_limit(16)
        assert limit.soft == resource.getrlimit(resource.RLIMIT_NOFILE)[0] >= soft
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
