"""The SSH transport against a real OpenSSH server, with the gate as the forced command.

The appliance runs as deployed (`sluice serve --config`), the gate runs under
sshd as a dedicated functional account, and the stand-in model servers stand
behind it.  The key must do nothing but run the gate.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncssh
import httpx2
import openai
import pytest

from cluster.authorized_key import authorized_key_line
from policy.frames import GATE_KINDS, FrameDecoder, Kind
from tests.conftest import ROOT, Cluster, free_port
from tests.services.sshd import USER, Sshd

pytestmark = pytest.mark.integration

KEY = "sk-ssh-test-" + "s" * 24


def _cluster_toml(cluster: Cluster) -> tuple[str, dict[str, str]]:
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
    return toml, {"chat.token": cluster.chat.token, "embed.token": cluster.embed.token}


@pytest.fixture(scope="module")
def sshd(cluster: Cluster) -> Iterator[Sshd]:
    toml, files = _cluster_toml(cluster)
    server = Sshd(toml, files)
    server.create_sealed_keys()
    try:
        yield server
    finally:
        server.stop()


@dataclass
class Appliance:
    url: str
    process: subprocess.Popen[bytes]
    clients: list[openai.OpenAI] = field(default_factory=list)

    def client(self) -> openai.OpenAI:
        client = openai.OpenAI(base_url=f"{self.url}/v1", api_key=KEY, max_retries=0, timeout=30)
        self.clients.append(client)
        return client

    def ready(self) -> httpx2.Response:
        return httpx2.get(f"{self.url}/readyz", timeout=10)


def start_appliance(
    sshd: Sshd, mode: str, known_hosts: Path | None = None, connections: int = 2, extra_toml: str = "", ping_timeout: float = 15
) -> Appliance:
    """`sluice serve` reaching ``sshd``'s gate; ``extra_toml`` is appended to its configuration
    (written to ``sshd.dir / "appliance-<port>.toml"``)."""
    port = free_port()
    config = sshd.dir / f"appliance-{port}.toml"
    config.write_text(
        "\n".join(
            [
                "[server]",
                f"port = {port}",
                "keepalive_interval = 1",
                "request_timeout = 30",
                "[[clusters]]",
                'name = "hpc"',
                'transport = "ssh"',
                f'mode = "{mode}"',
                'host = "127.0.0.1"',
                f"port = {sshd.port}",
                'user = "sluicegate"',
                f'client_key = "{sshd.client_key}"',
                f'known_hosts = "{known_hosts or sshd.known_hosts}"',
                f"connections = {connections}",
                "keepalive_interval = 1",
                "connect_timeout = 5",
                f"ping_timeout = {ping_timeout}",
                "[[api_keys]]",
                'user = "tester"',
                'key_id = "ssh-test"',
                f'sha256 = "{hashlib.sha256(KEY.encode()).hexdigest()}"',
                "[access]",
                "unsafe_allow_all = true",
                "",
            ]
        )
        + extra_toml
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "appliance.cli", "serve", "--config", str(config)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    appliance = Appliance(f"http://127.0.0.1:{port}", process)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx2.get(f"{appliance.url}/healthz", timeout=2)
            return appliance
        except httpx2.HTTPError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("sluice serve did not start")


def stop_appliance(appliance: Appliance) -> str:
    for client in appliance.clients:
        client.close()
    appliance.process.send_signal(signal.SIGTERM)
    _, stderr = appliance.process.communicate(timeout=30)
    return stderr.decode(errors="replace")


def wait_ready(appliance: Appliance, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if appliance.ready().status_code == 200:
            return
        time.sleep(0.1)
    raise AssertionError(f"not ready: {appliance.ready().text}")


@pytest.fixture(scope="module", params=["mux", "exec"])
def appliance(request: pytest.FixtureRequest, sshd: Sshd) -> Iterator[Appliance]:
    running = start_appliance(sshd, request.param)
    try:
        wait_ready(running)
        yield running
    finally:
        stop_appliance(running)


# -- the full path over real SSH ------------------------------------------------------


def test_full_path_plain_and_streaming(appliance: Appliance) -> None:
    client = appliance.client()
    assert {m.id for m in client.models.list()} == {"standin-chat", "standin-embed"}
    answer = client.chat.completions.create(
        model="standin-chat", messages=[{"role": "user", "content": "over ssh"}], max_tokens=6
    )
    assert answer.usage is not None and answer.usage.completion_tokens == 6
    pieces = [
        c.choices[0].delta.content or ""
        for c in client.chat.completions.create(
            model="standin-chat", messages=[{"role": "user", "content": "over ssh"}], max_tokens=6, stream=True
        )
        if c.choices
    ]
    assert "".join(pieces).split() == (answer.choices[0].message.content or "").split()
    assert len(client.embeddings.create(model="standin-embed", input=["a", "b"]).data) == 2
    assert client.completions.create(model="standin-chat", prompt="x", max_tokens=3).usage.completion_tokens == 3  # type: ignore[union-attr]


def test_concurrent_over_ssh(appliance: Appliance) -> None:
    from concurrent.futures import ThreadPoolExecutor

    client = appliance.client()

    def one(i: int) -> int:
        answer = client.chat.completions.create(
            model="standin-chat", messages=[{"role": "user", "content": f"n {i}"}], max_tokens=3
        )
        return answer.usage.completion_tokens if answer.usage else -1

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(one, range(40))) == [3] * 40


def test_health_and_readiness_differ(appliance: Appliance) -> None:
    assert httpx2.get(f"{appliance.url}/healthz").status_code == 200
    ready = appliance.ready()
    assert ready.status_code == 200 and ready.json() == {"status": "ready", "ready_models": 2}


# -- what the key cannot do -----------------------------------------------------------


async def _connect(sshd: Sshd, **extra: object) -> asyncssh.SSHClientConnection:
    return await asyncssh.connect(
        "127.0.0.1",
        port=sshd.port,
        username="sluicegate",
        client_keys=[str(sshd.client_key)],
        known_hosts=str(sshd.known_hosts),
        agent_path=None,
        config=[],
        **extra,
    )  # type: ignore[arg-type]


def _goaway(stdout: bytes) -> bytes:
    frames = FrameDecoder(GATE_KINDS).feed(stdout)
    assert len(frames) == 1 and frames[0].kind is Kind.GOAWAY, frames
    return frames[0].payload


def test_the_appliance_negotiates_its_preferred_cipher_with_a_pinned_host_key(sshd: Sshd) -> None:
    """The appliance's own options against OpenSSH: the first cipher it offers is the one used
    (AES-GCM on a CPU with AES instructions), and the host key is still checked."""
    from appliance.settings import SshCluster
    from appliance.transport.ssh import connect_options, encryption_algs

    cluster = SshCluster("hpc", "mux", "127.0.0.1", sshd.port, USER, sshd.client_key, sshd.known_hosts)

    async def scenario() -> None:
        async with asyncssh.connect("127.0.0.1", **connect_options(cluster)) as conn:  # type: ignore[arg-type]
            assert conn.get_extra_info("send_cipher") == encryption_algs()[0]
            assert conn.get_extra_info("recv_cipher") == encryption_algs()[0]

    asyncio.run(scenario())


def test_reject_shell_and_commands(sshd: Sshd) -> None:
    async def scenario() -> None:
        async with await _connect(sshd) as conn:
            # A command other than the grammar's: refused by the gate, nothing run.
            result = await conn.run("id; cat /etc/passwd", encoding=None)
            assert result.exit_status == 2 and _goaway(result.stdout) == b"bad_command"  # type: ignore[arg-type]
            # A login shell: the forced command runs with no SSH_ORIGINAL_COMMAND.
            process = await conn.create_process(encoding=None)
            process.stdin.write_eof()
            stdout = await process.stdout.read()
            await process.wait()
            assert process.exit_status == 2 and _goaway(stdout) == b"not_forced_command"

    asyncio.run(scenario())


def test_reject_pty(sshd: Sshd) -> None:
    async def scenario() -> None:
        async with await _connect(sshd) as conn:
            with pytest.raises(asyncssh.ChannelOpenError):
                await conn.create_process("sluice/1 ping", term_type="xterm", request_pty="force")

    asyncio.run(scenario())


def test_reject_sftp(sshd: Sshd) -> None:
    async def scenario() -> None:
        async with await _connect(sshd) as conn:
            with pytest.raises((asyncssh.SFTPError, asyncssh.ChannelOpenError, asyncssh.ConnectionLost)):
                async with conn.start_sftp_client() as sftp:
                    await sftp.listdir(".")

    asyncio.run(scenario())


def test_reject_port_forwarding(sshd: Sshd, cluster: Cluster) -> None:
    async def scenario() -> None:
        async with await _connect(sshd) as conn:
            # Local forwarding to the model server behind the gate: the channel is refused.
            with pytest.raises(asyncssh.ChannelOpenError):
                await conn.open_connection("127.0.0.1", cluster.chat.port)
            # Remote forwarding: the listen request is refused.
            with pytest.raises(asyncssh.ChannelListenError):
                await conn.forward_remote_port("127.0.0.1", 0, "127.0.0.1", 9)
            # Unix socket forwarding.
            with pytest.raises(asyncssh.ChannelOpenError):
                await conn.open_unix_connection("/run/munge/munge.socket.2")

    asyncio.run(scenario())


def test_reject_agent_forwarding(sshd: Sshd) -> None:
    """Even when the client offers its agent, the gate's environment has no agent socket."""

    async def scenario() -> None:
        async with await _connect(sshd, agent_forwarding=True) as conn:
            process = await conn.create_process("sluice/1 mux", encoding=None)
            pids: list[int] = []
            for _ in range(50):
                pids = [p for p in sshd.gate_pids() if "cluster.cli" in _cmdline(p)]
                if pids:
                    break
                await asyncio.sleep(0.1)
            assert pids, "the gate process did not appear"
            for pid in pids:
                environ = Path(f"/proc/{pid}/environ").read_bytes()
                assert b"SSH_AUTH_SOCK" not in environ
            process.stdin.write_eof()
            await process.wait()

    asyncio.run(scenario())


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def test_wrong_host_key_is_refused(sshd: Sshd, tmp_path: Path) -> None:
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    wrong = sshd.dir / "known_hosts_wrong"
    wrong.write_text(f"[127.0.0.1]:{sshd.port} {other.with_suffix('.pub').read_text().strip()}\n")
    appliance = start_appliance(sshd, "mux", known_hosts=wrong, connections=1)
    try:
        ready = appliance.ready()
        assert ready.status_code == 503 and ready.json()["cluster"] == "unreachable"
        started = time.monotonic()
        response = httpx2.post(
            f"{appliance.url}/v1/chat/completions",
            headers={"Authorization": f"Bearer {KEY}"},
            json={"model": "standin-chat", "messages": [{"role": "user", "content": "x"}]},
            timeout=10,
        )
        assert response.status_code == 503 and response.headers.get("retry-after")
        assert time.monotonic() - started < 2, "an unreachable cluster must fail fast"
    finally:
        log = stop_appliance(appliance)
    assert "host key not verifiable" in log


