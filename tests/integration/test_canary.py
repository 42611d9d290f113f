"""The canary: nothing a user writes is ever kept by the appliance or the gate.

A unique canary string goes through every route and mode: chat, completions,
embeddings, responses (stateless), rerank, score and audio transcription and
translation (the canary in the form's fields, its file name and inside the
audio bytes), plain and streamed, sealed (end-to-end encrypted, through
the demo's gate keys), a stream abandoned half-way, and every
kind of error (fields, values, bodies that are not JSON, too large, unknown
models, bad keys, unknown paths, query strings, headers, a quota refusal),
through the local pipe (the demo, mux and exec) and over real SSH (mux and
exec).  Then every file the appliance and the gate wrote -- their logs (stdout
and stderr kept in files), the accounting database with its -wal and -shm
files, their working and temporary directories, the gate's configuration
directory and home, sshd's log, anything else under /tmp, /var/tmp and
/dev/shm written since the test began -- and the quota store in Redis are
searched for the canary: zero hits.
"""

from __future__ import annotations

import json
import os
import pwd
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import httpx2
import pytest

from tests.conftest import ROOT, Cluster, free_port
from tests.services.redis import RedisServer
from tests.services.serve import Served, api_keys_toml, start_serve, toml_string
from tests.services.sshd import USER, Sshd

pytestmark = pytest.mark.integration

KEY = "sk-canary-" + "c" * 24
LIMITED = "sk-canary-limited-" + "l" * 20
METRICS_TOKEN = "metrics-canary-" + "m" * 24

# Files larger than this are not logs, databases or temporary files of ours (and are skipped).
MAX_SCANNED = 256 * 1024 * 1024

STARTED = time.time()


def new_canary() -> str:
    return "cnry" + secrets.token_hex(12)


# -- what every mode gets: the canary in every place a client can put it ---------------------


