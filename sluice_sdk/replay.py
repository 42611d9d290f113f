"""Replay protection for sealed requests (RFC 9458 Section 6.5).

A relay (here: the appliance) can resend a sealed request it has seen.  The
gateway refuses replays in two steps, after a request has been opened and
authenticated:

1. :meth:`ReplayGuard.check_date`: the sealed inner request carries a ``date``
   header (the SDK adds one; :func:`http_date` formats it), and the gate checks
   that it is within ``window_seconds`` of its own clock, either way (RFC 9458
   Section 6.5.1).  A request outside the window is refused outright.
2. :meth:`ReplayGuard.check`: the request's ``enc`` (its encapsulated HPKE key,
   fresh and high-entropy for every request) is remembered; the same ``enc``
   again is a replay.  A request is accepted until its date plus the window,
   and its date may lie up to the window ahead of the clock, so an ``enc`` is
   remembered for twice the window (:func:`retention`): forgetting it earlier
   would let a request dated ahead be replayed once the entry expired.  After
   that, forgetting it is safe because step 1 then refuses the request.

The gate must run the checks only *after* decapsulation succeeded, so that
unauthenticated garbage cannot fill the memory, and in this order.  Memory is
bounded by ``max_entries``; when it is full of live entries the guard refuses
new requests (fails closed) rather than forget one that could then be replayed.
Both checks raise the message-less :class:`~sluice_sdk.errors.SealError`.
"""

from __future__ import annotations

import calendar
import email.utils
import hashlib
import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from .errors import SealError

__all__ = ["ReplayGuard", "http_date", "retention", "DEFAULT_MAX_ENTRIES"]

_log = logging.getLogger(__name__)

# One entry is a 32-byte digest plus dict overhead (about 150 bytes): a
# million live requests in one window cost about 150 MB, far more than a
# gate handles, and a bound an attacker cannot exceed.
DEFAULT_MAX_ENTRIES = 1_000_000

# RFC 9110 Section 5.6.7 IMF-fixdate, the only form a sender may generate.
_IMF_FIXDATE = re.compile(
    rb"(Mon|Tue|Wed|Thu|Fri|Sat|Sun), ([0-9]{2}) (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) "
    rb"([0-9]{4}) ([0-9]{2}):([0-9]{2}):([0-9]{2}) GMT"
)
_MONTHS = (b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec")
_DAYS = (b"Mon", b"Tue", b"Wed", b"Thu", b"Fri", b"Sat", b"Sun")


def retention(window_seconds: float) -> float:
    """How long an ``enc`` must be remembered: a request dated up to the window
    ahead stays acceptable until its date plus the window."""
    return 2.0 * window_seconds


def http_date(now: float | None = None) -> bytes:
    """``now`` (default: the current time) as an IMF-fixdate, for the sealed request's ``date``."""
    return email.utils.formatdate(time.time() if now is None else now, usegmt=True).encode("ascii")


def _parse_imf_fixdate(value: bytes) -> float:
    match = _IMF_FIXDATE.fullmatch(value)
    if match is None:
        raise SealError from None
    day_name, day, month, year, hour, minute, second = match.groups()
    try:
        moment = (int(year), _MONTHS.index(month) + 1, int(day), int(hour), int(minute), int(second))
        timestamp = calendar.timegm((*moment, 0, 0, 0))
        if time.gmtime(timestamp)[:6] != moment or _DAYS[time.gmtime(timestamp).tm_wday] != day_name:
            raise SealError from None  # 31 Feb, 25:00, or a weekday that does not match
    except (ValueError, OverflowError):
        raise SealError from None
    return float(timestamp)


class ReplayGuard:
    """Remembers the ``enc`` of each accepted request for :func:`retention` of ``window_seconds``.

    ``clock`` returns wall-clock seconds (``time.time`` by default) and is
    injectable for tests.  Thread-safe.
    """

    __slots__ = ("_window", "_max", "_clock", "_seen", "_lock")

    def __init__(
        self,
        window_seconds: float,
        *,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not window_seconds > 0 or max_entries < 1:
            raise ValueError("window_seconds must be positive and max_entries at least 1")
        self._window = float(window_seconds)
        self._max = max_entries
        self._clock = clock
        # digest -> expiry; insertion order is expiry order while the clock only moves forward.
        self._seen: OrderedDict[bytes, float] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def window_seconds(self) -> float:
        return self._window

    def __len__(self) -> int:
        return len(self._seen)

    def _expire(self, now: float) -> None:
        while self._seen:
            digest, expiry = next(iter(self._seen.items()))
            if expiry > now:
                break
            del self._seen[digest]

    def check(self, enc: bytes) -> None:
        """Remember ``enc``; :class:`SealError` if it was seen within the window, or if full."""
        digest = hashlib.sha256(enc).digest()
        with self._lock:
            now = self._clock()
            self._expire(now)
            expiry = self._seen.get(digest)
            if expiry is not None and expiry > now:
                raise SealError from None
            if len(self._seen) >= self._max:
                _log.warning("replay guard full (%d live entries): refusing sealed requests", self._max)
                raise SealError from None
            self._seen[digest] = now + retention(self._window)
            self._seen.move_to_end(digest)

    def check_date(self, date: bytes | str) -> None:
        """:class:`SealError` unless ``date`` (IMF-fixdate) is within the window of ``clock``."""
        value = date.encode("latin-1", "replace") if isinstance(date, str) else bytes(date)
        if len(value) > 64:
            raise SealError from None
        if abs(_parse_imf_fixdate(value) - self._clock()) > self._window:
            raise SealError from None