# -- failures mid-request, and recovery -------------------------------------------------


def _long_stream(appliance: Appliance) -> httpx2.Response:
    return httpx2.post(
        f"{appliance.url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=30,
        json={"model": "standin-chat", "messages": [{"role": "user", "content": "long"}], "max_tokens": 3000, "stream": True},
    )


def _stream_until_broken(appliance: Appliance, breaker) -> str:  # type: ignore[no-untyped-def]
    with httpx2.Client(timeout=30) as client:
        with client.stream(
            "POST",
            f"{appliance.url}/v1/chat/completions",
            headers={"Authorization": f"Bearer {KEY}"},
            json={"model": "standin-chat", "messages": [{"role": "user", "content": "long"}], "max_tokens": 3000, "stream": True},
        ) as response:
            assert response.status_code == 200
            received = []
            started = None
            for chunk in response.iter_text():
                received.append(chunk)
                if started is None:
                    breaker()
                    started = time.monotonic()
            assert started is not None and time.monotonic() - started < 5, "the broken stream must end promptly"
            return "".join(received)


def _recovers(appliance: Appliance, within: float) -> float:
    started = time.monotonic()
    client = appliance.client()
    while time.monotonic() - started < within:
        try:
            client.chat.completions.create(model="standin-chat", messages=[{"role": "user", "content": "x"}], max_tokens=2)
            return time.monotonic() - started
        except openai.APIStatusError as exc:
            assert exc.status_code in (502, 503)
        except openai.APIConnectionError:
            pass
        time.sleep(0.1)
    raise AssertionError("no recovery")


