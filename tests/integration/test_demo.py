"""`sluice demo` end to end, driven by the official openai client."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx2
import openai
import pytest

from tests.conftest import ROOT, free_port

pytestmark = pytest.mark.integration

KEY = "sk-test-" + "k" * 24


@dataclass
class Demo:
    url: str
    process: subprocess.Popen[str]
    mode: str
    clients: list[openai.OpenAI] = field(default_factory=list)

    def client(self, key: str = KEY) -> openai.OpenAI:
        client = openai.OpenAI(base_url=f"{self.url}/v1", api_key=key, max_retries=0, timeout=30)
        self.clients.append(client)
        return client


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    ppid = int(handle.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def start_demo(mode: str, token_delay: float = 0.002, host: str = "127.0.0.1") -> Demo:
    port = free_port()
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
            mode,
            "--token-delay",
            str(token_delay),
            "--host",
            host,
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert process.stdout is not None
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            raise RuntimeError("demo exited before it was ready")
        if line.startswith("Sluice demo ready at "):
            return Demo(line.split()[-1], process, mode)
    process.kill()
    raise RuntimeError("demo not ready in time")


def stop_demo(demo: Demo) -> None:
    for client in demo.clients:
        client.close()
    family = _descendants(demo.process.pid)
    assert family, "the demo should have child processes (scheduler, gate, models)"
    demo.process.send_signal(signal.SIGTERM)
    assert demo.process.wait(30) == 0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(p) for p in family):
        time.sleep(0.1)
    if demo.process.stdout is not None:
        demo.process.stdout.close()
    assert not [p for p in family if _alive(p)], "processes left behind after SIGTERM"


@pytest.fixture(scope="module", params=["mux", "exec"])
def demo(request: pytest.FixtureRequest) -> Iterator[Demo]:
    running = start_demo(request.param)
    try:
        yield running
    finally:
        if running.process.poll() is None:
            stop_demo(running)


def test_health_and_ready(demo: Demo) -> None:
    assert httpx2.get(f"{demo.url}/healthz").json() == {"status": "ok"}
    ready = httpx2.get(f"{demo.url}/readyz")
    assert ready.status_code == 200 and ready.json() == {"status": "ready", "ready_models": 2}


def test_models(demo: Demo) -> None:
    assert {m.id for m in demo.client().models.list()} == {"standin-chat", "standin-embed"}


def test_chat_plain(demo: Demo) -> None:
    answer = demo.client().chat.completions.create(
        model="standin-chat", messages=[{"role": "user", "content": "Hello there"}], max_tokens=12
    )
    assert answer.choices[0].message.content
    assert answer.usage is not None and answer.usage.completion_tokens == 12 and answer.usage.prompt_tokens == 2


def test_chat_stream(demo: Demo) -> None:
    stream = demo.client().chat.completions.create(
        model="standin-chat", messages=[{"role": "user", "content": "Hello there"}], max_tokens=12, stream=True
    )
    pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
    plain = demo.client().chat.completions.create(
        model="standin-chat", messages=[{"role": "user", "content": "Hello there"}], max_tokens=12
    )
    assert len([p for p in pieces if p]) == 12
    assert "".join(pieces).split() == (plain.choices[0].message.content or "").split()


def test_chat_stream_with_usage(demo: Demo) -> None:
    stream = demo.client().chat.completions.create(
        model="standin-chat",
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=5,
        stream=True,
        stream_options={"include_usage": True},
    )
    usage = [c.usage for c in stream if c.usage is not None]
    assert usage and usage[-1].completion_tokens == 5


def test_completions(demo: Demo) -> None:
    answer = demo.client().completions.create(model="standin-chat", prompt="Once upon a time", max_tokens=7)
    assert answer.choices[0].text and answer.usage is not None and answer.usage.completion_tokens == 7


def test_embeddings(demo: Demo) -> None:
    answer = demo.client().embeddings.create(model="standin-embed", input=["one", "two words"])
    assert len(answer.data) == 2 and len(answer.data[0].embedding) > 0
    again = demo.client().embeddings.create(model="standin-embed", input=["one"])
    assert again.data[0].embedding == answer.data[0].embedding


def test_bad_key(demo: Demo) -> None:
    with pytest.raises(openai.AuthenticationError) as info:
        demo.client("sk-wrong-" + "x" * 20).models.list()
    assert info.value.status_code == 401
    assert info.value.body["code"] == "invalid_api_key"  # type: ignore[index]
    missing = httpx2.post(f"{demo.url}/v1/chat/completions", json={})
    assert missing.status_code == 401


def test_unknown_model(demo: Demo) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        demo.client().chat.completions.create(model="gpt-nope", messages=[{"role": "user", "content": "x"}])
    assert info.value.status_code == 404


def test_wrong_route_for_model(demo: Demo) -> None:
    with pytest.raises(openai.NotFoundError):
        demo.client().embeddings.create(model="standin-chat", input="x")


def _post(demo: Demo, content: bytes, path: str = "/v1/chat/completions") -> httpx2.Response:
    return httpx2.post(
        f"{demo.url}{path}",
        content=content,
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
        timeout=30,
    )


@pytest.mark.parametrize(
    ("content", "status", "code"),
    [
        (b"{not json", 400, "invalid_json"),
        (b'{"model":"standin-chat","messages":[],"model":"x"}', 400, "duplicate_key"),
        (b'{"model":"standin-chat","messages":[{"role":"user","content":"x"}],"secret_field":1}', 422, "unknown_field"),
        (b'{"model":"standin-chat","messages":[{"role":"user","content":"x"}],"max_tokens":"lots"}', 422, "wrong_type"),
        (b'{"model":"standin-chat","messages":[{"role":"user","content":"' + b"x" * (5 * 2**20) + b'"}]}', 413, "body_too_large"),
    ],
)
def test_malformed_bodies(demo: Demo, content: bytes, status: int, code: str) -> None:
    response = _post(demo, content)
    assert response.status_code == status
    error = response.json()["error"]
    assert error["code"] == code and set(error) == {"message", "type", "param", "code"}
    assert "secret_field" not in response.text and "Traceback" not in response.text


def test_openai_client_sees_error_shape(demo: Demo) -> None:
    with pytest.raises(openai.UnprocessableEntityError) as info:
        demo.client().chat.completions.create(model="standin-chat", messages=[{"role": "wizard", "content": "x"}])
    assert info.value.status_code == 422


def test_unknown_path_and_method(demo: Demo) -> None:
    assert httpx2.get(f"{demo.url}/v1/files").status_code == 404
    assert httpx2.get(f"{demo.url}/v1/chat/completions").status_code == 405


def test_concurrent_requests(demo: Demo) -> None:
    from concurrent.futures import ThreadPoolExecutor

    client = demo.client()

    def one(i: int) -> int:
        answer = client.chat.completions.create(
            model="standin-chat", messages=[{"role": "user", "content": f"number {i}"}], max_tokens=4
        )
        return answer.usage.completion_tokens if answer.usage else -1

    with ThreadPoolExecutor(16) as pool:
        assert list(pool.map(one, range(64))) == [4] * 64


def test_sigterm_stops_everything() -> None:
    demo = start_demo("mux")
    assert demo.client().models.list()
    stop_demo(demo)


def test_sealed_openai_client_through_the_demo(demo: Demo) -> None:
    """The SDK's sealed client: the official openai client, unchanged, plain and streaming."""
    from sluice_sdk import fetch_fingerprint, sealed_openai_client

    fingerprint = fetch_fingerprint(f"{demo.url}/v1")
    with sealed_openai_client(f"{demo.url}/v1", KEY, fingerprint) as client:
        answer = client.chat.completions.create(
            model="standin-chat", messages=[{"role": "user", "content": "Hello there"}], max_tokens=12
        )
        plain = demo.client().chat.completions.create(
            model="standin-chat", messages=[{"role": "user", "content": "Hello there"}], max_tokens=12
        )
        assert answer.choices[0].message.content == plain.choices[0].message.content
        assert answer.usage is not None and answer.usage.completion_tokens == 12
        pieces = [
            c.choices[0].delta.content or ""
            for c in client.chat.completions.create(
                model="standin-chat", messages=[{"role": "user", "content": "Hello there"}], max_tokens=12, stream=True
            )
            if c.choices
        ]
        assert "".join(pieces).split() == (plain.choices[0].message.content or "").split()
        assert len(client.embeddings.create(model="standin-embed", input=["one"]).data) == 1
        assert {m.id for m in client.models.list()} == {"standin-chat", "standin-embed"}
