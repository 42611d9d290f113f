"""The gate as a real process, in exec and mux mode, against real stand-in backends.

A tripwire backend (a TCP listener that counts connections) stands behind a
model of its own: requests that the gate must reject never reach it.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from policy.frames import GATE_KINDS, MAX_PAYLOAD, Frame, FrameDecoder, Kind, encode
from tests.conftest import Cluster, write_static_config

CHAT = {"model": "standin-chat", "messages": [{"role": "user", "content": "hello there gate"}], "max_tokens": 8}


class Tripwire:
    """Counts every connection made to it; a rejected request must never make one."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.hits = 0
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.hits += 1
            conn.close()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def tripwire() -> Iterator[Tripwire]:
    trip = Tripwire()
    yield trip
    trip.close()


@pytest.fixture(scope="module")
def gate_config(cluster: Cluster, tripwire: Tripwire, tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("gate")
    return write_static_config(
        directory,
        [
            ("standin-chat", "127.0.0.1", cluster.chat.port, cluster.chat.token, ["chat", "completions"]),
            ("standin-embed", "127.0.0.1", cluster.embed.port, cluster.embed.token, ["embeddings"]),
            ("tripwire", "127.0.0.1", tripwire.port, None, ["chat", "completions", "embeddings"]),
        ],
    )


def gate_argv(config: Path, local_pipe: bool = True) -> list[str]:
    argv = [sys.executable, "-I", "-m", "cluster.cli", "gate", "--config", str(config)]
    return argv + ["--local-pipe"] if local_pipe else argv


def run_exec(
    config: Path, line: str | None, stdin: bytes = b"", extra_env: dict[str, str] | None = None, local_pipe: bool = True
) -> tuple[int, list[Frame], bytes]:
    env = {"PATH": os.environ["PATH"], **(extra_env or {})}
    if line is not None:
        env["SSH_ORIGINAL_COMMAND"] = line
    done = subprocess.run(
        gate_argv(config, local_pipe),
        input=stdin,
        env=env,
        capture_output=True,
        timeout=30,
        cwd=Path(__file__).resolve().parents[3],
    )
    return done.returncode, FrameDecoder(GATE_KINDS).feed(done.stdout), done.stderr


def body_of(frames: list[Frame]) -> bytes:
    return b"".join(f.payload for f in frames if f.kind is Kind.BODY)


def exec_call(config: Path, document: object, route: str = "chat", model: str | None = None) -> tuple[int, list[Frame], bytes]:
    data = json.dumps(document).encode()
    model = model or document["model"]  # type: ignore[index]
    return run_exec(config, f"sluice/1 call {route} {model} {len(data)}", data)


# -- exec mode -----------------------------------------------------------------


def test_exec_ping_and_models(gate_config: Path) -> None:
    status, frames, _ = run_exec(gate_config, "sluice/1 ping")
    assert status == 0 and frames[0] == Frame(Kind.HEAD, 1, b"200 json") and frames[-1].kind is Kind.END
    status, frames, _ = run_exec(gate_config, "sluice/1 models")
    listing = json.loads(body_of(frames))
    assert {m["id"]: m["routes"] for m in listing["data"]}["standin-embed"] == ["embeddings"]
    assert all(m["ready"] for m in listing["data"])
    assert "port" not in body_of(frames).decode() and "127.0.0.1" not in body_of(frames).decode()


def test_exec_chat_plain(gate_config: Path) -> None:
    status, frames, _ = exec_call(gate_config, CHAT)
    assert status == 0
    assert frames[0] == Frame(Kind.HEAD, 1, b"200 json")
    answer = json.loads(body_of(frames))
    assert answer["object"] == "chat.completion" and answer["choices"][0]["message"]["content"]
    usage = json.loads(frames[-1].payload)
    assert frames[-1].kind is Kind.END and usage == {
        "prompt_tokens": 3,
        "completion_tokens": answer["usage"]["completion_tokens"],
        "backend_version": "sluice-standin-1",
    }  # what produced it


def test_exec_chat_stream_usage_without_asking(gate_config: Path) -> None:
    status, frames, _ = exec_call(gate_config, {**CHAT, "stream": True})
    assert status == 0 and frames[0].payload == b"200 sse"
    events = body_of(frames).decode().split("\n\n")
    assert events[-2] == "data: [DONE]"
    # The gate asked the backend for usage; the client did not, so the usage event is not forwarded.
    assert not any('"choices":[]' in e.replace(" ", "") for e in events)
    assert json.loads(frames[-1].payload)["completion_tokens"] == 8


def test_exec_stream_with_usage_asked(gate_config: Path) -> None:
    _, frames, _ = exec_call(gate_config, {**CHAT, "stream": True, "stream_options": {"include_usage": True}})
    events = [e for e in body_of(frames).decode().split("\n\n") if e.startswith("data: {")]
    assert json.loads(events[-1][6:])["usage"]["completion_tokens"] == 8


def test_exec_embeddings(gate_config: Path) -> None:
    status, frames, _ = exec_call(gate_config, {"model": "standin-embed", "input": ["a b", "c"]}, route="embeddings")
    assert status == 0
    assert len(json.loads(body_of(frames))["data"]) == 2
    assert json.loads(frames[-1].payload)["prompt_tokens"] == 3


def _error(frames: list[Frame]) -> bytes:
    assert frames[-1].kind is Kind.ERROR, frames
    return frames[-1].payload


def test_unknown_model_is_404(gate_config: Path) -> None:
    _, frames, _ = exec_call(gate_config, {**CHAT, "model": "nope"})
    assert _error(frames) == b"404 model_not_found"


def test_route_not_served(gate_config: Path) -> None:
    _, frames, _ = exec_call(gate_config, {"model": "standin-chat", "input": "x"}, route="embeddings")
    assert _error(frames) == b"404 route_not_served"


# -- rejections never reach a backend ---------------------------------------------


def _assert_untouched(tripwire: Tripwire, before: int) -> None:
    assert tripwire.hits == before, "a rejected request reached a backend"


@pytest.mark.parametrize(
    "raw",
    [
        b'{"model":"tripwire","messages":[],"model":"tripwire"}',
        b'{"model":"tripwire","messages":[{"role":"user","content":"x"}],"evil":1}',
        b'{"model":"tripwire","messages":[{"role":"user","content":"\\ud800"}]}',
        b'{"model":"tripwire","messages":[{"role":"user","content":"\xff"}]}',
        b'{"model":"tripwire","messages":' + b"[" * 5000 + b"]" * 5000 + b"}",
        b'{"model":"tripwire","max_tokens":1' + b"0" * 400 + b',"messages":[]}',
        b'{"model":"tripwire","temperature":NaN,"messages":[]}',
        b"not json at all",
    ],
)
def test_reject_bad_bodies_before_backend(gate_config: Path, tripwire: Tripwire, raw: bytes) -> None:
    before = tripwire.hits
    status, frames, stderr = run_exec(gate_config, f"sluice/1 call chat tripwire {len(raw)}", raw)
    assert status == 0 and frames[-1].kind is Kind.ERROR
    assert frames[-1].payload.split()[0] in (b"400", b"413", b"422")
    assert b"tripwire" not in frames[-1].payload and b"evil" not in stderr
    _assert_untouched(tripwire, before)


def test_reject_model_mismatch_between_line_and_body(gate_config: Path, tripwire: Tripwire) -> None:
    before = tripwire.hits
    raw = json.dumps({**CHAT, "model": "tripwire"}).encode()
    _, frames, _ = run_exec(gate_config, f"sluice/1 call chat standin-chat {len(raw)}", raw)
    assert _error(frames) == b"400 model_mismatch"
    _assert_untouched(tripwire, before)


@pytest.mark.parametrize(
    ("line", "stdin", "code"),
    [
        ("sluice/1 call chat tripwire 10", b"short", b"body_short"),
        ("sluice/1 call chat tripwire 3", b"longer", b"body_overrun"),
        ("sluice/1 call chat tripwire 999999999", b"", b"bad_command"),
        ("sluice/1 call chat tripwire 8388608", b"", b"body_length"),
        ("sluice/1 call chat tripwire 2\nsluice/1 ping", b"{}", b"bad_command"),
        ("rm -rf / ; echo pwned", b"", b"bad_command"),
        ("", b"", b"bad_command"),
        ("internal-sftp", b"", b"bad_command"),
    ],
)
def test_reject_lying_lengths_and_bad_lines(gate_config: Path, tripwire: Tripwire, line: str, stdin: bytes, code: bytes) -> None:
    before = tripwire.hits
    status, frames, stderr = run_exec(gate_config, line, stdin)
    assert status == 2
    assert frames == [Frame(Kind.GOAWAY, 0, code)]
    assert b"pwned" not in stderr and b"Traceback" not in stderr
    _assert_untouched(tripwire, before)


def test_reject_without_forced_command(gate_config: Path) -> None:
    status, frames, _ = run_exec(gate_config, None, local_pipe=False)
    assert status == 2 and frames == [Frame(Kind.GOAWAY, 0, b"not_forced_command")]


def test_reject_environment_tricks(gate_config: Path, tripwire: Tripwire) -> None:
    """Variables the gate does not own change nothing: not the config, not the routing, not Python."""
    before = tripwire.hits
    hostile = {
        "SLUICE_CONFIG": "/etc/passwd",
        "SLUICE_BACKEND_TOKEN": "stolen",
        "PYTHONSTARTUP": "/nonexistent",
        "HTTP_PROXY": f"http://127.0.0.1:{tripwire.port}",
        "http_proxy": f"http://127.0.0.1:{tripwire.port}",
        "ROUTING_TABLE": "/tmp/evil.json",
        "LD_PRELOAD": "",
    }
    status, frames, _ = run_exec(
        gate_config, f"sluice/1 call chat standin-chat {len(json.dumps(CHAT))}", json.dumps(CHAT).encode(), extra_env=hostile
    )
    assert status == 0 and frames[0].payload == b"200 json"
    _assert_untouched(tripwire, before)


# -- mux mode ---------------------------------------------------------------------


async def _mux(config: Path, requests: list[tuple[int, bytes, bytes]], extra: bytes = b"") -> tuple[int, dict[int, list[Frame]]]:
    process = await asyncio.create_subprocess_exec(
        *gate_argv(config),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        env={"PATH": os.environ["PATH"], "SSH_ORIGINAL_COMMAND": "sluice/1 mux"},
        cwd=Path(__file__).resolve().parents[3],
    )
    assert process.stdin and process.stdout
    for stream, line, body in requests:
        process.stdin.write(encode(Kind.OPEN, stream, line))
        for start in range(0, len(body), MAX_PAYLOAD):
            process.stdin.write(encode(Kind.DATA, stream, body[start : start + MAX_PAYLOAD]))
    process.stdin.write(extra)
    await process.stdin.drain()
    decoder = FrameDecoder(GATE_KINDS)
    frames: dict[int, list[Frame]] = {}
    done: set[int] = set()
    while not requests or len(done) < len(requests):
        data = await asyncio.wait_for(process.stdout.read(65536), 30)
        if not data:
            break
        for frame in decoder.feed(data):
            frames.setdefault(frame.stream, []).append(frame)
            if frame.kind in (Kind.END, Kind.ERROR):
                done.add(frame.stream)
            if frame.kind is Kind.GOAWAY:
                done = set(range(len(requests) + 1))
    process.stdin.close()
    status = await asyncio.wait_for(process.wait(), 30)
    return status, frames


def _call(stream: int, document: dict[str, object], route: str = "chat") -> tuple[int, bytes, bytes]:
    data = json.dumps(document).encode()
    return stream, f"call {route} {document['model']} {len(data)}".encode(), data


def _contents(frames: list[Frame]) -> list[str]:
    events = body_of(frames).decode().split("\n\n")
    out = []
    for event in events:
        if event.startswith("data: {"):
            delta = json.loads(event[6:])["choices"][0]["delta"]
            out.append(delta.get("content") or "")
    return out


def test_mux_100_concurrent_streams_complete_and_in_order(gate_config: Path) -> None:
    requests = [
        _call(i + 1, {**CHAT, "stream": True, "max_tokens": 20, "messages": [{"role": "user", "content": f"prompt number {i}"}]})
        for i in range(100)
    ]
    status, frames = asyncio.run(_mux(gate_config, requests))
    assert status == 0
    assert sorted(frames) == [r[0] for r in requests]
    # Each stream's words must equal what the same prompt gives alone, in the same order.
    _, alone, _ = exec_call(
        gate_config, {**CHAT, "stream": True, "max_tokens": 20, "messages": [{"role": "user", "content": "prompt number 7"}]}
    )
    for stream, stream_frames in frames.items():
        kinds = [f.kind for f in stream_frames]
        assert kinds[0] is Kind.HEAD and kinds[-1] is Kind.END and set(kinds[1:-1]) == {Kind.BODY}, stream
        assert body_of(stream_frames).endswith(b"data: [DONE]\n\n")
        assert len([c for c in _contents(stream_frames) if c]) == 20
    assert _contents(frames[8]) == _contents(alone)  # stream 8 carried prompt number 7


def test_mux_mixed_routes_and_errors_stay_per_stream(gate_config: Path, tripwire: Tripwire) -> None:
    before = tripwire.hits
    requests = [
        _call(1, CHAT),
        _call(2, {"model": "standin-embed", "input": "x y"}, "embeddings"),
        _call(3, {**CHAT, "model": "tripwire", "unknown": True}),
        _call(4, {**CHAT, "model": "nope"}),
        (5, b"ping", b""),
        (6, b"models", b""),
    ]
    status, frames = asyncio.run(_mux(gate_config, requests))
    assert status == 0
    assert frames[1][-1].kind is Kind.END and frames[2][-1].kind is Kind.END
    assert frames[3][-1] == Frame(Kind.ERROR, 3, b"422 unknown_field")
    assert frames[4][-1] == Frame(Kind.ERROR, 4, b"404 model_not_found")
    assert frames[5][0].payload == b"200 json" and frames[6][-1].kind is Kind.END
    _assert_untouched(tripwire, before)


def test_reject_per_stream_problems_keep_the_mux_session(gate_config: Path, tripwire: Tripwire) -> None:
    """Finding 1: a body over its route's limit, a sealed body within the limit plus the
    sealing overhead, and a line outside the grammar are each refused on their own stream;
    the other streams of the session are served."""
    from policy.bodies import load_routes

    route = load_routes().get("chat")
    before = tripwire.hits
    over = route.max_request_bytes(sealed=False) + 1
    sealed = route.max_body_bytes + 100  # the appliance lets this through for a sealed request
    requests = [
        _call(1, CHAT),
        (2, f"call chat tripwire {over}".encode(), b"x" * over),
        (3, f"sealed ohttp chat tripwire {sealed}".encode(), b"\x00" * sealed),
        (4, b"call chat tripwire 01", b"{}"),  # a leading zero: outside the grammar
        _call(5, CHAT),
    ]
    status, frames = asyncio.run(_mux(gate_config, requests))
    assert status == 0 and 0 not in frames  # no GOAWAY
    assert frames[1][-1].kind is Kind.END and frames[5][-1].kind is Kind.END
    assert frames[2] == [Frame(Kind.ERROR, 2, b"413 body_too_large")]
    assert frames[3][-1].kind is Kind.ERROR and not frames[3][-1].payload.startswith(b"413")
    assert frames[4][-1].kind is Kind.ERROR and frames[4][-1].payload.startswith(b"400 ")
    _assert_untouched(tripwire, before)


def test_cancel_is_answered_with_the_usage_so_far(gate_config: Path) -> None:
    """Finding 11: the gate answers a CANCEL of a running stream with END and the usage it
    delivered so far (the appliance charges that), and the session goes on."""

    async def scenario() -> tuple[list[Frame], list[Frame]]:
        process = await asyncio.create_subprocess_exec(
            *gate_argv(gate_config),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env={"PATH": os.environ["PATH"], "SSH_ORIGINAL_COMMAND": "sluice/1 mux"},
            cwd=Path(__file__).resolve().parents[3],
        )
        assert process.stdin and process.stdout
        stream, line, body = _call(
            1, {**CHAT, "stream": True, "max_tokens": 2000, "messages": [{"role": "user", "content": "tell me a long story 3"}]}
        )
        process.stdin.write(encode(Kind.OPEN, stream, line) + encode(Kind.DATA, stream, body))
        decoder = FrameDecoder(GATE_KINDS)
        frames: list[Frame] = []
        while sum(f.kind is Kind.BODY for f in frames) < 10:
            frames += decoder.feed(await asyncio.wait_for(process.stdout.read(65536), 30))
        process.stdin.write(encode(Kind.CANCEL, 1))
        while frames[-1].kind not in (Kind.END, Kind.ERROR):
            frames += decoder.feed(await asyncio.wait_for(process.stdout.read(65536), 30))
        stream, line, body = _call(2, CHAT)
        process.stdin.write(encode(Kind.OPEN, stream, line) + encode(Kind.DATA, stream, body))
        after: list[Frame] = []
        while not after or after[-1].kind not in (Kind.END, Kind.ERROR):
            after += [f for f in decoder.feed(await asyncio.wait_for(process.stdout.read(65536), 30)) if f.stream == 2]
        process.stdin.close()
        assert await asyncio.wait_for(process.wait(), 30) == 0
        return frames, after

    frames, after = asyncio.run(scenario())
    end = frames[-1]
    assert end.kind is Kind.END
    usage = json.loads(end.payload)
    assert usage["prompt_tokens"] == 6 and 10 <= usage["completion_tokens"] < 2000
    assert after[0].payload == b"200 json" and after[-1].kind is Kind.END


def test_reject_mux_violation_ends_session(gate_config: Path, tripwire: Tripwire) -> None:
    before = tripwire.hits
    requests = [(1, b"ping", b""), (1, b"ping", b"")]  # stream id reuse
    status, frames = asyncio.run(_mux(gate_config, requests))
    assert status == 2
    assert frames[0] == [Frame(Kind.GOAWAY, 0, b"stream_reuse")]
    _assert_untouched(tripwire, before)


def test_reject_garbage_frame_ends_session(gate_config: Path) -> None:
    status, frames = asyncio.run(_mux(gate_config, [], extra=b"\x7f" + b"\x00" * 20))
    assert status == 2 and frames[0] == [Frame(Kind.GOAWAY, 0, b"frame_kind")]


def test_gate_run_by_hand_with_files_for_stdio(gate_config: Path, tmp_path: Path) -> None:
    """stdin from /dev/null or a file and stdout to a file (no pipes): served, no crash."""
    out = tmp_path / "out.bin"
    body = json.dumps(CHAT).encode()
    (tmp_path / "body.json").write_bytes(body)
    env = {"PATH": os.environ["PATH"]}
    for line, stdin in (
        ("sluice/1 ping", "/dev/null"),
        (f"sluice/1 call chat standin-chat {len(body)}", str(tmp_path / "body.json")),
    ):
        with open(stdin, "rb") as source, out.open("wb") as sink:
            status = subprocess.run(
                gate_argv(gate_config),
                stdin=source,
                stdout=sink,
                env={**env, "SSH_ORIGINAL_COMMAND": line},
                timeout=30,
                cwd=Path(__file__).resolve().parents[3],
            ).returncode
        frames = FrameDecoder(GATE_KINDS).feed(out.read_bytes())
        assert status == 0 and frames[0].kind is Kind.HEAD and frames[-1].kind is Kind.END


def test_reject_stalled_sender_slowloris(gate_config: Path, tripwire: Tripwire) -> None:
    """A body that stops arriving (stdin held open) ends the exec or the mux session after
    BODY_IDLE_TIMEOUT with body_timeout, and never reaches a backend.  Both run at once."""
    from cluster.gate.session import BODY_IDLE_TIMEOUT

    before = tripwire.hits
    env = {"PATH": os.environ["PATH"]}
    cwd = Path(__file__).resolve().parents[3]
    exec_gate = subprocess.Popen(
        gate_argv(gate_config),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=cwd,
        env={**env, "SSH_ORIGINAL_COMMAND": "sluice/1 call chat tripwire 100"},
    )
    mux_gate = subprocess.Popen(
        gate_argv(gate_config),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=cwd,
        env={**env, "SSH_ORIGINAL_COMMAND": "sluice/1 mux"},
    )
    assert exec_gate.stdin and mux_gate.stdin
    exec_gate.stdin.write(b'{"model":"')
    exec_gate.stdin.flush()
    mux_gate.stdin.write(encode(Kind.OPEN, 1, b"call chat tripwire 100") + encode(Kind.DATA, 1, b'{"model":"'))
    mux_gate.stdin.flush()
    try:
        for gate in (exec_gate, mux_gate):
            assert gate.wait(timeout=BODY_IDLE_TIMEOUT + 10) == 2  # stdin is still open: the gate gave up
            assert gate.stdout is not None
            assert FrameDecoder(GATE_KINDS).feed(gate.stdout.read()) == [Frame(Kind.GOAWAY, 0, b"body_timeout")]
    finally:
        for gate in (exec_gate, mux_gate):
            if gate.poll() is None:
                gate.kill()
                gate.wait()
            for pipe in (gate.stdin, gate.stdout):
                if pipe is not None:
                    pipe.close()
    _assert_untouched(tripwire, before)


# -- isolated mode ----------------------------------------------------------------

_PLANTED = "import pathlib; pathlib.Path({marker!r}).write_text('planted code ran')\n"


def _plant(directory: Path, marker: Path) -> None:
    """What a backend running as the gate's account could leave in its home (the gate's cwd)."""
    code = _PLANTED.format(marker=str(marker))
    (directory / "cluster").mkdir()
    (directory / "cluster" / "__init__.py").write_text(code)
    (directory / "cluster" / "cli.py").write_text(code)
    (directory / "sitecustomize.py").write_text(code)
    (directory / "usercustomize.py").write_text(code)


def test_reject_modules_planted_in_the_working_directory(gate_config: Path, tmp_path: Path) -> None:
    """With -I (the forced command's form) a `cluster` package or sitecustomize in the cwd is never imported."""
    home = tmp_path / "home"
    home.mkdir()
    marker = tmp_path / "marker"
    _plant(home, marker)
    env = {"PATH": os.environ["PATH"], "SSH_ORIGINAL_COMMAND": "sluice/1 ping", "HOME": str(home)}
    done = subprocess.run(gate_argv(gate_config), env=env, capture_output=True, timeout=30, cwd=home)
    assert done.returncode == 0 and FrameDecoder(GATE_KINDS).feed(done.stdout)[0].payload == b"200 json"
    assert not marker.exists()
    # the finding: the same command without -I runs the planted package as the gate
    old = [a for a in gate_argv(gate_config) if a != "-I"]
    subprocess.run(old, env=env, capture_output=True, timeout=30, cwd=home)
    assert marker.exists()


def test_the_forced_command_runs_python_isolated(tmp_path: Path) -> None:
    from cluster.authorized_key import authorized_key_line, default_gate_command

    command = default_gate_command("/opt/sluice/venv/bin/python", Path("/etc/sluice/cluster.toml"))
    assert command.split()[:4] == ["/opt/sluice/venv/bin/python", "-I", "-m", "cluster.cli"]
    line = authorized_key_line("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBQ4 x", command)
    assert line.startswith('restrict,command="/opt/sluice/venv/bin/python -I -m cluster.cli gate --config ')
