"""The web chat in real headless Chromium, against the real demo (appliance, gate, stand-in models).

One demo (tokens 50 ms apart, so streams are observable) and one browser for
the module; each test has a fresh browser context (cookies, IndexedDB).
Screenshots go to ``test-artifacts/`` (not committed).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port
from tests.integration.browser import ARTIFACTS, launch_browser, screenshot, watch
from tests.integration.test_demo import KEY, Demo, start_demo, stop_demo
from tests.integration.test_identity import Running, running  # noqa: F401 (a fixture)
from tests.services.standin import instance_stats

pytestmark = pytest.mark.integration

TOKEN_DELAY = 0.05
READY = "body[data-ready=true]"


@dataclass
class ChatDemo:
    demo: Demo
    runtime: Path

    @property
    def url(self) -> str:
        return self.demo.url

    def standin_stats(self) -> dict[str, int]:
        """The chat stand-in's own counters: what the backend behind the gate saw."""
        table = json.loads((self.runtime / "routing.json").read_text())
        return instance_stats(table["models"]["standin-chat"][0], self.runtime / "gate-tls")

    def usage(self) -> list[tuple[int, int]]:
        """(status, completion_tokens) of every accounted request, oldest first."""
        with sqlite3.connect(self.runtime / "usage.db") as db:
            return list(db.execute("SELECT status, completion_tokens FROM usage ORDER BY id"))


def wait_for(check: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def chat() -> Iterator[ChatDemo]:
    demo = start_demo("mux", token_delay=TOKEN_DELAY)
    runtime = None
    assert demo.process.stdout is not None
    while runtime is None:
        line = demo.process.stdout.readline()
        if not line:
            raise RuntimeError("the demo stopped printing before its usage line")
        if line.strip().startswith("usage:"):
            runtime = Path(line.split("--database", 1)[1].strip()).parent
    try:
        yield ChatDemo(demo, runtime)
    finally:
        if demo.process.poll() is None:
            stop_demo(demo)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    yield from launch_browser()


@pytest.fixture
def context(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 800}, accept_downloads=True)
    try:
        yield context
    finally:
        context.close()


def open_chat(context: Any, chat: ChatDemo, sign_in: bool = True) -> Any:
    page = context.new_page()
    page.goto(chat.url + "/")
    page.wait_for_selector(READY, state="attached")
    if sign_in:
        page.click("#demo-sign-in")
        page.wait_for_selector(READY, state="attached")
        assert page.inner_text("#account").startswith("Demo user")
    return page


def set_max_tokens(page: Any, tokens: int) -> None:
    closed = page.is_hidden("#settings")
    if closed:
        page.click("#settings-toggle")
    page.fill("#max-tokens", str(tokens))
    page.dispatch_event("#max-tokens", "change")
    if closed:
        page.click("#settings-toggle")


def started(page: Any) -> int:
    return int(page.evaluate("document.body.dataset.started || '0'"))


def starts_answer(page: Any, action: Callable[[], None]) -> None:
    """Do ``action`` and wait until it started an answer (a fast one may be over already)."""
    before = started(page)
    action()
    wait_for(lambda: started(page) > before, what="an answer to start")


def send(page: Any, text: str) -> None:
    page.fill("#composer-input", text)
    starts_answer(page, lambda: page.press("#composer-input", "Enter"))


def wait_answered(page: Any, timeout: float = 20.0) -> None:
    wait_for(
        lambda: page.evaluate("document.body.dataset.finished === document.body.dataset.started"), timeout, "the answer to finish"
    )


def answer_words(page: Any) -> int:
    return len(page.locator(".message.assistant .bubble").last.inner_text().split())


def wait_js(page: Any, expression: str, timeout: float = 10.0) -> Any:
    """Poll ``expression`` in the page (wait_for_function would need eval, which the CSP forbids)."""
    return wait_for(lambda: page.evaluate(expression), timeout, expression)


def session_csrf(page: Any) -> str:
    return page.evaluate("fetch('/account/session').then(r => r.json()).then(j => j.csrf)")  # type: ignore[no-any-return]


