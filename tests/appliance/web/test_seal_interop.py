"""Sealed requests from real Chromium through the real demo: the gate opens what the browser sealed, and back.

`sluice demo` runs the appliance, the gate (over pipes, mux mode) and the
stand-in models; the test page and the sealing modules are served under the
demo's own origin by ``page.route()``, so the page's ``fetch('/v1/sealed/...')``
reaches the real appliance, which relays ciphertext to the real gate.  The page
authenticates with the demo's API key, added by the ``fetchImpl`` it passes to
the sealing module (as the chat page adds its sign-in).

Shown here: whole and streamed round trips (a streamed answer arrives piece by
piece), answers the gate seals (also its sealed content errors) opened in the
browser, tampered request bytes refused by the gate before any model sees them,
tampered or truncated answers failing in the browser with one message-less
SealError, a replay refused, Stop (abort) ending the stream, and a canary prompt
sealed in the browser that is nowhere the appliance or the gate wrote, nor in
the appliance's memory.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page

from sluice_sdk import fetch_fingerprint
from sluice_sdk.transport import fetch_key_configs
from tests.conftest import free_port
from tests.integration.test_canary import hits, new_canary, temporary_roots
from tests.services.memory import process_memory
from tests.services.standin import served

from .seal_browser import chromium, run, seal_page

pytestmark = pytest.mark.integration

KEY = "sk-browser-seal-" + "b" * 24
STARTED = time.time()
CHAT = {"model": "standin-chat", "messages": [{"role": "user", "content": "a sealed hello"}], "max_tokens": 6}
# The page's fetchImpl: the demo's API key on every call, as the chat page adds its sign-in.
FETCH = "const api = (url, init = {}) => fetch(url, {...init, headers: {...(init.headers || {}), Authorization: 'Bearer ' + arg.key}});"
# A sealed call of the page: `sealed(path, document, fetchImpl)` -> the opened Response.
SEALED = (
    FETCH
    + """
const keys = await seal.loadKeyConfig(api);
const sealed = (path, document, fetchImpl = api, signal = undefined) => seal.sealedFetch(
    path, {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(document), signal},
    keys, fetchImpl);
const failure = (error) => error.name + ":" + error.message;
"""
)


def get(url: str, token: str) -> bytes:
    """GET a loopback URL with a bearer token (the demo's metrics)."""
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - http://127.0.0.1 only
        body: bytes = response.read()
    return body


@dataclass
class Demo:
    origin: str
    process: subprocess.Popen[bytes]
    work: Path
    stdout: Path

    def metrics(self) -> str:
        token = next(
            line.split("Bearer ")[1].split("'")[0] for line in self.stdout.read_text().splitlines() if "metrics:" in line
        )
        return get(f"{self.origin}/metrics", token).decode()

    def served_by_models(self) -> int:
        """Requests the stand-in chat models answered, from their own counters (instances in the routing table)."""
        return served(next((self.work / "tmp").glob("sluice-demo-*/routing.json")), "standin-chat")


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    work = tmp_path_factory.mktemp("browser-demo")
    (work / "tmp").mkdir()
    port = free_port()
    env = {**os.environ, "TMPDIR": str(work / "tmp"), "PYTHONDONTWRITEBYTECODE": "1"}
    stdout, stderr = work / "demo.stdout", work / "demo.stderr"
    root = Path(__file__).resolve().parents[3]
    with stdout.open("wb") as out, stderr.open("wb") as err:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "appliance.cli",
                "demo",
                "--port",
                str(port),
                "--api-key",
                KEY,
                "--mode",
                "mux",
                "--token-delay",
                "0.03",
                "--log-level",
                "debug",
            ],
            cwd=work,
            env={**env, "PYTHONPATH": str(root)},
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
        )
    try:
        deadline = time.monotonic() + 90
        while "Sluice demo ready" not in stdout.read_text():
            assert process.poll() is None and time.monotonic() < deadline, stderr.read_text()[-3000:]
            time.sleep(0.1)
        yield Demo(f"http://127.0.0.1:{port}", process, work, stdout)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as running:
        yield running


@pytest.fixture(scope="module")
def page(browser: Browser, demo: Demo) -> Iterator[Page]:
    with seal_page(browser, demo.origin) as opened:
        yield opened


def sealed_call(page: Page, body: str, **arg: Any) -> Any:
    return run(page, SEALED + body, {"key": KEY, **arg})


def test_key_config_and_fingerprint_as_the_sdk_sees_them(page: Page, demo: Demo) -> None:
    got = run(
        page, FETCH + "const keys = await seal.loadKeyConfig(api); return [keys.fingerprint, hex(keys.config)];", {"key": KEY}
    )
    served = next(c for c in fetch_key_configs(f"{demo.origin}/v1") if c.usable)
    assert got == [fetch_fingerprint(f"{demo.origin}/v1"), served.encode().hex()]


