"""Sealed requests are metered and accounted like the others, from the gate's usage metadata.

The appliance cannot read a sealed request, so admission reserves the
policy's ``reserve_tokens`` (1024 in the demo); when the answer is over, the
usage the gate reports (outside the encryption) replaces the reservation,
and the request's accounting row says it was sealed.  The demo (gate keys,
in-memory quotas, SQLite accounting) is the appliance here; the quota state
is read back through the ``x-ratelimit-remaining-tokens`` of plain requests
around the sealed ones.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from tests.conftest import free_port

pytestmark = pytest.mark.integration

KEY = "sk-sealed-quota-" + "s" * 20
TOKENS_PER_MINUTE = 100_000_000  # the demo's policy (appliance/quotas/policy.py: DEMO_POLICY)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    work = tmp_path_factory.mktemp("sealed-demo")
    (work / "tmp").mkdir()
    port = free_port()
    stdout = work / "demo.stdout"
    with stdout.open("wb") as out, (work / "demo.stderr").open("wb") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "appliance.cli", "demo", "--port", str(port), "--api-key", KEY, "--token-delay", "0.001"],
            cwd=work,
            env={**os.environ, "TMPDIR": str(work / "tmp")},
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
        )
    try:
        deadline = time.monotonic() + 90
        while "Sluice demo ready" not in stdout.read_text():
            assert process.poll() is None and time.monotonic() < deadline, (work / "demo.stderr").read_text()[-2000:]
            time.sleep(0.1)
        database = next(line.split()[-1] for line in stdout.read_text().splitlines() if "sluice usage" in line)
        yield f"http://127.0.0.1:{port}", Path(database)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)


def _plain(url: str, max_tokens: int) -> tuple[int, int]:
    """A plain chat request: (tokens it used, tokens per minute left at its admission)."""
    answer = httpx2.post(
        f"{url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=30,
        json={"model": "standin-chat", "messages": [{"role": "user", "content": "count"}], "max_tokens": max_tokens},
    )
    assert answer.status_code == 200
    return answer.json()["usage"]["total_tokens"], int(answer.headers["x-ratelimit-remaining-tokens"])


def test_sealed_requests_reserve_then_reconcile_and_are_accounted(demo: tuple[str, Path]) -> None:
    from sluice_sdk import fetch_fingerprint, sealed_openai_client

    url, database = demo
    first, remaining = _plain(url, 5)
    used_before = TOKENS_PER_MINUTE - remaining - 5  # whatever the demo counted before this test
    with sealed_openai_client(f"{url}/v1", KEY, fetch_fingerprint(f"{url}/v1")) as client:
        plain = client.chat.completions.create(
            model="standin-chat", max_tokens=12, messages=[{"role": "user", "content": "a sealed question"}]
        )
        chunks = list(
            client.chat.completions.create(
                model="standin-chat",
                max_tokens=7,
                stream=True,
                stream_options={"include_usage": True},
                messages=[{"role": "user", "content": "a sealed stream"}],
            )
        )
    assert plain.usage is not None and plain.usage.completion_tokens == 12
    streamed_usage = next(c.usage for c in chunks if c.usage is not None)
    sealed_total = plain.usage.total_tokens + streamed_usage.total_tokens
    _, remaining = _plain(url, 5)
    # Each sealed request reserved 1024 tokens; what is counted now is what they used.
    assert TOKENS_PER_MINUTE - remaining - 5 == used_before + first + sealed_total
    with sqlite3.connect(database) as db:
        rows = db.execute(
            "SELECT sealed, prompt_tokens + completion_tokens, first_token_ms IS NOT NULL FROM usage ORDER BY id DESC LIMIT 4"
        ).fetchall()
    assert rows[1:3] == [(1, streamed_usage.total_tokens, 1), (1, plain.usage.total_tokens, 0)]
    assert rows[0][0] == 0 and rows[3][0] == 0