# -- the whole path: sign in, stream, stop, reload, sign out ------------------------------------


def test_sign_in_stream_stop_reload_sign_out(context: Any, chat: ChatDemo) -> None:
    page = open_chat(context, chat)
    seen = watch(page, chat.url)
    assert page.input_value("#model") == "standin-chat"
    assert page.inner_text("#model-state").startswith("ready")
    set_max_tokens(page, 400)  # 20 s of tokens: long enough to stop halfway
    served = chat.standin_stats()["served"]
    accounted = len(chat.usage())

    send(page, "Tell me a long story about rivers")
    first = wait_for(lambda: answer_words(page) >= 3, what="the first tokens")
    assert first
    wait_for(lambda: answer_words(page) >= 8, what="more tokens: the answer streams")
    assert chat.standin_stats()["active_requests"] == 1
    page.click("#stop")
    wait_answered(page, 5)
    assert page.locator(".message.assistant .status").last.inner_text() == "Stopped."
    stopped_at = answer_words(page)
    assert stopped_at < 400
    # The cancel went appliance -> gate -> backend: the stand-in stops generating at once,
    # never finishes that answer, and the request is accounted as cancelled by the client.
    wait_for(lambda: chat.standin_stats()["active_requests"] == 0, 5, "the backend to see the cancel")
    assert chat.standin_stats()["served"] == served
    rows = wait_for(lambda: chat.usage()[accounted:], 10, "the accounting row")
    assert rows[-1][0] == 499
    time.sleep(0.3)
    assert answer_words(page) == stopped_at  # nothing more arrived

    # Regenerate, then edit and resend, with short answers.
    set_max_tokens(page, 6)
    starts_answer(page, page.locator(".message.assistant").last.get_by_role("button", name="Regenerate").click)
    wait_answered(page)
    assert answer_words(page) == 6 and page.locator(".message").count() == 2
    page.locator(".message.user").last.get_by_role("button", name="Edit").click()
    page.fill(".edit-box textarea", "A different question")
    starts_answer(page, page.get_by_role("button", name="Save and send").click)
    wait_answered(page)
    assert page.locator(".message.user .bubble").last.inner_text() == "A different question"
    assert page.locator(".message").count() == 2 and answer_words(page) == 6

    # Reload: the conversation is still there (IndexedDB).
    page.reload()
    page.wait_for_selector(READY, state="attached")
    assert page.locator(".message.user .bubble").last.inner_text() == "A different question"
    assert page.locator("#conversation-list .open").first.inner_text() == "Tell me a long story about rivers"

    # Sign out: the API refuses the page's calls from then on, even with the old token.
    csrf = session_csrf(page)
    status = f"fetch('/v1/models', {{headers: {{'X-Sluice-CSRF': {json.dumps(csrf)}}}}}).then(r => r.status)"
    assert page.evaluate(status) == 200
    page.click("#sign-out")
    page.wait_for_url("**/account/signed-out")
    page.goto(chat.url + "/")
    page.wait_for_selector(READY, state="attached")
    assert page.evaluate(status) == 401
    assert page.is_visible("#demo-sign-in")
    assert not seen.dialogs and not seen.foreign_requests and not seen.page_errors
    assert seen.csp_violations(page) == []


# -- export, delete all, import; hostile imports change nothing ------------------------------


def _conversations(page: Any) -> list[dict[str, Any]]:
    script = """import('/chat/store.js').then(s => s.listConversations())"""
    return sorted(page.evaluate(script), key=lambda c: c["id"])  # type: ignore[no-any-return]


def _import(page: Any, path: Path) -> str:
    page.set_input_files("#import-file", str(path))
    wait_js(page, "document.getElementById('notice').textContent.startsWith('Im')")
    text: str = page.inner_text("#notice")
    return text


