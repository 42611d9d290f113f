"""Benchmark: the gate's SSE usage filter is linear in the bytes it sees, whatever the framing.

Prints MB/s for a normal token stream (LF, CRLF, CR framing; whole reads and
small pieces) and for a stream without event boundaries fed in small pieces up
to the event bound (the case that was quadratic: each piece re-copied and
re-scanned everything buffered).  Linear means the last column stays flat as
the size doubles.

    .venv/bin/python bench/sse_filter.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cluster.gate.usage import MAX_EVENT_BYTES, SseUsageFilter  # noqa: E402
from policy.errors import BackendFailed  # noqa: E402

EVENT = (
    b'data: {"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":" word"}}],'
    b'"usage":{"prompt_tokens":12,"completion_tokens":%d}}'
)


def _run(data: bytes, piece: int) -> float:
    usage_filter = SseUsageFilter(False)
    started = time.perf_counter()
    try:
        for start in range(0, len(data), piece):
            usage_filter.feed(data[start : start + piece])
        usage_filter.flush()
    except BackendFailed:
        pass
    return time.perf_counter() - started


def main() -> None:
    print(f"{'stream':<28}{'piece':>8}{'MiB':>8}{'s':>9}{'MiB/s':>9}")
    for eol in (b"\n", b"\r\n", b"\r"):
        data = b"".join(EVENT % i + eol + eol for i in range(20_000))
        for piece in (65536, 64):
            seconds = _run(data, piece)
            name = {b"\n": "tokens, LF", b"\r\n": "tokens, CRLF", b"\r": "tokens, CR"}[eol]
            print(f"{name:<28}{piece:>8}{len(data) / 2**20:>8.1f}{seconds:>9.3f}{len(data) / 2**20 / seconds:>9.1f}")
    for size in (MAX_EVENT_BYTES // 4, MAX_EVENT_BYTES // 2, MAX_EVENT_BYTES):
        data = b"data: " + b"x" * size
        seconds = _run(data, 64)
        print(
            f"{'unframed, to ' + str(size // 1024) + ' KiB':<28}{64:>8}{len(data) / 2**20:>8.2f}{seconds:>9.3f}"
            f"{len(data) / 2**20 / seconds:>9.1f}"
        )


if __name__ == "__main__":
    main()
