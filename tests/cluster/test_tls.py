"""Per-job mutual TLS: a job accepts the gate (and its own key) alone, on every path.

The stand-in model server is started as the job templates start vLLM
(``--ssl-keyfile --ssl-certfile --ssl-ca-certs --ssl-cert-reqs 2``).  A client
without the gate's certificate -- with the job's bearer token, with a
certificate of its own, or with none -- gets no byte of HTTP on any path
(vLLM's API key covers only ``/v1``); the gate's pool gets answers, and only
from the server whose certificate has the pin it was given.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from cluster.backend_client import RECEIVE_BUFFER, BackendPool
from cluster.standin import StandinProcess
from cluster.standin._model import natural_length, reply_words
from cluster.tls import (
    GateIdentity,
    JobIdentity,
    TlsError,
    client_context,
    gate_identity,
    init_gate_identity,
    make_job_identity,
    remove_job_identity,
)
from policy.errors import BackendFailed
from policy.loop import run_event_loop

MODEL = "tls-chat"
# Paths of a vLLM server beside /v1 (and the stand-in's own): each must be closed to strangers.
PATHS = ("/health", "/metrics", "/tokenize", "/invocations", "/stats", "/v1/models", "/ping", "/version")


@pytest.fixture(scope="module")
def tls_job(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GateIdentity, JobIdentity, StandinProcess, str]]:
    base = tmp_path_factory.mktemp("tls")
    gate, made = init_gate_identity(base / "gate-tls")
    assert made
    job = make_job_identity(base / "job-1", gate.cert, "sluice-job")
    token = secrets.token_urlsafe(32)
    with StandinProcess(model=MODEL, kind="chat", token=token, tls=(job.key, job.cert, job.clients)) as server:
        yield gate, job, server, token


def _raw_exchange(port: int, context: ssl.SSLContext | None, request: bytes) -> bytes:
    """Everything a client gets back for ``request`` (TLS or plain), errors as no bytes."""
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        stream = raw
        try:
            if context is not None:
                stream = context.wrap_socket(raw)
            stream.sendall(request)
            while True:
                piece = stream.recv(65536)
                if not piece:
                    break
                received += piece
        except (ssl.SSLError, ConnectionError, TimeoutError):
            pass
        finally:
            stream.close()
    return received


def _stranger_context(certificate: GateIdentity | None = None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if certificate is not None:
        context.load_cert_chain(certificate.cert, certificate.key)
    return context


def _get(path: str, token: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n".encode()


async def _pool_get(
    context: ssl.SSLContext | None, port: int, pin: str | None, token: str | None, path: str
) -> tuple[int, bytes]:
    pool = BackendPool(tls=context)
    try:
        response = await pool.request("127.0.0.1", port, token, "GET", path, b"", 10, pin=pin)
        try:
            return response.status, await response.read(1 << 20)
        finally:
            response.close()
    finally:
        await pool.aclose()


def test_the_gate_is_served_on_every_path(tls_job: tuple[GateIdentity, JobIdentity, StandinProcess, str]) -> None:
    gate, job, server, token = tls_job
    context = client_context(gate)
    status, body = asyncio.run(_pool_get(context, server.port, job.pin, token, "/v1/models"))
    assert status == 200 and json.loads(body)["data"][0]["id"] == MODEL
    status, _ = asyncio.run(_pool_get(context, server.port, job.pin, token, "/health"))
    assert status == 200
    # the token still counts (defense in depth): the gate's certificate alone does not open /v1
    status, _ = asyncio.run(_pool_get(context, server.port, job.pin, "wrong", "/v1/models"))
    assert status == 401


def test_the_scheduler_probes_with_the_jobs_own_key(tls_job: tuple[GateIdentity, JobIdentity, StandinProcess, str]) -> None:
    _, job, server, _ = tls_job
    status, _ = asyncio.run(_pool_get(client_context(job), server.port, job.pin, None, "/health"))
    assert status == 200


@pytest.mark.parametrize("path", PATHS)
def test_reject_clients_without_the_gates_certificate_on_every_path(
    tls_job: tuple[GateIdentity, JobIdentity, StandinProcess, str], path: str, tmp_path: Path
) -> None:
    _, _, server, token = tls_job
    own, _ = init_gate_identity(tmp_path / "stranger")  # a valid certificate, just not the gate's
    for context in (None, _stranger_context(), _stranger_context(own)):
        answer = _raw_exchange(server.port, context, _get(path, token))
        assert b"HTTP/" not in answer and b"tls-chat" not in answer, (path, context)


def test_reject_a_server_whose_certificate_has_another_pin(
    tls_job: tuple[GateIdentity, JobIdentity, StandinProcess, str], tmp_path: Path
) -> None:
    gate, _, server, token = tls_job
    impostor = make_job_identity(tmp_path / "impostor", gate.cert, "sluice-job")
    with pytest.raises(BackendFailed):
        asyncio.run(_pool_get(client_context(gate), server.port, impostor.pin, token, "/v1/models"))


def test_reject_a_tls_backend_without_an_identity(tls_job: tuple[GateIdentity, JobIdentity, StandinProcess, str]) -> None:
    _, job, server, token = tls_job
    with pytest.raises(BackendFailed):
        asyncio.run(_pool_get(None, server.port, job.pin, token, "/v1/models"))


def test_reject_a_gate_key_others_can_read(tmp_path: Path) -> None:
    identity, _ = init_gate_identity(tmp_path / "gate-tls")
    assert gate_identity(tmp_path / "gate-tls") == identity
    assert identity.key.stat().st_mode & 0o777 == 0o600 and identity.cert.stat().st_mode & 0o777 == 0o644
    identity.key.chmod(0o640)
    with pytest.raises(TlsError, match="chmod 600"):
        gate_identity(tmp_path / "gate-tls")
    with pytest.raises(TlsError, match="tls init"):
        gate_identity(tmp_path / "missing")


def test_init_keeps_an_existing_identity(tmp_path: Path) -> None:
    first, made = init_gate_identity(tmp_path / "gate-tls")
    key = first.key.read_bytes()
    again, made_again = init_gate_identity(tmp_path / "gate-tls")
    assert made and not made_again and again.key.read_bytes() == key


def test_job_identity_files_are_private_and_removed(tmp_path: Path) -> None:
    gate, _ = init_gate_identity(tmp_path / "gate-tls")
    job = make_job_identity(tmp_path / "job", gate.cert, "sluice-job")
    assert job.directory.stat().st_mode & 0o777 == 0o700
    for path in (job.key, job.cert, job.clients):
        assert path.stat().st_mode & 0o777 == 0o600
    assert job.clients.read_bytes().count(b"BEGIN CERTIFICATE") == 2
    remove_job_identity(job.directory)
    assert not job.directory.exists()
    with pytest.raises(TlsError, match="tls init"):
        make_job_identity(tmp_path / "job2", tmp_path / "nope.crt", "sluice-job")
    assert not (tmp_path / "job2").exists()


async def _pool_chat(context: ssl.SSLContext, port: int, pin: str, token: str, body: bytes) -> bytes:
    pool = BackendPool(tls=context)
    try:
        response = await pool.request("127.0.0.1", port, token, "POST", "/v1/chat/completions", body, 30, pin=pin)
        try:
            assert response.status == 200
            return await response.read(16 << 20)
        finally:
            response.close()
    finally:
        await pool.aclose()


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
@pytest.mark.parametrize("stream", [False, True])
def test_answers_larger_than_the_receive_buffer_arrive_whole(
    tls_job: tuple[GateIdentity, JobIdentity, StandinProcess, str], loop: str, stream: bool
) -> None:
    # The connection reads into a buffer of its own (RECEIVE_BUFFER): an answer of several
    # buffers and TLS records, whole or chunked, must come through byte for byte.
    gate, job, server, token = tls_job
    prompt = next(f"a long story {i}" for i in range(10_000) if natural_length(f"a long story {i}") >= 3000)
    words, _ = reply_words(prompt, 3000)
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": prompt}], "max_tokens": 3000, "stream": stream})
    run = asyncio.run if loop == "asyncio" else run_event_loop
    data = run(_pool_chat(client_context(gate), server.port, job.pin, token, body.encode()))
    assert len(data) > RECEIVE_BUFFER
    if stream:
        events = [e.removeprefix(b"data: ") for e in data.split(b"\n\n") if e.startswith(b"data: {")]
        text = "".join(json.loads(e)["choices"][0]["delta"].get("content") or "" for e in events if json.loads(e)["choices"])
    else:
        text = json.loads(data)["choices"][0]["message"]["content"]
    assert text.split() == words