def test_export_delete_all_import_and_reject_hostile_files(context: Any, chat: ChatDemo, tmp_path: Path) -> None:
    page = open_chat(context, chat)
    set_max_tokens(page, 5)
    send(page, "First conversation")
    wait_answered(page)
    page.click("#new-chat")
    send(page, "Second conversation")
    wait_answered(page)
    before = _conversations(page)
    assert len(before) == 2

    with page.expect_download() as download:
        page.click("#export")
    exported = tmp_path / "export.json"
    download.value.save_as(exported)
    document = json.loads(exported.read_text())
    assert document["format"] == "sluice-chat-export" and document["version"] == 1
    assert sorted(c["title"] for c in document["conversations"]) == ["First conversation", "Second conversation"]

    page.click("#delete-all")
    page.click("#confirm-ok")
    wait_js(page, "document.getElementById('notice').textContent === 'Deleted all conversations.'")
    assert _conversations(page) == []
    assert "Imported 2 conversations." in _import(page, exported)
    assert _conversations(page) == before
    assert page.locator("#conversation-list .open").count() == 2

    good = document["conversations"][0]
    hostile: dict[str, tuple[str, str]] = {
        "corrupt": (exported.read_text()[:200], "not valid JSON"),
        "version": (json.dumps({**document, "version": 2}), "version 2 is not supported"),
        "proto": (
            '{"format":"sluice-chat-export","version":1,"conversations":[{"id":"p","title":"t",'
            '"messages":[],"__proto__":{"polluted":true}}]}',
            'unexpected field "__proto__"',
        ),
        "constructor": (
            json.dumps({**document, "constructor": {"prototype": {"polluted": True}}}),
            'unexpected field "constructor"',
        ),
        "huge": (
            json.dumps(
                {
                    **document,
                    "conversations": [{**good, "id": "huge", "messages": [{"role": "user", "content": "x" * 1_000_001}]}],
                }
            ),
            "longer than",
        ),
        "script-title": (
            json.dumps({**document, "conversations": [{**good, "id": "s", "title": "<script>alert(1)</script>"}]}),
            "titles are plain text",
        ),
        "half-good": (
            json.dumps(
                {
                    **document,
                    "conversations": [
                        {**good, "id": "new-one"},
                        {**good, "id": "bad", "messages": [{"role": "system", "content": "x"}]},
                    ],
                }
            ),
            "role",
        ),
        "not-export": ('{"hello": "world"}', "unexpected field"),
    }
    for name, (text, reason) in hostile.items():
        path = tmp_path / f"{name}.json"
        path.write_text(text)
        message = _import(page, path)
        assert message.startswith("Import refused, nothing was changed"), (name, message)
        assert reason in message, (name, message)
        assert _conversations(page) == before, name
        if name == "proto":
            screenshot(page, "chat-import-refused.png")
        page.evaluate("document.getElementById('notice').textContent = ''")
    assert page.evaluate("({}).polluted === undefined && Object.prototype.polluted === undefined")


# -- CSRF: another origin cannot use the signed-in browser ------------------------------------

EVIL_PAGE = """<!doctype html><html><body>
<form id="form" method="post" enctype="text/plain" action="{target}/v1/chat/completions">
<input name='{{"model":"standin-chat","messages":[{{"role":"user","content":"csrf"}}],"pad":"' value='"}}'>
</form>
<script>
const body = JSON.stringify({{model: "standin-chat", messages: [{{role: "user", content: "csrf"}}]}});
window.results = {{}};
const done = (name) => (r) => {{ window.results[name] = r && r.type === "opaque" ? "opaque" : (r && r.status) || String(r); }};
Promise.all([
  fetch("{target}/v1/chat/completions", {{method: "POST", credentials: "include", mode: "no-cors",
        headers: {{"Content-Type": "text/plain"}}, body}}).then(done("no_cors"), done("no_cors")),
  fetch("{target}/v1/chat/completions", {{method: "POST", credentials: "include",
        headers: {{"Content-Type": "application/json", "X-Sluice-CSRF": "guess"}}, body}}).then(done("cors"), done("cors")),
  fetch("{target}/account/session", {{credentials: "include"}}).then(r => r.json()).then(done("session_read"), done("session_read")),
  fetch("{target}/v1/models", {{credentials: "include"}}).then(r => r.json()).then(done("models_read"), done("models_read")),
]).then(() => {{ window.finished = true; }});
</script></body></html>"""


