"""The appliance's HTTP edges, spoken to with raw sockets: deadlines, caps, methods, protocols, origins.

One `sluice serve` (local gate, mux) with short deadlines; every test talks
to it the way a hostile or broken client would.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import httpx2
import pytest

from tests.conftest import Cluster, free_port
from tests.services.serve import Served, api_keys_toml, local_cluster_toml, start_serve

pytestmark = pytest.mark.integration

KEY = "sk-edges-" + "e" * 24
HEADER_TIMEOUT = 2
BODY_TIMEOUT = 2
MAX_CONNECTIONS = 16
CHAT = b'{"model":"standin-chat","messages":[{"role":"user","content":"hi"}],"max_tokens":2}'


@pytest.fixture(scope="module")
def served(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    directory = tmp_path_factory.mktemp("edges")
    body = local_cluster_toml(cluster.gate_argv()) + api_keys_toml({KEY: ("edge", "edge")}) + '[logging]\nlevel = "info"\n'
    server = f"header_timeout = {HEADER_TIMEOUT}\nbody_timeout = {BODY_TIMEOUT}\nmax_connections = {MAX_CONNECTIONS}\n"
    running = start_serve(directory, "edges", free_port(), body, server=server)
    try:
        deadline = time.monotonic() + 30
        while httpx2.get(f"{running.url}/readyz", timeout=10).status_code != 200:
            assert time.monotonic() < deadline, "not ready"
            time.sleep(0.2)
        yield running
    finally:
        running.stop()


def _connect(served: Served) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", served.port), timeout=10)
    return sock


def _exchange(served: Served, data: bytes, wait: float = 10) -> bytes:
    """Send ``data``, then read until the server closes or ``wait`` passes."""
    with _connect(served) as sock:
        sock.settimeout(wait)
        sock.sendall(data)
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
                if b"\r\n\r\n" in received and _complete(received):
                    break
        except (TimeoutError, ConnectionResetError):
            pass
        return received


def _complete(data: bytes) -> bool:
    head, _, body = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":")[1])
    return False


def _status(data: bytes) -> int:
    return int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else 0


def _post(path: str, body: bytes, extra: str = "", content_type: str = "application/json") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {KEY}\r\n"
        f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
    ).encode() + body


def _no_internal_errors(served: Served) -> None:
    for line in served.log_lines():
        assert "internal_error" not in line and "Traceback" not in line, line
        if line.startswith("{"):
            event = json.loads(line)
            assert not (event.get("event") == "request" and int(event.get("status", 0)) >= 500), line


def test_plain_request_still_works(served: Served) -> None:
    reply = _exchange(served, _post("/v1/chat/completions", CHAT))
    assert _status(reply) == 200, reply[:200]


# --- finding 20: slashes, methods, HTTP/2 cleartext ---------------------------------------------


def test_reject_trailing_slash_redirect(served: Served) -> None:
    for path in ("/v1/models/", "/healthz/", "/account"):
        reply = _exchange(served, f"GET {path} HTTP/1.1\r\nHost: evil.example\r\n\r\n".encode())
        assert _status(reply) == 404, reply[:200]
        assert b"evil.example" not in reply and b"location:" not in reply.lower()


@pytest.mark.parametrize("method", ["get", "Get", "pOST"])
def test_reject_method_not_exactly_registered(served: Served, method: str) -> None:
    reply = _exchange(served, f"{method} /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    assert _status(reply) == 405, reply[:200]


def test_reject_h2c_upgrade(served: Served) -> None:
    reply = _exchange(
        served,
        b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade, HTTP2-Settings\r\n"
        b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
    )
    assert _status(reply) == 400, reply[:200]
    assert b"101" not in reply.split(b"\r\n", 1)[0]


def test_reject_h2_prior_knowledge(served: Served) -> None:
    reply = _exchange(served, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes.fromhex("000000040000000000"))
    # Either an HTTP/1.1 400 or a closed connection; never an HTTP/2 SETTINGS frame.
    assert reply == b"" or _status(reply) == 400, reply[:200]


# --- finding 19: content types and origins -------------------------------------------------------


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; b=x"])
def test_reject_non_json_content_type(served: Served, content_type: str) -> None:
    reply = _exchange(served, _post("/v1/chat/completions", CHAT, content_type=content_type))
    assert _status(reply) == 415 and b"unsupported_media_type" in reply, reply[:200]


def test_reject_json_on_a_sealed_route(served: Served) -> None:
    reply = _exchange(served, _post("/v1/sealed/chat/completions", CHAT, "Sluice-Model: standin-chat\r\n"))
    assert _status(reply) == 415, reply[:200]


@pytest.mark.parametrize("origin", ["https://evil.example", "null", "http://127.0.0.1.evil.example"])
def test_reject_foreign_origin(served: Served, origin: str) -> None:
    reply = _exchange(served, _post("/v1/chat/completions", CHAT, f"Origin: {origin}\r\n"))
    assert _status(reply) == 403 and b"foreign_origin" in reply, reply[:200]


def test_same_origin_json_passes(served: Served) -> None:
    """What the web chat sends: JSON with its own origin."""
    request = _post("/v1/chat/completions", CHAT, "").replace(
        b"Host: 127.0.0.1\r\n", f"Host: 127.0.0.1:{served.port}\r\n".encode()
    )
    request = request.replace(b"\r\n\r\n", f"\r\nOrigin: http://127.0.0.1:{served.port}\r\n\r\n".encode(), 1)
    assert _status(_exchange(served, request)) == 200


# --- finding 7: deadlines and the connection cap -------------------------------------------------


def test_reject_slow_headers(served: Served) -> None:
    with _connect(served) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        started = time.monotonic()
        sock.settimeout(HEADER_TIMEOUT + 10)
        while sock.recv(65536):
            pass
        assert time.monotonic() - started < HEADER_TIMEOUT + 5


def test_reject_slow_body(served: Served) -> None:
    with _connect(served) as sock:
        sock.sendall(_post("/v1/chat/completions", CHAT)[: -len(CHAT) + 5])
        sock.settimeout(BODY_TIMEOUT + 10)
        started = time.monotonic()
        received = b""
        for _ in range(BODY_TIMEOUT * 4):  # a byte every so often: never done, never quite idle
            try:
                sock.sendall(b" ")
            except OSError:
                break
            time.sleep(0.25)
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except (TimeoutError, ConnectionResetError):
            pass
        assert _status(received) == 408 and b"body_timeout" in received, received[:200]
        assert time.monotonic() - started < BODY_TIMEOUT + 5
    _no_internal_errors(served)


def test_reject_connections_over_the_cap(served: Served) -> None:
    held = [_connect(served) for _ in range(MAX_CONNECTIONS)]
    try:
        time.sleep(0.3)
        reply = _exchange(served, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", wait=5)
        assert _status(reply) == 503 and b"too_many_connections" in reply, reply[:200]
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.5)
    assert _status(_exchange(served, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")) == 200


# --- finding 8: a body cut off is the client's fault ---------------------------------------------


def test_reject_body_cut_by_disconnect(served: Served) -> None:
    with _connect(served) as sock:
        sock.sendall(_post("/v1/chat/completions", CHAT)[:-20])
        time.sleep(0.3)
    time.sleep(0.5)
    _no_internal_errors(served)


def test_reject_malformed_chunking(served: Served) -> None:
    request = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {KEY}\r\n"
        'Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{"mod\r\nzz-not-hex\r\n'
    ).encode()
    reply = _exchange(served, request)
    assert reply == b"" or 400 <= _status(reply) < 500, reply[:200]
    time.sleep(0.5)
    _no_internal_errors(served)


# --- finding 18: readiness tells no model names --------------------------------------------------


def test_reject_model_names_on_readyz(served: Served) -> None:
    ready = httpx2.get(f"{served.url}/readyz")
    assert ready.status_code == 200 and ready.json() == {"status": "ready", "ready_models": 2}
    assert "standin" not in ready.text


# --- finding 9: the public key route is cached and limited per address ------------------------------


def test_reject_unlimited_key_configuration_calls(served: Served) -> None:
    from appliance.api.sealed_keys import PER_ADDRESS

    with httpx2.Client(base_url=served.url, timeout=10) as client:
        statuses = [client.get("/v1/sealed/keys").status_code for _ in range(PER_ADDRESS + 1)]
    assert 429 not in statuses[:PER_ADDRESS] and statuses[-1] == 429
