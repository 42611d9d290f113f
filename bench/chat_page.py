"""Benchmark: the web chat's weight, and Send-to-first-token in the browser against plain HTTP clients.

Prints (asserts nothing):

* each file of the chat with its size and gzip-compressed size, and the total of
  the scripts and styles (target: under 200 KB compressed);
* time from Send to the first answer token shown in headless Chromium, against
  the same streamed request from httpx2 (first token parsed) and curl (first byte),
  each the median and the slowest of ``--runs`` requests to the demo.

    .venv/bin/python bench/chat_page.py [--runs 10]

Needs /usr/bin/chromium and the test extra (playwright).  All traffic goes to
127.0.0.1.  The browser, the demo and the clients share the machine's cores.
"""

from __future__ import annotations

import argparse
import gzip
import json
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx2

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from _load import start_demo  # noqa: E402

from tests.integration.browser import CHROMIUM, CHROMIUM_ARGS  # noqa: E402

PROMPT = "Tell me about rivers"
MAX_TOKENS = 16

_FIRST_TOKEN_IN_PAGE = """async () => {
  const box = document.getElementById("messages");
  const before = box.querySelectorAll(".message.assistant").length;
  document.getElementById("composer-input").value = %s;
  const started = performance.now();
  return await new Promise((resolve) => {
    const observer = new MutationObserver(() => {
      const answers = box.querySelectorAll(".message.assistant .bubble");
      if (answers.length > before && answers[answers.length - 1].textContent.trim()) {
        observer.disconnect();
        resolve(performance.now() - started);
      }
    });
    observer.observe(box, {childList: true, subtree: true, characterData: true});
    document.getElementById("send").click();
  });
}"""


def page_weight(url: str) -> None:
    manifest = httpx2.get(f"{url}/chat/manifest.json").json()
    total = compressed = 0
    print(f"{'file':<28}{'bytes':>10}{'gzip':>10}")
    for path in sorted(manifest["files"]):
        body = httpx2.get(url + ("/" if path.endswith("/index.html") else path)).content
        packed = len(gzip.compress(body, 6))
        print(f"{path:<28}{len(body):>10}{packed:>10}")
        if path.endswith((".js", ".css")):
            total += len(body)
            compressed += packed
    print(f"{'scripts and styles':<28}{total:>10}{compressed:>10}   (target: under 200 KB compressed)")


def browser_first_tokens(url: str, runs: int) -> list[float]:
    from playwright.sync_api import sync_playwright

    times = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.goto(url + "/")
        page.wait_for_selector("body[data-ready=true]", state="attached")
        page.click("#demo-sign-in")
        page.wait_for_selector("body[data-ready=true]", state="attached")
        page.click("#settings-toggle")
        page.fill("#max-tokens", str(MAX_TOKENS))
        page.dispatch_event("#max-tokens", "change")
        for _ in range(runs + 1):
            page.click("#new-chat")
            elapsed = page.evaluate(_FIRST_TOKEN_IN_PAGE % json.dumps(PROMPT))
            page.wait_for_selector(f"body[data-finished='{len(times) + 1}']", state="attached")
            times.append(elapsed / 1000)
        browser.close()
    return times[1:]  # the first warms the page's modules and connections


def _body() -> dict[str, object]:
    return {"model": "standin-chat", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": MAX_TOKENS, "stream": True}


def httpx_first_tokens(url: str, key: str, runs: int) -> list[float]:
    times = []
    with httpx2.Client(headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
        for _ in range(runs + 1):
            started = time.perf_counter()
            first = None
            with client.stream("POST", f"{url}/v1/chat/completions", json=_body()) as response:
                for line in response.iter_lines():  # read to the end, as the page does
                    if first is None and line.startswith("data: {") and '"content"' in line:
                        first = time.perf_counter() - started
            if first is not None:
                times.append(first)
    return times[1:]


def curl_first_bytes(url: str, key: str, runs: int) -> list[float]:
    if shutil.which("curl") is None:
        return []
    times = []
    for _ in range(runs):
        # The key goes on curl's command line: a throwaway demo key, on this machine only.
        out = subprocess.run(  # noqa: S603 (fixed argv, no shell)
            [
                "curl",
                "-s",
                "-N",
                "-o",
                "/dev/null",
                "-w",
                "%{time_starttransfer}",
                "-H",
                f"Authorization: Bearer {key}",
                "-H",
                "Content-Type: application/json",
                "-d",
                json.dumps(_body()),
                f"{url}/v1/chat/completions",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        times.append(float(out.stdout))
    return times


def show(name: str, times: list[float]) -> None:
    if not times:
        print(f"{name:<44}{'(not available)':>24}")
        return
    print(f"{name:<44}{statistics.median(times) * 1000:>10.1f} ms{max(times) * 1000:>10.1f} ms")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    key = "sk-bench-" + secrets.token_urlsafe(24)
    process, url = start_demo(key)  # the demo's default token delay, as a user sees it
    try:
        page_weight(url)
        print()
        print(f"{'Send to first token (' + str(args.runs) + ' runs)':<44}{'median':>13}{'slowest':>13}")
        show("browser (chat page, headless Chromium)", browser_first_tokens(url, args.runs))
        show("httpx2 (first content chunk)", httpx_first_tokens(url, key, args.runs))
        show("curl (time_starttransfer: first byte)", curl_first_bytes(url, key, args.runs))
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