class _EvilHandler(BaseHTTPRequestHandler):
    page = b""

    def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(self.page)))
        self.end_headers()
        self.wfile.write(self.page)

    def log_message(self, *args: object) -> None:
        return None


def test_reject_cross_site_requests_from_another_origin(context: Any, chat: ChatDemo) -> None:
    page = open_chat(context, chat)
    accounted = len(chat.usage())
    served = chat.standin_stats()["served"]
    handler = type("Evil", (_EvilHandler,), {"page": EVIL_PAGE.format(target=chat.url).encode()})
    port = free_port()
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        # 127.0.0.1 on another port: the same site (so SameSite does not help), another origin.
        page.goto(f"http://127.0.0.1:{port}/")
        wait_js(page, "window.finished === true", 15)
        results = page.evaluate("window.results")
        assert results["no_cors"] == "opaque"  # sent, answer unreadable: and refused (below)
        assert results["cors"] == "TypeError: Failed to fetch"  # the preflight is never granted
        assert results["session_read"].startswith("TypeError")  # the CSRF token cannot be read
        assert results["models_read"].startswith("TypeError")
        with page.expect_navigation() as navigation:
            page.evaluate("document.getElementById('form').submit()")
        assert navigation.value.status == 403  # a foreign Origin is refused before any authentication
    finally:
        server.shutdown()
        server.server_close()
    time.sleep(0.5)
    assert len(chat.usage()) == accounted  # nothing admitted, nothing accounted
    assert chat.standin_stats()["served"] == served
    # The signed-in page itself still works.
    page.goto(chat.url + "/")
    page.wait_for_selector(READY, state="attached")
    assert page.inner_text("#model-state").startswith("ready")


# -- XSS: model output is text -----------------------------------------------------------------

HOSTILE_OUTPUT = "\n".join(
    [
        "<script>alert('script')</script>",
        "<img src=x onerror=\"alert('img')\">",
        '<svg onload="alert(\'svg\')"><circle r="5"/></svg>',
        "[click me](javascript:alert('link')) and [data](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)",
        f'![tracker]({"http://evil.example.org/pixel.png"}) <a href="http://evil.example.org/">a</a>',
        '<iframe src="http://evil.example.org/"></iframe> &lt;b&gt; &amp; &#60;script&#62;',
        "<style>body{display:none}</style> <link rel=stylesheet href=http://evil.example.org/x.css>",
        "```html\n<script>alert('code')</script>\n```",
        "L" * 5000,
        "END-OF-HOSTILE",
    ]
)


def test_model_output_is_shown_as_inert_text(context: Any, chat: ChatDemo) -> None:
    page = open_chat(context, chat)
    seen = watch(page, chat.url)
    page.reload()  # so that the CSP listener is in from the start
    page.wait_for_selector(READY, state="attached")
    set_max_tokens(page, 2000)
    send(page, "/echo " + HOSTILE_OUTPUT)
    wait_answered(page, 30)
    bubble = page.locator(".message.assistant .bubble").last
    assert "END-OF-HOSTILE" in bubble.inner_text()
    text = bubble.inner_text()
    for visible in (
        "<script>alert('script')</script>",
        "<img src=x onerror=",
        "<svg onload=",
        "&lt;b&gt;",
        "javascript:alert('link')",
        "[image not loaded: tracker]",
    ):
        assert visible in text, visible
    elements = page.evaluate("Array.from(document.querySelectorAll('.message .bubble *')).map(e => e.tagName.toLowerCase())")
    assert not set(elements) & {"script", "img", "svg", "a", "iframe", "style", "link", "object", "embed"}
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")  # long lines wrap
    time.sleep(0.5)
    assert seen.dialogs == []
    assert seen.foreign_requests == []
    assert seen.page_errors == []
    assert seen.csp_violations(page) == []
    screenshot(page, "chat-hostile-output.png")


# -- accessibility, keyboard, screenshots ------------------------------------------------------

