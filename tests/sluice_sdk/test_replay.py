"""The replay guard: the same enc is refused within the window and forgotten after it."""

from __future__ import annotations

import pytest

from sluice_sdk import ohttp
from sluice_sdk.errors import SealError
from sluice_sdk.keys import generate_key
from sluice_sdk.replay import ReplayGuard, http_date


class Clock:
    def __init__(self, now: float = 1_644_193_685.0) -> None:  # Mon, 07 Feb 2022 00:28:05 GMT
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_replay_refused_within_window_accepted_after() -> None:
    clock = Clock()
    guard = ReplayGuard(30, clock=clock)
    key = generate_key(1)
    enc_request, _ = ohttp.encapsulate_request(key.config, b"request")
    _, sealer = ohttp.decapsulate_request(key, enc_request)
    guard.check(sealer.enc)
    clock.now += 59.9
    _, again = ohttp.decapsulate_request(key, enc_request)  # the relay replays it
    with pytest.raises(SealError):
        guard.check(again.enc)
    clock.now += 0.1
    guard.check(again.enc)  # twice the window passed: the date check is what refuses it now
    assert len(guard) == 1


def test_distinct_requests_accepted() -> None:
    guard = ReplayGuard(30, clock=Clock())
    for i in range(100):
        guard.check(i.to_bytes(32, "big"))
    assert len(guard) == 100


def test_memory_is_bounded_and_fails_closed() -> None:
    clock = Clock()
    guard = ReplayGuard(10, max_entries=3, clock=clock)
    for i in range(3):
        guard.check(bytes([i]) * 32)
    with pytest.raises(SealError):
        guard.check(b"\x09" * 32)  # full of live entries: refuse rather than forget one
    with pytest.raises(SealError):
        guard.check(b"\x00" * 32)  # and the remembered ones are still replays
    clock.now += 20  # twice the window (a request dated ahead is acceptable that long)
    guard.check(b"\x09" * 32)  # expired entries make room
    assert len(guard) == 1


def test_date_window() -> None:
    clock = Clock()
    guard = ReplayGuard(60, clock=clock)
    guard.check_date(b"Mon, 07 Feb 2022 00:28:05 GMT")
    guard.check_date("Mon, 07 Feb 2022 00:29:05 GMT")
    guard.check_date(b"Mon, 07 Feb 2022 00:27:05 GMT")
    guard.check_date(http_date(clock.now))
    assert http_date(clock.now) == b"Mon, 07 Feb 2022 00:28:05 GMT"
    for late_or_early in (b"Mon, 07 Feb 2022 00:29:06 GMT", b"Mon, 07 Feb 2022 00:27:04 GMT"):
        with pytest.raises(SealError):
            guard.check_date(late_or_early)


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b"Monday, 07-Feb-22 00:28:05 GMT",  # obsolete RFC 850 form
        b"Mon Feb  7 00:28:05 2022",  # asctime form
        b"Mon, 07 Feb 2022 00:28:05 UTC",
        b"Tue, 07 Feb 2022 00:28:05 GMT",  # wrong weekday
        b"Mon, 31 Feb 2022 00:28:05 GMT",
        b"Mon, 07 Feb 2022 24:28:05 GMT",
        b"Mon, 07 Feb 2022 00:28:05 GMT ",
        b"Mon, 07 Feb 2022 00:28:05 GMT" * 3,
        "Mon, 07 Feb 2022 00:28:05 GMT\u00e9",
    ],
)
def test_reject_malformed_date(value: bytes | str) -> None:
    guard = ReplayGuard(60, clock=Clock())
    with pytest.raises(SealError):
        guard.check_date(value)


def test_reject_bad_parameters() -> None:
    with pytest.raises(ValueError):
        ReplayGuard(0)
    with pytest.raises(ValueError):
        ReplayGuard(10, max_entries=0)


def test_reject_replay_of_a_request_dated_ahead() -> None:
    """Finding 15: a request dated a window ahead is acceptable until date + window;
    its enc must be remembered that long (the old guard forgot it at now + window)."""
    clock = Clock()
    guard = ReplayGuard(30, clock=clock)
    ahead = http_date(clock.now + 30)
    guard.check_date(ahead)
    guard.check(b"e" * 32)
    clock.now += 31  # the first entry would have expired here
    guard.check_date(ahead)  # the date alone still passes
    with pytest.raises(SealError):
        guard.check(b"e" * 32)
