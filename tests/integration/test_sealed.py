"""Sealed requests through the appliance as deployed (`sluice serve`, gate over a local pipe).

The client side uses the SDK's envelope functions; the appliance relays
ciphertext; the gate opens, checks, forwards and seals the answer.  The
appliance must learn nothing of the content: not in what it writes, not in
its memory.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx2
import pytest

from sluice_sdk.bhttp import Request, ResponseStreamDecoder, decode_response
from sluice_sdk.client import seal_request, seal_streaming_request
from sluice_sdk.errors import SealError
from sluice_sdk.keyconfig import KeyConfig, decode_key_configs
from tests.conftest import ROOT, Cluster, free_port, write_static_config
from tests.services.memory import process_memory

pytestmark = pytest.mark.integration

KEY = "sk-sealed-test-" + "q" * 20


@dataclass
class Served:
    base: str
    config: Path
    directory: Path
    process: subprocess.Popen[bytes]
    log: Path

    def keys(self) -> KeyConfig:
        response = httpx2.get(f"{self.base}/sealed/keys", timeout=10)
        assert response.status_code == 200 and response.headers["content-type"] == "application/ohttp-keys"
        return decode_key_configs(response.content)[0]

    def post(self, route: str, body: bytes, model: str = "standin-chat", chunked: bool = False) -> httpx2.Response:
        kind = "message/ohttp-chunked-req" if chunked else "message/ohttp-req"
        return httpx2.post(
            f"{self.base}/sealed/{route}",
            content=body,
            timeout=30,
            headers={"Authorization": f"Bearer {KEY}", "Sluice-Model": model, "Content-Type": kind},
        )


def _cluster_cli(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "cluster.cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def served(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    directory = tmp_path_factory.mktemp("sealed")
    config = write_static_config(
        directory,
        [
            (
                "standin-chat",
                "127.0.0.1",
                cluster.chat.port,
                cluster.chat.token,
                ["chat", "completions", "responses", "transcriptions", "translations"],
            ),
            ("standin-embed", "127.0.0.1", cluster.embed.port, cluster.embed.token, ["embeddings", "rerank", "score"]),
        ],
    )
    _cluster_cli("keys", "create", "--config", str(config))
    port = free_port()
    gate = [sys.executable, "-I", "-m", "cluster.cli", "gate", "--config", str(config), "--local-pipe"]
    appliance = directory / "appliance.toml"
    appliance.write_text(
        f'[server]\nport = {port}\nsealed_keys_ttl = 0.5\n[[clusters]]\nname = "local"\ntransport = "local"\nmode = "mux"\n'
        f"gate_command = {json.dumps(gate)}\n"
        f'[[api_keys]]\nuser = "sealer"\nkey_id = "sealed-test"\nsha256 = "{hashlib.sha256(KEY.encode()).hexdigest()}"\n'
        "[access]\nunsafe_allow_all = true\n"
    )
    log = directory / "appliance.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "appliance.cli", "serve", "--config", str(appliance)],
            cwd=ROOT,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    served = Served(f"http://127.0.0.1:{port}/v1", config, directory, process, log)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx2.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                break
        except httpx2.HTTPError:
            pass
        time.sleep(0.1)
    try:
        yield served
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)


def _inner(document: dict[str, object], path: bytes = b"/v1/chat/completions") -> Request:
    return Request(b"POST", b"https", b"sluice", path, ((b"content-type", b"application/json"),), json.dumps(document).encode())


CHAT = {"model": "standin-chat", "messages": [{"role": "user", "content": "a sealed hello"}], "max_tokens": 6}


def test_round_trip_plain(served: Served) -> None:
    body, opener = seal_request(served.keys(), _inner(CHAT))
    response = served.post("chat/completions", body)
    assert response.status_code == 200 and response.headers["content-type"] == "message/ohttp-res"
    inner = decode_response(opener.open(response.content))
    assert inner.status == 200
    answer = json.loads(inner.content)
    assert answer["usage"]["completion_tokens"] == 6 and answer["choices"][0]["message"]["content"]


def test_round_trip_embeddings(served: Served) -> None:
    body, opener = seal_request(served.keys(), _inner({"model": "standin-embed", "input": ["x", "y"]}, b"/v1/embeddings"))
    response = served.post("embeddings", body, model="standin-embed")
    assert len(json.loads(decode_response(opener.open(response.content)).content)["data"]) == 2


def _open_stream(response: httpx2.Response, opener: object) -> bytes:
    decoder = ResponseStreamDecoder()
    data = b""
    for chunk in response.iter_bytes():
        for plain in opener.feed(chunk):  # type: ignore[attr-defined]
            for event in decoder.feed(plain):
                data += getattr(event, "data", b"") or b""
    opener.finish()  # type: ignore[attr-defined]
    return data


def test_round_trip_streaming(served: Served) -> None:
    body, opener = seal_streaming_request(served.keys(), _inner({**CHAT, "stream": True, "max_tokens": 9}))
    with httpx2.stream(
        "POST",
        f"{served.base}/sealed/chat/completions",
        content=body,
        timeout=30,
        headers={
            "Authorization": f"Bearer {KEY}",
            "Sluice-Model": "standin-chat",
            "Content-Type": "message/ohttp-chunked-req",
        },
    ) as response:
        assert response.headers["content-type"] == "message/ohttp-chunked-res"
        text = _open_stream(response, opener).decode()
    words = [json.loads(e[6:])["choices"][0]["delta"].get("content") for e in text.split("\n\n") if e.startswith("data: {")]
    assert len([w for w in words if w]) == 9 and text.endswith("data: [DONE]\n\n")


def test_content_errors_come_back_sealed(served: Served) -> None:
    """A body outside the route policy is answered inside the seal: the appliance sees a 200."""
    body, opener = seal_request(served.keys(), _inner({**CHAT, "not_a_field": 1}))
    response = served.post("chat/completions", body)
    assert response.status_code == 200
    inner = decode_response(opener.open(response.content))
    assert inner.status == 422 and json.loads(inner.content)["error"]["code"] == "unknown_field"


def test_reject_flipped_request_bytes(served: Served, cluster: Cluster) -> None:
    config = served.keys()
    before = cluster.chat.stats()["served"]
    body, _ = seal_request(config, _inner(CHAT))
    for position in range(0, len(body), max(1, len(body) // 40)):
        flipped = bytearray(body)
        flipped[position] ^= 0x01
        response = served.post("chat/completions", bytes(flipped))
        assert response.status_code == 400 and response.json()["error"]["code"] == "sealed_invalid", position
    assert cluster.chat.stats()["served"] == before, "a tampered request reached the model server"


def test_flipped_response_bytes_fail_closed(served: Served) -> None:
    body, opener = seal_request(served.keys(), _inner(CHAT))
    sealed = served.post("chat/completions", body).content
    for position in range(0, len(sealed), max(1, len(sealed) // 40)):
        flipped = bytearray(sealed)
        flipped[position] ^= 0x80
        with pytest.raises(SealError):
            opener.open(bytes(flipped))


def test_reject_replay(served: Served) -> None:
    body, _ = seal_request(served.keys(), _inner(CHAT))
    assert served.post("chat/completions", body).status_code == 200
    again = served.post("chat/completions", body)
    assert again.status_code == 400 and again.json()["error"]["code"] == "sealed_invalid"


def test_reject_unknown_key_id(served: Served) -> None:
    config = served.keys()
    unknown = KeyConfig((config.key_id + 7) % 256, config.kem_id, config.public_key, config.symmetric)
    body, _ = seal_request(unknown, _inner(CHAT))
    assert served.post("chat/completions", body).json()["error"]["code"] == "sealed_invalid"


def test_reject_inner_route_or_model_mismatch(served: Served) -> None:
    config = served.keys()
    body, _ = seal_request(config, _inner({"model": "standin-chat", "input": "x"}, b"/v1/embeddings"))
    assert served.post("chat/completions", body).json()["error"]["code"] == "sealed_route_mismatch"
    body, _ = seal_request(config, _inner({**CHAT, "model": "standin-embed"}))
    assert served.post("chat/completions", body).json()["error"]["code"] == "model_mismatch"
    assert served.post("chat/completions", b"x", model="../etc/passwd").json()["error"]["code"] == "invalid_model_header"
    assert served.post("chat/completions", b"x", model="").json()["error"]["code"] == "invalid_model_header"


def test_rotation_overlap_then_retired_key_refused(served: Served) -> None:
    old = served.keys()
    _cluster_cli("keys", "rotate", "--config", str(served.config), "--overlap", "4")
    time.sleep(1.2)  # a gate looks for a rotated ring once a second
    new = served.keys()
    assert new.key_id != old.key_id and new.public_key != old.public_key
    # Within the overlap window both keys are accepted ...
    for config in (old, new):
        body, opener = seal_request(config, _inner(CHAT))
        response = served.post("chat/completions", body)
        assert response.status_code == 200, response.text
        assert decode_response(opener.open(response.content)).status == 200
    # ... after it, the retired key is refused and the new one still works.
    time.sleep(4.0)
    body, _ = seal_request(old, _inner(CHAT))
    assert served.post("chat/completions", body).json()["error"]["code"] == "sealed_invalid"
    body, opener = seal_request(new, _inner(CHAT))
    assert decode_response(opener.open(served.post("chat/completions", body).content)).status == 200


def test_canary_nowhere_in_what_the_appliance_wrote_nor_in_its_memory(served: Served) -> None:
    canary = "sealed-canary-" + os.urandom(8).hex()
    config = served.keys()
    for stream in (False, True):
        document = {**CHAT, "messages": [{"role": "user", "content": f"{canary} please"}], "user": canary, "stream": stream}
        if stream:
            body, opener = seal_streaming_request(config, _inner(document))
            with httpx2.stream(
                "POST",
                f"{served.base}/sealed/chat/completions",
                content=body,
                timeout=30,
                headers={
                    "Authorization": f"Bearer {KEY}",
                    "Sluice-Model": "standin-chat",
                    "Content-Type": "message/ohttp-chunked-req",
                },
            ) as response:
                _open_stream(response, opener)
        else:
            body, opener = seal_request(config, _inner(document))
            decode_response(opener.open(served.post("chat/completions", body).content))
    needles = [canary.encode(), canary.encode("utf-16-le"), base64.b64encode(canary.encode())[:20]]
    # What the appliance wrote: its log, and anything in its working directory.
    for path in served.directory.rglob("*"):
        if path.is_file() and "sealed-keys" not in path.parts:
            data = path.read_bytes()
            assert not any(n in data for n in needles), f"canary in {path}"
    # Its memory.
    hits = sum(region.count(needle) for region in process_memory(served.process.pid) for needle in needles)
    assert hits == 0, "the canary is in the appliance's memory"


def test_appliance_never_imports_the_opening_code() -> None:
    probe = (
        "import sys, appliance.app, appliance.serve, appliance.demo, appliance.cli, appliance.transport.ssh, "
        "appliance.transport.local, appliance.api.openai;"
        "print(' '.join(m for m in sys.modules if m.startswith(('sluice_sdk', 'cluster.gate', 'cluster.sealed_keys', 'pyhpke'))))"
    )
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    # The one Secret class lives in the SDK (which imports nothing of Sluice's): the appliance may load it
    # and the SDK's errors with it, and nothing else of the SDK, the gate or the HPKE library.
    assert set(done.stdout.split()) <= {"sluice_sdk", "sluice_sdk.errors", "sluice_sdk.secret"}, done.stdout


def test_round_trip_responses_and_rerank(served: Served) -> None:
    document = {"model": "standin-chat", "input": "a sealed hello", "max_output_tokens": 5}
    body, opener = seal_request(served.keys(), _inner(document, b"/v1/responses"))
    inner = decode_response(opener.open(served.post("responses", body).content))
    assert inner.status == 200 and json.loads(inner.content)["usage"]["output_tokens"] == 5
    body, opener = seal_request(served.keys(), _inner({**document, "store": True}, b"/v1/responses"))
    inner = decode_response(opener.open(served.post("responses", body).content))
    assert inner.status == 422 and json.loads(inner.content)["error"]["code"] == "store_not_supported"
    rerank = {"model": "standin-embed", "query": "q", "documents": ["a", "b"]}
    body, opener = seal_request(served.keys(), _inner(rerank, b"/v1/rerank"))
    inner = decode_response(opener.open(served.post("rerank", body, model="standin-embed").content))
    assert inner.status == 200 and len(json.loads(inner.content)["results"]) == 2


def test_round_trip_audio_form(served: Served) -> None:
    """A multipart form sealed whole: the gate takes its boundary from the sealed Content-Type."""
    from tests.audio_files import wav

    form = httpx2.Request("POST", "http://x/", files={"file": ("a.wav", wav(2.0))}, data={"model": "standin-chat"})
    content, media = form.read(), form.headers["content-type"].encode()

    def sealed(content_type: bytes, data: bytes) -> tuple[int, bytes]:
        request = Request(b"POST", b"https", b"sluice", b"/v1/audio/transcriptions", ((b"content-type", content_type),), data)
        body, opener = seal_request(served.keys(), request)
        response = served.post("audio/transcriptions", body)
        assert response.status_code == 200  # whatever the content, the appliance sees a sealed 200
        inner = decode_response(opener.open(response.content))
        return inner.status, inner.content

    status, answer = sealed(media, content)
    assert status == 200 and len(json.loads(answer)["text"].split()) == 5
    # A lying boundary and bytes that are not audio are refused inside the seal.
    status, answer = sealed(media.replace(b"boundary=", b"boundary=x"), content)
    assert status == 400 and json.loads(answer)["error"]["code"] == "bad_boundary"
    status, answer = sealed(media, content.replace(b"RIFF", b"JUNK"))
    assert status == 400 and json.loads(answer)["error"]["code"] == "not_audio"