MARKDOWN_SAMPLE = "\n".join(
    [
        "/echo ## A heading",
        "",
        "Some **bold**, *italic* and `code`.",
        "",
        "- one",
        "- two",
        "",
        "1. first",
        "2. second",
        "",
        "> a quote",
        "",
        "| model | state |",
        "|---|---|",
        "| standin | ready |",
        "",
        "```python",
        "def hello():",
        "    return 'world'",
        "```",
    ]
)


def test_accessibility_keyboard_and_screenshots(context: Any, chat: ChatDemo) -> None:
    from axe_playwright_python.sync_playwright import Axe

    page = open_chat(context, chat, sign_in=False)
    screenshot(page, "chat-signed-out-desktop.png")
    page.click("#demo-sign-in")
    page.wait_for_selector(READY, state="attached")
    set_max_tokens(page, 100)
    page.reload()
    page.wait_for_selector(READY, state="attached")
    # Keyboard only: the skip link leads to the message box; Enter sends.
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.className") == "skip-link"
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "composer-input"
    page.keyboard.type("Hello from the keyboard")
    starts_answer(page, lambda: page.keyboard.press("Enter"))
    assert page.evaluate("document.activeElement.id") == "stop"  # 100 tokens: still streaming
    wait_answered(page)
    send(page, MARKDOWN_SAMPLE)
    wait_answered(page)
    results = Axe().run(page)
    violations = [(v["id"], v["impact"]) for v in results.response["violations"]]
    assert violations == [], results.generate_report()
    screenshot(page, "chat-desktop.png")
    page.click("#settings-toggle")
    screenshot(page, "chat-settings-desktop.png")
    results = Axe().run(page)
    assert [v["id"] for v in results.response["violations"]] == [], results.generate_report()
    page.click("#settings-toggle")

    page.emulate_media(reduced_motion="reduce")  # no sliding sidebar half-way in a screenshot
    page.set_viewport_size({"width": 390, "height": 844})
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    screenshot(page, "chat-phone.png")
    page.click("#open-sidebar")
    page.wait_for_selector("#sidebar.open")
    screenshot(page, "chat-phone-sidebar.png")
    results = Axe().run(page)
    assert [v["id"] for v in results.response["violations"]] == [], results.generate_report()
    page.keyboard.press("Escape")
    assert not page.locator("#sidebar.open").count()
    assert (ARTIFACTS / "chat-phone.png").stat().st_size > 0


# -- sign-in through the real OpenID provider (`sluice serve` with [oidc]) -------------------------


def test_oidc_sign_in_chat_and_sign_out(browser: Any, running: Running) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    try:
        page = context.new_page()
        seen = watch(page, running.url)
        page.goto(running.url + "/")
        page.wait_for_selector(READY, state="attached")
        assert not page.locator("#demo-sign-in").count()  # no demo sign-in outside the demo
        screenshot(page, "chat-sign-in-oidc.png")
        page.click("#sign-in-link")
        page.wait_for_url(running.provider.issuer + "/**")
        page.fill("input[name=sub]", "alice")
        page.get_by_role("button", name="Authorize").click()
        page.wait_for_url(running.url + "/account/")
        page.goto(running.url + "/")
        page.wait_for_selector(READY, state="attached")
        assert page.inner_text("#account").startswith("Alice Example")
        wait_for(lambda: "standin-chat" in page.inner_text("#model"), what="the model list")
        page.select_option("#model", "standin-chat")
        set_max_tokens(page, 10)
        send(page, "/echo hello from alice")
        wait_answered(page)
        assert page.locator(".message.assistant .bubble").last.inner_text() == "hello from alice"
        csrf = session_csrf(page)
        status = f"fetch('/v1/models', {{headers: {{'X-Sluice-CSRF': {json.dumps(csrf)}}}}}).then(r => r.status)"
        assert page.evaluate(status) == 200
        page.click("#sign-out")  # the form's CSP allows the provider's end-session redirect
        page.wait_for_url(running.provider.issuer + "/**")
        page.goto(running.url + "/")
        page.wait_for_selector(READY, state="attached")
        assert page.evaluate(status) == 401
        assert page.is_visible("#sign-in-link")
        assert [u for u in seen.foreign_requests if not u.startswith(running.provider.issuer)] == []
    finally:
        context.close()