def test_round_trip_plain(page: Page) -> None:
    got = sealed_call(
        page,
        """
        const sent = [];
        const recording = (url, init) => { sent.push([url, init.headers, new TextDecoder("latin1").decode(init.body)]); return api(url, init); };
        const response = await sealed("/v1/chat/completions", arg.chat, recording);
        return {status: response.status, type: response.headers.get("content-type"), answer: await response.json(),
                url: sent[0][0], headers: sent[0][1], clear: sent[0][2].includes("sealed hello")};
    """,
        chat=CHAT,
    )
    assert (got["status"], got["type"]) == (200, "application/json")
    assert got["answer"]["usage"]["completion_tokens"] == 6 and got["answer"]["choices"][0]["message"]["content"]
    assert got["url"] == "/v1/sealed/chat/completions" and got["clear"] is False
    assert got["headers"] == {"Sluice-Model": "standin-chat", "Content-Type": "message/ohttp-req"}


def test_round_trip_streamed_arrives_piece_by_piece(page: Page) -> None:
    got = sealed_call(
        page,
        """
        const response = await sealed("/v1/chat/completions", {...arg.chat, stream: true, max_tokens: 12});
        const reader = response.body.getReader();
        const decoder = new TextDecoder();
        const reads = [];
        let text = "";
        for (;;) {
            const {done, value} = await reader.read();
            if (done) break;
            reads.push(performance.now());
            text += decoder.decode(value, {stream: true});
        }
        return {status: response.status, type: response.headers.get("content-type"), text, reads};
    """,
        chat=CHAT,
    )
    assert (got["status"], got["type"]) == (200, "text/event-stream")
    events = [json.loads(e[6:]) for e in got["text"].split("\n\n") if e.startswith("data: {")]
    assert len([e for e in events if e["choices"][0]["delta"].get("content")]) == 12
    assert got["text"].endswith("data: [DONE]\n\n")
    # The stand-in writes a token every 30 ms: the pieces came as they were sealed, not all at the end.
    reads = got["reads"]
    assert len(reads) >= 6 and reads[-1] - reads[0] > 150, reads


def test_gate_sealed_answers_open_in_the_browser(page: Page) -> None:
    got = sealed_call(
        page,
        """
        const embeddings = await sealed("/v1/embeddings", {model: "standin-embed", input: ["x", "y"]});
        const refused = await sealed("/v1/chat/completions", {...arg.chat, not_a_field: 1});
        const refusedStream = await sealed("/v1/chat/completions", {...arg.chat, stream: true, not_a_field: 1});
        return [embeddings.status, (await embeddings.json()).data.length,
                refused.status, (await refused.json()).error.code,
                refusedStream.status, (await refusedStream.json()).error.code];
    """,
        chat=CHAT,
    )
    # Errors about the sealed content come back sealed: only the browser sees the 422.
    assert got == [200, 2, 422, "unknown_field", 422, "unknown_field"]


def test_reject_tampered_request_bytes_before_any_model(page: Page, demo: Demo) -> None:
    before = demo.served_by_models()
    got = sealed_call(
        page,
        """
        const outcomes = new Set();
        for (const stream of [false, true]) {
            for (let i = 0; i < 12; i += 1) {
                const flipping = (url, init) => {
                    const body = Uint8Array.from(init.body);
                    body[Math.min(body.length - 1, Math.floor(i * body.length / 11))] ^= 0x01;  // first byte to last
                    return api(url, {...init, body});
                };
                const response = await sealed("/v1/chat/completions", {...arg.chat, stream}, flipping);
                outcomes.add(response.status + ":" + (await response.json()).error.code);
            }
        }
        return [...outcomes];
    """,
        chat=CHAT,
    )
    assert got == ["400:sealed_invalid"]
    assert demo.served_by_models() == before, "a tampered request reached a model"


