"""``sluice-seal`` against the fake appliance on a real HTTP server at 127.0.0.1."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest

from sluice_sdk import cli

from .test_transport import API_KEY, CHAT_MODEL, PROMPT, FakeAppliance, serve

ENV = {cli.API_KEY_ENV: API_KEY}


@pytest.fixture
def fake() -> FakeAppliance:
    return FakeAppliance()


@pytest.fixture
def base(fake: FakeAppliance) -> Iterator[str]:
    with serve(fake) as url:
        yield url


@pytest.fixture
def prompt(tmp_path: Path) -> Path:
    path = tmp_path / "prompt.txt"
    path.write_text(PROMPT, encoding="utf-8")
    return path


def _run(argv: list[str], env: dict[str, str] = ENV, stdin: str = "") -> tuple[int, str, str]:
    stdout, stderr = io.StringIO(), io.StringIO()
    status = cli.run(argv, env, io.StringIO(stdin), stdout, stderr)
    return status, stdout.getvalue(), stderr.getvalue()


def _chat(base: str, fingerprint: str, prompt: Path | str, *extra: str) -> list[str]:
    return ["chat", "--base-url", base, "--fingerprint", fingerprint, "--model", CHAT_MODEL, "--prompt-file", str(prompt), *extra]


def test_fingerprint(fake: FakeAppliance, base: str) -> None:
    status, out, err = _run(["fingerprint", "--base-url", base])
    assert (status, out) == (cli.EXIT_OK, fake.fingerprint + "\n")
    assert "check it against the gate operator's" in err


def test_chat(fake: FakeAppliance, base: str, prompt: Path) -> None:
    status, out, err = _run(_chat(base, fake.fingerprint, prompt, "--max-tokens", "16"))
    assert (status, out, err) == (cli.EXIT_OK, "you sent 1 messages\n", "")
    assert all(PROMPT.encode() not in seen.body for seen in fake.seen)
    assert fake.seen[-1].headers["sluice-model"] == CHAT_MODEL


def test_chat_stream_from_stdin(fake: FakeAppliance, base: str) -> None:
    status, out, _ = _run(_chat(base, fake.fingerprint, "-", "--stream"), stdin=PROMPT)
    assert (status, out) == (cli.EXIT_OK, "you sent 1 messages\n")
    assert fake.seen[-1].headers["content-type"] == "message/ohttp-chunked-req"
    assert all(PROMPT.encode() not in seen.body for seen in fake.seen)


def test_rotation_pins_two_fingerprints(fake: FakeAppliance, base: str, prompt: Path) -> None:
    argv = _chat(base, "0" * 64, prompt) + ["--fingerprint", fake.fingerprint]
    assert _run(argv)[0] == cli.EXIT_OK


def test_reject_missing_api_key(base: str, prompt: Path, fake: FakeAppliance) -> None:
    status, out, err = _run(_chat(base, fake.fingerprint, prompt), env={})
    assert status == cli.EXIT_USAGE
    assert cli.API_KEY_ENV in err and out == ""
    assert fake.seen == []


def test_reject_api_key_on_the_command_line(base: str, prompt: Path, fake: FakeAppliance) -> None:
    status, _, err = _run([*_chat(base, fake.fingerprint, prompt), "--api-key", API_KEY])
    assert status == cli.EXIT_USAGE
    assert "unrecognized arguments: --api-key" in err
    assert fake.seen == []


def test_reject_wrong_api_key(base: str, prompt: Path, fake: FakeAppliance) -> None:
    status, _, err = _run(_chat(base, fake.fingerprint, prompt), env={cli.API_KEY_ENV: "sk-wrong"})
    assert status == cli.EXIT_FAILED
    assert "HTTP 401 (invalid_api_key)" in err


def test_reject_unpinned_key(base: str, prompt: Path, fake: FakeAppliance) -> None:
    status, _, err = _run(_chat(base, "0" * 64, prompt))
    assert status == cli.EXIT_KEY
    assert "not pinned" in err and fake.fingerprint in err


def test_reject_malformed_fingerprint(base: str, prompt: Path) -> None:
    status, _, err = _run(_chat(base, "not-a-fingerprint", prompt))
    assert status == cli.EXIT_KEY
    assert "64 hex digits" in err


def test_reject_tampered_answer(base: str, prompt: Path, fake: FakeAppliance) -> None:
    fake.tamper = lambda sealed: sealed[:-1] + bytes([sealed[-1] ^ 1])
    status, out, err = _run(_chat(base, fake.fingerprint, prompt))
    assert (status, out) == (cli.EXIT_SEAL, "")
    assert "failed authentication" in err


def test_reject_truncated_stream(base: str, prompt: Path, fake: FakeAppliance) -> None:
    fake.cut_stream_after = 3
    status, out, err = _run(_chat(base, fake.fingerprint, prompt, "--stream"))
    assert status == cli.EXIT_SEAL
    assert out == "you sent\n"  # what authenticated before the cut, then the warning
    assert "do not trust any output above" in err


@pytest.mark.parametrize(
    ("extra", "message"),
    [(["--max-tokens", "0"], "--max-tokens"), (["--max-tokens", "x"], "invalid int")],
)
def test_reject_bad_arguments(base: str, prompt: Path, fake: FakeAppliance, extra: list[str], message: str) -> None:
    status, _, err = _run(_chat(base, fake.fingerprint, prompt, *extra))
    assert status == cli.EXIT_USAGE
    assert message in err


def test_reject_bad_prompt_files(base: str, tmp_path: Path, fake: FakeAppliance) -> None:
    missing = _run(_chat(base, fake.fingerprint, tmp_path / "missing.txt"))
    assert missing[0] == cli.EXIT_USAGE and "cannot read the prompt file" in missing[2]
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe")
    assert "not UTF-8" in _run(_chat(base, fake.fingerprint, binary))[2]
    empty = tmp_path / "empty"
    empty.write_text("  \n")
    assert "empty" in _run(_chat(base, fake.fingerprint, empty))[2]
    assert fake.seen == []


def test_reject_bad_base_url(prompt: Path) -> None:
    status, _, err = _run(_chat("ftp://x/v1", "0" * 64, prompt))
    assert status == cli.EXIT_USAGE and "base_url" in err


def test_unreachable_appliance(fake: FakeAppliance) -> None:
    with serve(fake) as url:
        closed = url  # the port is closed once the server is gone
    status, _, err = _run(["fingerprint", "--base-url", closed])
    assert status == cli.EXIT_FAILED
    assert "cannot fetch" in err


def test_errors_from_the_network_are_cleaned() -> None:
    assert cli._clean("a\x1b[31mred\nline") == "a?[31mred?line"
    assert len(cli._clean("x" * 1000)) == 200