# -- sealed mode's key pinning (against a stand-in seal.js: the real one is tested with the gate) --------

STUB_SEAL = """
export function sealingAvailable() { return {ok: true, reason: ""}; }
export async function loadKeyConfig(fetchImpl) {
  const response = await fetchImpl("/v1/models");  // the page's credentials must apply
  if (!response.ok) throw new Error("unauthorized");
  return {config: new Uint8Array([1, 2, 3]), fingerprint: localStorage.getItem("stub-fingerprint") || "sha256:AAAA"};
}
export async function sealedFetch(path, init, keyConfig, fetchImpl) {
  window.sealedCalls = (window.sealedCalls || 0) + 1;
  window.sealedWith = keyConfig.fingerprint;
  return fetchImpl(path, init);
}
"""


def test_sealed_key_is_pinned_and_a_changed_key_refused_until_accepted(context: Any, chat: ChatDemo) -> None:
    context.route(
        chat.url + "/chat/seal.js", lambda route: route.fulfill(status=200, content_type="text/javascript", body=STUB_SEAL)
    )
    page = open_chat(context, chat)
    seen = watch(page, chat.url)
    page.click("#settings-toggle")
    assert page.is_enabled("#sealed")
    page.check("#sealed")
    wait_js(page, "document.getElementById('privacy').classList.contains('sealed')")
    assert "gateway sees only ciphertext" in page.inner_text("#privacy")
    assert "sha256:AAAA" in page.inner_text("#privacy")
    assert "Pinned the cluster's key on first use" in page.inner_text("#sealing-status")
    set_max_tokens(page, 4)
    send(page, "/echo sealed hello")
    wait_answered(page)
    assert page.evaluate("window.sealedCalls") == 1 and page.evaluate("window.sealedWith") == "sha256:AAAA"
    assert page.locator(".message.assistant .bubble").last.inner_text() == "sealed hello"

    # The appliance now offers another key: refused, loudly, and nothing is sent sealed or clear.
    page.evaluate("localStorage.setItem('stub-fingerprint', 'sha256:BBBB')")
    page.reload()
    page.wait_for_selector(READY, state="attached")
    assert "key changed" in page.inner_text("#notice")
    assert not page.is_checked("#sealed")
    assert "Not sealed" in page.inner_text("#privacy")
    page.click("#settings-toggle")
    assert page.inner_text("#key-pinned") == "sha256:AAAA" and page.inner_text("#key-offered") == "sha256:BBBB"
    page.evaluate("document.getElementById('sealed').click()")  # trying again does not accept it
    wait_js(page, "!document.getElementById('sealed').checked && !document.getElementById('key-changed').hidden")
    assert "Sealing refused" in page.inner_text("#sealing-status")
    page.click("#accept-key")
    wait_js(page, "document.getElementById('privacy').classList.contains('sealed')")
    assert "sha256:BBBB" in page.inner_text("#privacy") and page.is_hidden("#key-changed")
    screenshot(page, "chat-sealed.png")
    assert seen.csp_violations(page) == [] and not seen.page_errors


def test_sealing_unavailable_says_why(context: Any, chat: ChatDemo) -> None:
    page = open_chat(context, chat)  # the appliance's page as it is (no seal.js in this branch, or a real one)
    page.click("#settings-toggle")
    status = page.inner_text("#sealing-status")
    if page.is_disabled("#sealed"):
        assert status.startswith("Sealing unavailable: ")
    else:
        assert "key" in status


# -- personas, image attachments, search, rename, delete ------------------------------------------

# A 1x1 PNG.
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c4890000000d49444154789c63f8cf"
    "c0f01f0005000201e2b0c5c30000000049454e44ae426082"
)


