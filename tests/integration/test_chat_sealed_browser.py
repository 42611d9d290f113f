"""The web chat's sealed mode in real headless Chromium: the real seal.js against the demo's gate.

The page seals each prompt to the gate's key (chunked OHTTP for the chat's
streamed answers; whole OHTTP for a request without ``stream``) and opens the
answer itself.  The test watches every request the browser sends and proves
that the appliance saw only ciphertext: the sealed media types on the wire, a
canary in the prompt absent from every request the browser sent, from the
demo's logs (appliance, gate, scheduler and models at debug level, kept in
files), from its accounting database and from every file under its
directories -- while the answer renders in the page and the request is still
accounted, with its tokens.  A key the appliance swaps in is refused by the page
until the user accepts it, and a request sealed to it is refused by the gate,
in the clear and without the prompt.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import pytest

from cluster import sealed_keys
from sluice_sdk.keyconfig import encode_key_configs
from sluice_sdk.keys import generate_key
from tests.conftest import free_port, stop
from tests.integration.browser import screenshot, watch
from tests.integration.test_canary import hits
from tests.integration.test_chat_browser import (  # noqa: F401 (browser and context are fixtures)
    READY,
    answer_words,
    browser,
    context,
    open_chat,
    send,
    set_max_tokens,
    wait_answered,
    wait_for,
    wait_js,
)
from tests.integration.test_demo import KEY

pytestmark = pytest.mark.integration

# Tokens this far apart make a streamed answer observably arrive piece by piece.
TOKEN_DELAY = 0.05
# What the page puts on the wire for a sealed request (seal.js, RFC 9458 and chunked OHTTP).
SEALED_TYPES = {"message/ohttp-req", "message/ohttp-chunked-req"}
SEALED_ANSWER_TYPES = {"message/ohttp-res", "message/ohttp-chunked-res"}
# Words the stand-in echoes after the canary: enough tokens to see the answer stream.
FILLER = " ".join(["river"] * 24)


@dataclass
class SealedDemo:
    """``sluice demo`` with its stdout and stderr in files and its runtime directory in ``work/tmp``."""

    url: str
    work: Path
    runtime: Path
    metrics_token: str

    def usage(self) -> list[tuple[str, str, int, int, int, int]]:
        """(user, model, status, prompt_tokens, completion_tokens, sealed) of every accounted request."""
        with contextlib.closing(sqlite3.connect(self.runtime / "usage.db")) as db:
            return list(
                db.execute("SELECT user_id, model, status, prompt_tokens, completion_tokens, sealed FROM usage ORDER BY id")
            )

    def gate_fingerprint(self) -> str:
        """The current key's fingerprint as the gate's side says it (``sluice-cluster keys list``)."""
        rows = sealed_keys.describe(self.runtime / "cluster.toml")
        return str(next(row["fingerprint"] for row in rows if row["state"] == "current"))


@dataclass
class Wire:
    """What the browser sent to the API and what came back, as playwright saw it."""

    sent: list[tuple[str, str, str, bytes]] = field(default_factory=list)  # method, url, content-type, body
    answers: list[tuple[str, int, str, str]] = field(default_factory=list)  # url, status, content-type, request id

    def posts(self) -> list[tuple[str, str, str, bytes]]:
        return [s for s in self.sent if s[0] == "POST"]


def record(page: Any) -> Wire:
    wire = Wire()

    def on_request(request: Any) -> None:
        if "/v1/" in request.url:
            wire.sent.append(
                (request.method, request.url, request.headers.get("content-type", ""), request.post_data_buffer or b"")
            )

    def on_response(response: Any) -> None:
        if "/v1/sealed/" in response.url and response.request.method == "POST":
            headers = response.headers
            wire.answers.append((response.url, response.status, headers.get("content-type", ""), headers.get("x-request-id", "")))

    page.on("request", on_request)
    page.on("response", on_response)
    return wire


@pytest.fixture(scope="module")
def sealed_demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SealedDemo]:
    work = tmp_path_factory.mktemp("sealed-demo")
    (work / "tmp").mkdir()
    stdout, stderr = work / "demo.stdout", work / "demo.stderr"
    env = {**os.environ, "TMPDIR": str(work / "tmp"), "PYTHONDONTWRITEBYTECODE": "1"}
    with stdout.open("wb") as out, stderr.open("wb") as err:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "appliance.cli",
                "demo",
                "--port",
                str(free_port()),
                "--api-key",
                KEY,
                "--mode",
                "mux",
                "--token-delay",
                str(TOKEN_DELAY),
                "--log-level",
                "debug",
            ],
            cwd=work,
            env=env,
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
        )
    try:

        def printed() -> list[str] | None:
            if process.poll() is not None:
                raise RuntimeError("the demo stopped: " + stderr.read_text()[-3000:])
            text = stdout.read_text()
            return text.splitlines() if "Press Ctrl-C" in text else None

        lines = wait_for(printed, 90, "the demo to be ready")
        url = next(line.split()[-1] for line in lines if line.startswith("Sluice demo ready at "))
        database = next(line.split("--database", 1)[1].strip() for line in lines if "usage:" in line)
        token = next(line.split("Bearer ", 1)[1].split("'")[0] for line in lines if "metrics:" in line)
        yield SealedDemo(url, work, Path(database).parent, token)
    finally:
        stop(process)


def turn_sealing_on(page: Any) -> str:
    """Tick Sealed in the settings; the fingerprint the page pinned and shows."""
    page.click("#settings-toggle")
    assert page.is_enabled("#sealed")
    page.check("#sealed")
    wait_js(page, "document.getElementById('privacy').classList.contains('sealed')")
    page.click("#settings-toggle")
    return page.inner_text("#privacy code")  # type: ignore[no-any-return]


# The chat's own sealed sender (sealing.js around seal.js), for a request without "stream": the
# page always streams its answers, so a whole (non-chunked) sealed answer is asked for this way.
SEND_WHOLE = """async ([model, text]) => {
  const [sealing, api] = await Promise.all([import('/chat/sealing.js'), import('/chat/api.js')]);
  const {key} = await sealing.loadPinnedKey(api.authFetch);
  const send = sealing.sealedSender(key, api.authFetch);
  const response = await send('/v1/chat/completions', {method: 'POST', body: JSON.stringify(
      {model, max_tokens: 64, messages: [{role: 'user', content: text}]})});
  return {status: response.status, type: response.headers.get('content-type'), body: await response.json()};
}"""


def test_sealed_chat_streams_and_the_gateway_sees_only_ciphertext(context: Any, sealed_demo: SealedDemo) -> None:
    canary = "canary-" + uuid.uuid4().hex
    page = open_chat(context, sealed_demo)  # type: ignore[arg-type]
    seen = watch(page, sealed_demo.url)
    wire = record(page)
    accounted = len(sealed_demo.usage())
    # The page pins, and shows, the key the gate holds (what an operator publishes).
    assert turn_sealing_on(page) == sealed_demo.gate_fingerprint()
    assert "gateway sees only ciphertext" in page.inner_text("#privacy")
    set_max_tokens(page, 64)

    # Streamed (the chat's way): the answer renders piece by piece as each sealed chunk opens.
    send(page, f"/echo {canary} {FILLER}")
    wait_for(lambda: 3 <= answer_words(page) < 25 and page.is_visible("#stop"), what="a partly rendered answer")
    wait_answered(page)
    assert page.locator(".message.assistant .bubble").last.inner_text() == f"{canary} {FILLER}"
    assert page.locator(".message.assistant .status").count() == 0 and page.inner_text("#notice") == ""

    # Whole: the same sender without "stream", a message/ohttp-req and its one sealed answer.
    whole = page.evaluate(SEND_WHOLE, ["standin-chat", f"/echo whole {canary}"])
    assert whole["status"] == 200 and whole["type"].startswith("application/json")
    assert whole["body"]["choices"][0]["message"]["content"] == f"whole {canary}"
    assert whole["body"]["usage"]["completion_tokens"] == 2

    # On the wire: only sealed requests to the sealed routes, none with the canary in it.
    posts = wire.posts()
    assert [(url.removeprefix(sealed_demo.url), kind) for _, url, kind, _ in posts] == [
        ("/v1/sealed/chat/completions", "message/ohttp-chunked-req"),
        ("/v1/sealed/chat/completions", "message/ohttp-req"),
    ]
    assert all(len(body) >= 1024 for *_, body in posts)  # padded to the 1 KiB bucket
    assert [(status, kind) for _, status, kind, _ in wire.answers] == [
        (200, "message/ohttp-chunked-res"),
        (200, "message/ohttp-res"),
    ]
    for method, url, kind, body in wire.sent:
        assert canary.encode() not in body and canary not in url, (method, url)
        assert method == "GET" or kind in SEALED_TYPES, (method, url, kind)

    # Accounted (sealed, with the gate's token counts) ...
    rows = wait_for(
        lambda: sealed_demo.usage()[accounted:] if len(sealed_demo.usage()) >= accounted + 2 else None, 10, "both usage rows"
    )
    assert rows == [("demo#demo", "standin-chat", 200, 26, 25, 1), ("demo#demo", "standin-chat", 200, 3, 2, 1)]
    # ... and the canary nowhere the appliance or the gate writes: logs, database, runtime files.
    metrics = httpx2.get(f"{sealed_demo.url}/metrics", headers={"Authorization": f"Bearer {sealed_demo.metrics_token}"})
    assert metrics.status_code == 200 and canary not in metrics.text
    found, searched = hits(canary, [sealed_demo.work])
    assert searched >= 8 and found == [], found
    # The search sees what was written: each request's id is in the log and in the database.
    for _, _, _, request_id in wire.answers:
        written = {Path(p).name for p in hits(request_id, [sealed_demo.work])[0]}
        assert "demo.stderr" in written and any(n.startswith("usage.db") for n in written), (request_id, written)

    # The fingerprint reads whole, on one line, at desktop width (it was once cut in two).
    assert page.evaluate("document.querySelector('#privacy code').getClientRects().length") == 1
    screenshot(page, "chat-sealed-conversation-desktop.png")
    page.set_viewport_size({"width": 390, "height": 844})  # on a phone it breaks, and nothing overflows
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    screenshot(page, "chat-sealed-conversation-phone.png")
    assert not seen.dialogs and not seen.foreign_requests and not seen.page_errors
    assert seen.csp_violations(page) == []


def test_reject_a_swapped_key_until_accepted_and_the_gate_refuses_what_was_sealed_to_it(
    context: Any, sealed_demo: SealedDemo
) -> None:
    canary = "canary-" + uuid.uuid4().hex
    page = open_chat(context, sealed_demo)  # type: ignore[arg-type]
    seen = watch(page, sealed_demo.url)
    pinned = turn_sealing_on(page)
    # The appliance now serves a key of its own (the gate does not hold it).
    impostor = generate_key(1).config
    context.route(
        sealed_demo.url + "/v1/sealed/keys",
        lambda route: route.fulfill(status=200, content_type="application/ohttp-keys", body=encode_key_configs([impostor])),
    )
    page.reload()
    page.wait_for_selector(READY, state="attached")
    assert "key changed" in page.inner_text("#notice") and not page.is_checked("#sealed")
    page.click("#settings-toggle")
    assert page.inner_text("#key-pinned") == pinned
    assert page.inner_text("#key-offered") == impostor.fingerprint()  # the page's fingerprint is the SDK's
    page.locator("#key-changed").scroll_into_view_if_needed()
    screenshot(page, "chat-sealed-key-changed.png")
    wire = record(page)
    accounted = len(sealed_demo.usage())

    # Accepted by the user: sealed to that key, which the gate cannot open; refused in the clear.
    page.click("#accept-key")
    wait_js(page, "document.getElementById('privacy').classList.contains('sealed')")
    page.click("#settings-toggle")
    set_max_tokens(page, 8)
    send(page, f"/echo {canary}")
    wait_answered(page)
    assert page.inner_text("#notice") == ("The request failed (400, sealed_invalid): The sealed request could not be opened.")
    assert page.locator(".message.assistant").count() == 0
    posts = wire.posts()
    assert [(url.removeprefix(sealed_demo.url), kind) for _, url, kind, _ in posts] == [
        ("/v1/sealed/chat/completions", "message/ohttp-chunked-req")
    ]
    assert canary.encode() not in posts[0][3]
    rows = wait_for(lambda: sealed_demo.usage()[accounted:], 10, "the refusal's usage row")
    assert [(status, completion, sealed) for _, _, status, _, completion, sealed in rows] == [(400, 0, 1)]
    found, _ = hits(canary, [sealed_demo.work])
    assert found == [], found
    assert not seen.page_errors and not seen.foreign_requests