@pytest.mark.parametrize(("mode", "failure"), [("mux", "kill"), ("exec", "kill"), ("mux", "restart")])
def test_connection_lost_mid_stream_fails_cleanly_and_heals(sshd: Sshd, mode: str, failure: str) -> None:
    """A killed SSH session, or sshd restarted, mid-stream: the stream ends promptly with an
    error event (never [DONE], never a hang), and the pool serves again within seconds."""
    appliance = start_appliance(sshd, mode)
    try:
        wait_ready(appliance)
        text = _stream_until_broken(appliance, sshd.kill_sessions if failure == "kill" else sshd.restart)
        assert '"error"' in text and "[DONE]" not in text
        assert _recovers(appliance, within=10) < 10
    finally:
        stop_appliance(appliance)


def test_nothing_from_a_request_in_the_cluster_process_table(sshd: Sshd, appliance: Appliance) -> None:
    canary = "canary-" + os.urandom(8).hex()
    seen: list[str] = []
    with httpx2.Client(timeout=30) as client:
        with client.stream(
            "POST",
            f"{appliance.url}/v1/chat/completions",
            headers={"Authorization": f"Bearer {KEY}"},
            json={
                "model": "standin-chat",
                "messages": [{"role": "user", "content": canary}],
                "max_tokens": 200,
                "stream": True,
                "user": canary,
            },
        ) as response:
            for _ in response.iter_text():
                for pid in sshd.gate_pids():
                    for name in ("cmdline", "environ"):
                        try:
                            seen.append(Path(f"/proc/{pid}/{name}").read_bytes().decode(errors="replace"))
                        except OSError:
                            pass
                if len(seen) > 20:
                    break
    assert seen, "no gate process was observed"
    assert not [s for s in seen if canary in s]