def test_personas_images_search_rename_and_delete(context: Any, chat: ChatDemo) -> None:
    page = open_chat(context, chat)
    seen = watch(page, chat.url)
    set_max_tokens(page, 4)
    # A persona: saved in the browser, chosen for a new conversation, its system prompt sent.
    page.click("#settings-toggle")
    page.fill("#system", "You answer like a pirate.")
    page.dispatch_event("#system", "change")
    page.fill("#persona-name", "Pirate")
    page.click("#save-persona")
    wait_js(page, "document.getElementById('persona').value === 'Pirate'")
    page.click("#settings-toggle")

    # An image within the route's limits is sent as a data: URL; one over them is refused, clearly.
    page.set_input_files("#attach-file", files=[{"name": "dot.png", "mimeType": "image/png", "buffer": PNG}])
    page.wait_for_selector(".attachment img")
    send(page, "What is in this picture?")
    wait_answered(page)
    assert page.locator(".message.user .bubble img").count() == 1
    assert answer_words(page) == 4
    limit = page.evaluate("fetch('/chat/config.json').then(r => r.json()).then(c => c.max_image_url_chars)")
    big = b"\x89PNG" + b"\x00" * (limit * 3 // 4 + 10)
    page.set_input_files("#attach-file", files=[{"name": "huge.png", "mimeType": "image/png", "buffer": big}])
    wait_js(page, "document.getElementById('notice').textContent.includes('huge.png')")
    assert "this service accepts images up to" in page.inner_text("#notice")
    assert page.locator(".attachment").count() == 0

    page.click("#new-chat")
    send(page, "Second chat about ships")
    wait_answered(page)
    page.reload()
    page.wait_for_selector(READY, state="attached")
    page.click("#settings-toggle")
    assert [o.strip() for o in page.locator("#persona option").all_inner_texts()] == ["None", "Pirate"]
    page.click("#settings-toggle")

    # Search, rename, delete.
    assert page.locator("#conversation-list .open").count() == 2
    page.fill("#search", "ships")
    assert page.locator("#conversation-list .open").all_inner_texts() == ["Second chat about ships"]
    page.fill("#search", "zzz-nothing")
    assert page.locator("#conversation-list .open").count() == 0
    page.fill("#search", "")
    # The row's actions show on hover and to the keyboard: Tab from the title reaches Rename.
    page.locator("#conversation-list li", has_text="Second chat about ships").locator(".open").focus()
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.getAttribute('aria-label')") == "Rename Second chat about ships"
    page.keyboard.press("Enter")
    page.fill("#conversation-list input", "Ships <b>renamed</b>")
    page.press("#conversation-list input", "Enter")
    wait_js(
        page,
        "Array.from(document.querySelectorAll('#conversation-list .open')).some(b => b.textContent === 'Ships b renamed /b')",
    )
    page.locator("#conversation-list li", has_text="Ships b renamed /b").hover()
    page.get_by_role("button", name="Delete Ships b renamed /b").click()
    page.click("#confirm-ok")
    wait_js(page, "document.querySelectorAll('#conversation-list .open').length === 1")
    assert page.locator("#conversation-list .open").all_inner_texts() == ["What is in this picture?"]
    assert not seen.page_errors and not seen.foreign_requests


def test_api_key_entry_without_sign_in(context: Any, chat: ChatDemo) -> None:
    """Deployments without sign-in: a key typed into the page, kept in this tab only."""
    page = open_chat(context, chat, sign_in=False)
    page.click("text=Use an API key")
    page.fill("#api-key", KEY)
    page.click("#save-api-key")
    wait_for(lambda: "standin-chat" in page.inner_text("#model"), what="the model list")
    assert page.inner_text("#account") == "Using an API key" and page.is_hidden("#sign-in")
    assert page.evaluate("sessionStorage.getItem('sluice.api-key')") == KEY
    assert page.evaluate("localStorage.length") == 0
    set_max_tokens(page, 3)
    send(page, "/echo with a key")
    wait_answered(page)
    assert page.locator(".message.assistant .bubble").last.inner_text() == "with a key"
    page.click("#forget-api-key")
    assert page.evaluate("sessionStorage.getItem('sluice.api-key')") is None
    assert page.is_visible("#demo-sign-in")
