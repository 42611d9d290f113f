"""Headless Chromium (Debian's) driven by playwright, for the web chat's tests.

Never ``playwright install``: the browser is the system's ``/usr/bin/chromium``
(see ../shared/REAL_COMPONENTS.md).  Each test gets a fresh context (its own
cookies and IndexedDB) of one browser per module.  :class:`Watch` records
what a page must never do: open a dialog, reach another origin, or violate
its Content-Security-Policy.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT

__all__ = ["ARTIFACTS", "CHROMIUM", "CHROMIUM_ARGS", "Watch", "launch_browser", "screenshot", "watch"]

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Collects CSP violations inside the page, from before any of its scripts run.
_CSP_LISTENER = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", (e) => {
  window.__cspViolations.push({directive: e.violatedDirective, blocked: e.blockedURI});
});
"""


@dataclass
class Watch:
    origin: str
    dialogs: list[str] = field(default_factory=list)
    foreign_requests: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)

    def csp_violations(self, page: Any) -> list[dict[str, str]]:
        return page.evaluate("window.__cspViolations || []")  # type: ignore[no-any-return]


def watch(page: Any, origin: str) -> Watch:
    seen = Watch(origin)

    def on_dialog(dialog: Any) -> None:
        seen.dialogs.append(dialog.message)
        dialog.dismiss()

    def on_request(request: Any) -> None:
        url = request.url
        try:
            frame = request.frame.url  # who asked: pages of other sites (a provider's) are not ours to judge
        except Exception:  # a service worker's request has no frame; none of ours does that
            frame = ""
        if frame and not frame.startswith((origin + "/", "about:")):
            return
        if not (url.startswith(origin + "/") or url == origin or url.startswith(("data:", "blob:"))):
            seen.foreign_requests.append(url)

    page.on("dialog", on_dialog)
    page.on("request", on_request)
    page.on("pageerror", lambda error: seen.page_errors.append(str(error)))
    page.add_init_script(_CSP_LISTENER)
    return seen


def launch_browser() -> Iterator[Any]:
    if shutil.which(CHROMIUM) is None:
        pytest.fail(f"{CHROMIUM} is missing: scripts/test installs the chromium package")
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def screenshot(page: Any, name: str) -> Path:
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=False)
    return path