def test_sealed_round_trips_over_ssh(appliance: Appliance) -> None:
    """Sealed plain and streaming requests through real sshd: the gate account holds the key."""
    import json

    from sluice_sdk.bhttp import Request, ResponseStreamDecoder, decode_response
    from sluice_sdk.client import seal_request, seal_streaming_request
    from sluice_sdk.keyconfig import decode_key_configs

    keys = httpx2.get(f"{appliance.url}/v1/sealed/keys", timeout=10)
    assert keys.status_code == 200
    config = decode_key_configs(keys.content)[0]
    headers = {"Authorization": f"Bearer {KEY}", "Sluice-Model": "standin-chat"}
    document = {"model": "standin-chat", "messages": [{"role": "user", "content": "sealed over ssh"}], "max_tokens": 5}

    def inner(doc: dict[str, object]) -> Request:
        return Request(
            b"POST",
            b"https",
            b"sluice",
            b"/v1/chat/completions",
            ((b"content-type", b"application/json"),),
            json.dumps(doc).encode(),
        )

    body, opener = seal_request(config, inner(document))
    response = httpx2.post(
        f"{appliance.url}/v1/sealed/chat/completions",
        content=body,
        timeout=30,
        headers={**headers, "Content-Type": "message/ohttp-req"},
    )
    assert json.loads(decode_response(opener.open(response.content)).content)["usage"]["completion_tokens"] == 5

    body, stream_opener = seal_streaming_request(config, inner({**document, "stream": True}))
    decoder = ResponseStreamDecoder()
    text = b""
    with httpx2.stream(
        "POST",
        f"{appliance.url}/v1/sealed/chat/completions",
        content=body,
        timeout=30,
        headers={**headers, "Content-Type": "message/ohttp-chunked-req"},
    ) as streamed:
        for chunk in streamed.iter_bytes():
            for plain in stream_opener.feed(chunk):
                text += b"".join(getattr(e, "data", b"") or b"" for e in decoder.feed(plain))
    stream_opener.finish()
    assert text.endswith(b"data: [DONE]\n\n")


# -- a chatty gate: its stderr must not stall the session -----------------------------------------