def send_everything(base: str, key: str, canary: str, limited_key: str | None = None) -> tuple[dict[str, int], str]:
    """Every route and mode, and every kind of error, each carrying ``canary``.

    Returns the status of each, and the request id of the first chat request.
    """
    seen: dict[str, int] = {}
    auth = {
        "Authorization": f"Bearer {key}",
        "User-Agent": canary,
        "X-Request-Id": canary,
        "X-Forwarded-For": canary,
        "Cookie": f"session={canary}",
    }
    chat = {
        "model": "standin-chat",
        "max_tokens": 8,
        "user": canary,
        "stop": [canary],
        "messages": [{"role": "system", "content": f"system {canary}"}, {"role": "user", "content": f"say {canary}"}],
    }
    with httpx2.Client(base_url=base, headers=auth, timeout=60) as client:
        first = client.post("/v1/chat/completions", json=chat)
        seen["chat"], request_id = first.status_code, first.headers["x-request-id"]
        with client.stream("POST", "/v1/chat/completions", json={**chat, "stream": True}) as stream:
            seen["chat_stream"] = stream.status_code
            assert "[DONE]" in "".join(stream.iter_text())
        with client.stream(
            "POST",
            "/v1/chat/completions",
            json={**chat, "stream": True, "max_tokens": 2000, "stream_options": {"include_usage": True}},
        ) as stream:
            seen["chat_stream_abandoned"] = stream.status_code
            next(stream.iter_bytes())  # then go away mid-answer
        completion = {"model": "standin-chat", "prompt": f"complete {canary}", "max_tokens": 6, "user": canary}
        seen["completions"] = client.post("/v1/completions", json=completion).status_code
        with client.stream("POST", "/v1/completions", json={**completion, "stream": True}) as stream:
            seen["completions_stream"] = stream.status_code
            "".join(stream.iter_text())
        seen["embeddings"] = client.post(
            "/v1/embeddings", json={"model": "standin-embed", "input": [canary, f"two {canary}"]}
        ).status_code
        seen.update(send_new_routes(client, canary))
        seen["models"] = client.get(f"/v1/models?{canary}={canary}").status_code
        # Errors, each with the canary where a careless gateway would echo or log it.
        seen["unknown_field"] = client.post("/v1/chat/completions", json={**chat, canary: canary}).status_code
        seen["bad_value"] = client.post(
            "/v1/chat/completions", json={**chat, "messages": [{"role": canary, "content": canary}]}
        ).status_code
        seen["wrong_type"] = client.post("/v1/chat/completions", json={**chat, "max_tokens": canary}).status_code
        seen["not_json"] = client.post(
            "/v1/chat/completions",
            content=f'{{"model": "standin-chat", "{canary}'.encode(),
            headers={"Content-Type": "application/json"},
        ).status_code
        seen["unknown_model"] = client.post("/v1/chat/completions", json={**chat, "model": canary}).status_code
        # Refused on its Content-Length: the server may answer and close before the upload ends,
        # so this one has a connection of its own.
        try:
            seen["too_large"] = httpx2.post(
                f"{base}/v1/embeddings",
                headers={**auth, "Content-Type": "application/json"},
                content=(canary * (5 * 2**20 // len(canary))).encode(),
                timeout=60,
            ).status_code
        except httpx2.RemoteProtocolError:
            seen["too_large"] = 413
        seen["unknown_path"] = client.post(f"/v1/{canary}?{canary}=1", json=chat).status_code
        seen["wrong_method"] = client.get(f"/v1/chat/completions?q={canary}").status_code
        seen["bad_key"] = client.post(
            "/v1/chat/completions", json=chat, headers={"Authorization": f"Bearer sk-{canary}-{canary}"}
        ).status_code
        seen["bad_metrics_token"] = client.get("/metrics", headers={"Authorization": f"Bearer {canary}"}).status_code
        if limited_key is not None:  # a quota refusal of a request full of the canary
            statuses = [
                client.post("/v1/chat/completions", json=chat, headers={"Authorization": f"Bearer {limited_key}"}).status_code
                for _ in range(3)
            ]
            seen["quota_refused"] = statuses[-1]
    return seen, request_id


def canary_wav(canary: str) -> bytes:
    """A WAV of silence with the canary's bytes in its samples: the audio itself carries it."""
    from tests.audio_files import wav

    return wav(1.0) + canary.encode() * 4


def send_new_routes(client: httpx2.Client, canary: str) -> dict[str, int]:
    """Responses, rerank, score and audio, each carrying the canary, and their refusals."""
    seen: dict[str, int] = {}
    responses = {
        "model": "standin-chat",
        "instructions": f"be {canary}",
        "user": canary,
        "max_output_tokens": 8,
        "input": [{"role": "user", "content": f"say {canary}"}],
    }
    seen["responses"] = client.post("/v1/responses", json=responses).status_code
    with client.stream("POST", "/v1/responses", json={**responses, "stream": True}) as stream:
        seen["responses_stream"] = stream.status_code
        assert "response." in "".join(stream.iter_text())
    seen["responses_stateful"] = client.post("/v1/responses", json={**responses, "previous_response_id": canary}).status_code
    seen["rerank"] = client.post(
        "/v1/rerank", json={"model": "standin-embed", "query": canary, "documents": [canary, f"two {canary}"]}
    ).status_code
    seen["score"] = client.post(
        "/v1/score", json={"model": "standin-embed", "text_1": canary, "text_2": [f"x {canary}"]}
    ).status_code
    audio = canary_wav(canary)
    form = {"model": "standin-chat", "prompt": f"about {canary}", "response_format": "verbose_json"}
    files = {"file": (f"{canary}.wav", audio, "audio/wav")}
    seen["transcription"] = client.post("/v1/audio/transcriptions", data=form, files=files).status_code
    seen["translation"] = client.post("/v1/audio/translations", data=form, files=files).status_code
    with client.stream(
        "POST", "/v1/audio/transcriptions", data={**form, "stream": "true", "response_format": "json"}, files=files
    ) as stream:
        seen["transcription_stream"] = stream.status_code
        "".join(stream.iter_text())
    seen["audio_bad_filename"] = client.post(
        "/v1/audio/transcriptions", data=form, files={"file": (f"../{canary}.wav", audio)}
    ).status_code
    seen["audio_not_audio"] = client.post(
        "/v1/audio/transcriptions", data=form, files={"file": ("a.wav", canary.encode() * 10)}
    ).status_code
    return seen


def send_sealed(base: str, canary: str) -> None:
    """Sealed requests (the SDK, end to end encrypted to the gate), plain and streamed, with the canary."""
    from sluice_sdk import fetch_fingerprint, sealed_openai_client

    with sealed_openai_client(f"{base}/v1", KEY, fetch_fingerprint(f"{base}/v1")) as client:
        answer = client.chat.completions.create(
            model="standin-chat", max_tokens=6, user=canary, messages=[{"role": "user", "content": f"sealed {canary}"}]
        )
        assert answer.usage is not None
        chunks = list(
            client.chat.completions.create(
                model="standin-chat", max_tokens=6, stream=True, messages=[{"role": "user", "content": f"sealed {canary}"}]
            )
        )
        assert chunks
        assert len(client.embeddings.create(model="standin-embed", input=[f"sealed {canary}"]).data) == 1
        assert client.responses.create(model="standin-chat", input=f"sealed {canary}", max_output_tokens=6).output
        text = client.audio.transcriptions.create(
            model="standin-chat", file=(f"{canary}.wav", canary_wav(canary)), prompt=f"sealed {canary}"
        )
        assert text.text


EXPECTED = {
    "chat": 200,
    "chat_stream": 200,
    "chat_stream_abandoned": 200,
    "completions": 200,
    "completions_stream": 200,
    "embeddings": 200,
    "models": 200,
    "unknown_field": 422,
    "bad_value": 422,
    "wrong_type": 422,
    "not_json": 400,
    "unknown_model": 404,
    "too_large": 413,
    "unknown_path": 404,
    "wrong_method": 405,
    "bad_key": 401,
    "bad_metrics_token": 401,
    "responses": 200,
    "responses_stream": 200,
    "responses_stateful": 422,
    "rerank": 200,
    "score": 200,
    "transcription": 200,
    "translation": 200,
    "transcription_stream": 200,
    "audio_bad_filename": 400,
    "audio_not_audio": 400,
}


# -- the search ---------------------------------------------------------------------------------


def files_under(roots: Iterable[Path], since: float | None = None) -> Iterator[Path]:
    for root in roots:
        if root.is_file():
            yield root
            continue
        for directory, dirs, names in os.walk(root, onerror=lambda _: None):
            dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(directory, d))]
            for name in names:
                path = Path(directory) / name
                try:
                    info = path.lstat()
                except OSError:
                    continue
                if not path.is_file() or path.is_symlink() or info.st_size > MAX_SCANNED:
                    continue
                if since is not None and info.st_mtime < since:
                    continue
                yield path


