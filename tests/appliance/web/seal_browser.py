"""Real headless Chromium for the browser sealing tests: one browser, pages that load the sealing modules.

The modules (``appliance/web/chat/*.js``) are served from disk by Playwright's
``page.route()`` under any origin the test chooses: a loopback origin is a
secure context (WebCrypto works), a name that does not look local is not.
Under a running appliance's origin, everything else (``/v1/...``) goes to the
real appliance.  Launch flags from shared/REAL_COMPONENTS.md; the browser is
Debian's ``/usr/bin/chromium`` (``playwright install`` is never run).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from playwright.sync_api import Browser, Page, Route

from tests.integration.browser import launch_browser

ROOT = Path(__file__).resolve().parents[3]
MODULES = ROOT / "appliance" / "web" / "chat"
# Where the test page and the modules appear under the chosen origin.
PREFIX = "/__seal_test__/"
PAGE = "<!doctype html><meta charset=utf-8><title>seal test</title>"


@contextmanager
def chromium() -> Iterator[Browser]:
    """The one Chromium of the browser tests (tests/integration/browser.py), for a module."""
    yield from launch_browser()


def _serve(route: Route) -> None:
    name = route.request.url.split(PREFIX, 1)[1].split("?", 1)[0]
    if name == "index.html":
        route.fulfill(status=200, content_type="text/html", body=PAGE)
        return
    path = MODULES / name
    if "/" in name or not name.endswith(".js") or not path.is_file():
        route.fulfill(status=404, body="")
        return
    route.fulfill(status=200, content_type="text/javascript", body=path.read_text(encoding="utf-8"))


@contextmanager
def seal_page(browser: Browser, origin: str) -> Iterator[Page]:
    """A page at ``{origin}/__seal_test__/index.html`` whose ``window.seal`` etc. are the modules."""
    context = browser.new_context()
    try:
        page = context.new_page()
        page.route(f"{origin}{PREFIX}**", _serve)
        page.goto(f"{origin}{PREFIX}index.html")
        yield page
    finally:
        context.close()


def run(page: Page, body: str, arg: Any = None) -> Any:
    """Run ``body`` (the inside of an async function of ``arg`` with the modules ``seal``, ``ohttp``,
    ``hpke``, ``bhttp`` and ``octets`` and the helpers ``hex``/``unhex`` in scope) in the page; its result."""
    script = (
        "async (arg) => {"
        f" const seal = await import('{PREFIX}seal.js'); const ohttp = await import('{PREFIX}ohttp.js');"
        f" const hpke = await import('{PREFIX}hpke.js'); const bhttp = await import('{PREFIX}bhttp.js');"
        f" const octets = await import('{PREFIX}octets.js');"
        " const hex = (b) => Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');"
        " const unhex = (s) => Uint8Array.from(s.match(/../g) || [], (x) => parseInt(x, 16));"
        f" {body} }}"
    )
    return page.evaluate(script, arg)