def test_reject_stall_by_gate_stderr(sshd: Sshd) -> None:
    """The gate's session writes 8 MiB to stderr (more than the channel's window): requests still flow.

    The forced command becomes a test hook that runs the real gate beside a
    writer of stderr; an appliance that never reads stderr stalls the whole
    channel once the window is full.  The bytes must not reach its logs."""
    marker = "Q"
    hook = sshd.dir / "chatty-gate"
    hook.write_text(f"#!/bin/sh\nhead -c {8 * 2**20} /dev/zero | tr '\\000' '{marker}' >&2 &\nexec {sshd.gate_command}\n")
    hook.chmod(0o755)
    keys = sshd.dir / "authorized_keys" / USER
    original = keys.read_text()
    public = (sshd.dir / "client_key.pub").read_text().strip()
    keys.write_text(authorized_key_line(public, str(hook)) + "\n")
    try:
        appliance = start_appliance(sshd, "mux", connections=1)
        try:
            wait_ready(appliance)
            time.sleep(2)  # the writer has filled any window a reader of stdout alone would leave
            client = appliance.client()
            for index in range(5):
                answer = client.chat.completions.create(
                    model="standin-chat", max_tokens=3, messages=[{"role": "user", "content": f"after stderr {index}"}]
                )
                assert answer.choices[0].message.content
            chunks = list(
                client.chat.completions.create(
                    model="standin-chat", max_tokens=5, stream=True, messages=[{"role": "user", "content": "stream"}]
                )
            )
            assert chunks
        finally:
            logs = stop_appliance(appliance)
        assert marker * 64 not in logs
    finally:
        keys.write_text(original)
        sshd.kill_sessions()


def test_reject_wedged_session_is_replaced(sshd: Sshd) -> None:
    """A session whose gate stops answering (stopped with SIGSTOP) is closed after its ping deadline and
    replaced by a new connection; requests flow again without a restart."""
    before = set(sshd.gate_pids())
    appliance = start_appliance(sshd, "mux", connections=1, ping_timeout=2)
    stopped: list[int] = []
    try:
        wait_ready(appliance)
        # The gate process alone (not sshd's session process, whose stop asyncssh's keepalive would see).
        stopped = sorted(p for p in set(sshd.gate_pids()) - before if b"cluster.cli" in Path(f"/proc/{p}/cmdline").read_bytes())
        assert stopped, "the appliance's gate process should be running"
        for pid in stopped:
            os.kill(pid, signal.SIGSTOP)
        client = appliance.client()
        deadline = time.monotonic() + 20
        while True:
            try:
                answer = client.chat.completions.create(
                    model="standin-chat", max_tokens=2, messages=[{"role": "user", "content": "still there?"}], timeout=3
                )
                break
            except (openai.APITimeoutError, openai.APIStatusError, openai.APIConnectionError):
                assert time.monotonic() < deadline, "the wedged session was never replaced"
                time.sleep(0.5)
        assert answer.choices[0].message.content
        assert set(sshd.gate_pids()) - before - set(stopped), "a new gate process serves the new session"
    finally:
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        stop_appliance(appliance)
        sshd.kill_sessions()


def test_new_routes_over_ssh(appliance: Appliance) -> None:
    """Responses, audio and rerank through real sshd, clear and sealed (the SDK)."""
    import warnings

    from sluice_sdk import fetch_fingerprint, sealed_openai_client
    from tests.audio_files import mp3, wav

    client = appliance.client()
    answer = client.responses.create(model="standin-chat", input="over ssh", max_output_tokens=6)
    assert answer.usage is not None and answer.usage.output_tokens == 6
    deltas = [
        e.delta
        for e in client.responses.create(model="standin-chat", input="over ssh", max_output_tokens=6, stream=True)
        if e.type == "response.output_text.delta"
    ]
    assert "".join(deltas) == answer.output_text
    spoken = client.audio.transcriptions.create(model="standin-chat", file=("a.wav", wav(2.0)))
    assert len(spoken.text.split()) == 5
    assert client.audio.transcriptions.create(model="standin-chat", file=("a.mp3", mp3())).text
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the openai client marks translations deprecated
        assert client.audio.translations.create(model="standin-chat", file=("a.wav", wav(1.0))).text
    reranked = httpx2.post(
        f"{appliance.url}/v1/rerank",
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=30,
        json={"model": "standin-embed", "query": "q", "documents": ["a", "b c"]},
    )
    assert reranked.status_code == 200 and len(reranked.json()["results"]) == 2
    with sealed_openai_client(f"{appliance.url}/v1", KEY, fetch_fingerprint(f"{appliance.url}/v1")) as sealed:
        assert sealed.responses.create(model="standin-chat", input="over ssh", max_output_tokens=6).output_text == (
            answer.output_text
        )
        assert sealed.audio.transcriptions.create(model="standin-chat", file=("a.wav", wav(2.0))).text == spoken.text