def hits(canary: str, roots: Iterable[Path], since: float | None = None) -> tuple[list[str], int]:
    """Files under ``roots`` that contain ``canary`` (and how many files were searched)."""
    needle = canary.encode()
    found, searched = [], 0
    for path in files_under(roots, since):
        try:
            data = path.read_bytes()
        except OSError:
            continue
        searched += 1
        if needle in data:
            found.append(str(path))
    return found, searched


def temporary_roots() -> list[Path]:
    return [Path(p) for p in ("/tmp", "/var/tmp", "/dev/shm") if Path(p).is_dir()]


def redis_hits(redis: RedisServer, canary: str) -> list[str]:
    keys = redis.cli("--scan").split()
    found = [k for k in keys if canary in k]
    for key in keys:
        kind = redis.cli("TYPE", key)
        value = {
            "string": ("GET", key),
            "zset": ("ZRANGE", key, "0", "-1", "WITHSCORES"),
            "list": ("LRANGE", key, "0", "-1"),
        }.get(kind)
        if value and canary in redis.cli(*value):
            found.append(key)
    return found


# -- the local pipe: the demo, mux and exec ----------------------------------------------------


@pytest.mark.parametrize("mode", ["mux", "exec"])
def test_canary_through_the_demo(mode: str, tmp_path: Path) -> None:
    canary = new_canary()
    work = tmp_path / "demo"
    (work / "tmp").mkdir(parents=True)
    port = free_port()
    env = {**os.environ, "TMPDIR": str(work / "tmp"), "PYTHONDONTWRITEBYTECODE": "1"}
    stdout, stderr = work / "demo.stdout", work / "demo.stderr"
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
                mode,
                "--token-delay",
                "0.002",
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
        deadline = time.monotonic() + 90
        while "Sluice demo ready" not in stdout.read_text():
            assert process.poll() is None and time.monotonic() < deadline, stderr.read_text()[-3000:]
            time.sleep(0.1)
        seen, request_id = send_everything(f"http://127.0.0.1:{port}", KEY, canary)
        assert seen == EXPECTED
        send_sealed(f"http://127.0.0.1:{port}", canary)
        token = next(line.split("Bearer ")[1].split("'")[0] for line in stdout.read_text().splitlines() if "metrics:" in line)
        metrics = httpx2.get(f"http://127.0.0.1:{port}/metrics", headers={"Authorization": f"Bearer {token}"})
        assert metrics.status_code == 200 and canary not in metrics.text
        # While it runs: its runtime directory (accounting database, -wal and -shm, the gate's
        # configuration and routing table, the scheduler's state) is in TMPDIR.
        databases = list((work / "tmp").glob("sluice-demo-*/usage.db*"))
        assert {p.name for p in databases} >= {"usage.db", "usage.db-wal"}
        rows = json.loads(
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "appliance.cli",
                    "usage",
                    "--database",
                    str(databases[0].with_name("usage.db")),
                    "--format",
                    "json",
                ],
                capture_output=True,
                text=True,
                cwd=ROOT,
                check=True,
            ).stdout
        )
        assert sum(r["requests"] for r in rows) >= 6
        found, searched = hits(canary, [work])
        assert searched >= 8 and found == [], found
        # The search sees what was written: the request's id is in its log line and its usage row.
        seen_id, _ = hits(request_id, [work])
        assert {Path(p).name for p in seen_id} >= {"demo.stderr"}
        assert any(Path(p).name.startswith("usage.db") for p in seen_id), seen_id
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
    found, searched = hits(canary, [work, *temporary_roots()], since=STARTED)
    assert found == [], found
    log = stderr.read_text()
    assert '"event":"request"' in log and '"status":422' in log  # the logs were there to search