def test_reject_tampered_or_truncated_answers(page: Page) -> None:
    """Flip a byte anywhere in a sealed answer, or cut it short: one message-less SealError, whole or streamed."""
    got = sealed_call(
        page,
        """
        const outcomes = new Set();
        const altered = (change) => async (url, init) => {
            const real = await api(url, init);
            const body = change(new Uint8Array(await real.arrayBuffer()));
            // Re-chunked in 7-byte pieces, so that streamed answers are opened piece by piece.
            const stream = new ReadableStream({start(c) { for (let i = 0; i < body.length; i += 7) c.enqueue(body.slice(i, i + 7)); c.close(); }});
            return new Response(stream, {status: real.status, headers: real.headers});
        };
        for (const stream of [false, true]) {
            for (let step = 0; step < 10; step += 1) {
                const flip = (b) => { const at = Math.floor(step * (b.length - 1) / 9); b[at] ^= 0x80; return b; };
                const cut = (b) => b.slice(0, Math.floor(step * b.length / 10));
                for (const change of [flip, cut]) {
                    try {
                        const response = await sealed("/v1/chat/completions", {...arg.chat, stream}, altered(change));
                        // Through a reader: Response.text() would report any stream error as a TypeError.
                        const reader = response.body.getReader();
                        while (!(await reader.read()).done);
                        outcomes.add("accepted");
                    } catch (error) { outcomes.add(failure(error)); }
                }
            }
        }
        return [...outcomes];
    """,
        chat=CHAT,
    )
    assert got == ["SealError:"]


def test_reject_replayed_request(page: Page, demo: Demo) -> None:
    before = demo.served_by_models()
    got = sealed_call(
        page,
        """
        const statuses = [];
        const twice = async (url, init) => {
            const first = await api(url, init);
            statuses.push(first.status);
            await first.arrayBuffer();
            return api(url, init);
        };
        const response = await sealed("/v1/chat/completions", arg.chat, twice);
        return [statuses[0], response.status, (await response.json()).error.code];
    """,
        chat=CHAT,
    )
    assert got == [200, 400, "sealed_invalid"]
    assert demo.served_by_models() == before + 1


def test_stop_aborts_the_stream(page: Page) -> None:
    got = sealed_call(
        page,
        """
        const stop = new AbortController();
        const response = await sealed("/v1/chat/completions", {...arg.chat, stream: true, max_tokens: 400}, api, stop.signal);
        const reader = response.body.getReader();
        await reader.read();
        stop.abort();
        try { for (;;) { if ((await reader.read()).done) return "ended"; } }
        catch (error) { return error.name; }
    """,
        chat=CHAT,
    )
    assert got == "AbortError"


def test_reject_unsealable_requests(page: Page) -> None:
    got = sealed_call(
        page,
        """
        const outcomes = [];
        for (const [path, body] of [["/v1/models", "{}"], ["/v1/chat/completions", "not json"],
                                    ["/v1/chat/completions", JSON.stringify({model: "two words"})]]) {
            try { await seal.sealedFetch(path, {method: "POST", body}, keys, api); outcomes.push("sent"); }
            catch (error) { outcomes.push(error.name); }
        }
        const forged = {config: keys.config, fingerprint: "0".repeat(64)};
        try { await seal.sealedFetch("/v1/chat/completions", {method: "POST", body: JSON.stringify(arg.chat)}, forged, api); }
        catch (error) { outcomes.push(error.name); }
        return outcomes;
    """,
        chat=CHAT,
    )
    assert got == ["UnsealableRequestError"] * 3 + ["KeyConfigError"]


def test_canary_sealed_in_the_browser_is_nowhere_the_appliance_or_gate_wrote(page: Page, demo: Demo) -> None:
    canary = new_canary()
    document = {**CHAT, "user": canary, "messages": [{"role": "user", "content": f"sealed {canary} please"}]}
    got = sealed_call(
        page,
        """
        const plain = await sealed("/v1/chat/completions", arg.document);
        const streamed = await sealed("/v1/chat/completions", {...arg.document, stream: true});
        return [plain.status, (await plain.json()).usage.completion_tokens, streamed.status, (await streamed.text()).length > 0];
    """,
        document=document,
    )
    assert got == [200, 6, 200, True]
    assert canary not in demo.metrics()
    # Every file the demo (appliance, gate, scheduler, models) wrote: logs, the accounting
    # database with its -wal, the gate's keys, replay store and routing table.
    databases = list((demo.work / "tmp").glob("sluice-demo-*/usage.db*"))
    assert {p.name for p in databases} >= {"usage.db", "usage.db-wal"}
    found, searched = hits(canary, [demo.work])
    assert searched >= 8 and found == [], found
    assert '"sealed":true' in (demo.work / "demo.stderr").read_text()  # the log was there to search
    # Anything else written under /tmp, /var/tmp and /dev/shm since this module began,
    # except the browser's own profile (the client holds its own prompt).
    found, _ = hits(canary, temporary_roots(), since=STARTED)
    assert [f for f in found if "playwright" not in f] == [], found
    # The appliance's memory (the demo process serves the API; the gate is a child process).
    needles = [canary.encode(), canary.encode("utf-16-le")]
    assert sum(region.count(n) for region in process_memory(demo.process.pid) for n in needles) == 0