# -- over SSH: `sluice serve`, mux and exec ------------------------------------------------------


@pytest.fixture(scope="module")
def sshd(cluster: Cluster) -> Iterator[Sshd]:
    toml = "\n".join(
        [
            "[gate]",
            'routing_table = "routing.json"',
            "request_timeout = 30",
            "[[backends]]",
            'model = "standin-chat"',
            f'url = "http://127.0.0.1:{cluster.chat.port}"',
            'routes = ["chat", "completions", "responses", "transcriptions", "translations"]',
            'token_file = "chat.token"',
            "[[backends]]",
            'model = "standin-embed"',
            f'url = "http://127.0.0.1:{cluster.embed.port}"',
            'routes = ["embeddings", "rerank", "score"]',
            'token_file = "embed.token"',
            "",
        ]
    )
    server = Sshd(toml, {"chat.token": cluster.chat.token, "embed.token": cluster.embed.token})
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    server = RedisServer()
    try:
        yield server
    finally:
        server.close()


def _serve_over_ssh(sshd: Sshd, redis: RedisServer, directory: Path, mode: str) -> Served:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "quotas.toml").write_text('[users."limited"]\nrequests_per_minute = 2\n')
    (directory / "metrics.token").write_text(METRICS_TOKEN)
    body = "\n".join(
        [
            "[[clusters]]",
            'name = "hpc"',
            'transport = "ssh"',
            f'mode = "{mode}"',
            'host = "127.0.0.1"',
            f"port = {sshd.port}",
            f'user = "{USER}"',
            f"client_key = {toml_string(str(sshd.client_key))}",
            f"known_hosts = {toml_string(str(sshd.known_hosts))}",
            "connections = 2",
            "keepalive_interval = 1",
            api_keys_toml({KEY: ("canary-user", "canary-key"), LIMITED: ("limited", "limited-key")}),
            "[quotas]",
            'policy = "quotas.toml"',
            f'storage = "{redis.url}"',
            "[accounting]",
            'path = "usage.db"',
            "[metrics]",
            'token_file = "metrics.token"',
            "[logging]",
            'level = "debug"',
            "",
        ]
    )
    served = start_serve(directory, "appliance", free_port(), body)
    deadline = time.monotonic() + 20
    while httpx2.get(f"{served.url}/readyz", timeout=10).status_code != 200:
        assert time.monotonic() < deadline, "not ready"
        time.sleep(0.1)
    return served


@pytest.mark.parametrize("mode", ["mux", "exec"])
def test_canary_over_ssh(mode: str, sshd: Sshd, redis: RedisServer, tmp_path: Path) -> None:
    canary = new_canary()
    served = _serve_over_ssh(sshd, redis, tmp_path / "appliance", mode)
    try:
        seen, request_id = send_everything(served.url, KEY, canary, LIMITED)
        assert seen == {**EXPECTED, "quota_refused": 429}
        metrics = httpx2.get(f"{served.url}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
        assert metrics.status_code == 200 and canary not in metrics.text
        assert {p.name for p in served.directory.glob("usage.db*")} >= {"usage.db", "usage.db-wal"}
    finally:
        served.stop()
    gate_home = Path(pwd.getpwnam(USER).pw_dir)
    roots = [served.directory, sshd.dir, gate_home]
    found, searched = hits(canary, roots)
    assert searched >= 8 and found == [], found
    seen_id, _ = hits(request_id, roots)  # the search sees what was written
    assert {Path(p).name for p in seen_id} >= {"appliance.stderr"}
    assert any(Path(p).name.startswith("usage.db") for p in seen_id), seen_id
    found, _ = hits(canary, temporary_roots(), since=STARTED)
    assert found == [], found
    assert redis_hits(redis, canary) == []
    log = served.stderr.read_text()
    assert '"event":"request"' in log and '"status":429' in log
