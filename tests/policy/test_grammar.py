"""The recognizer of policy/request.abnf: accepts the grammar, rejects the rest."""

from __future__ import annotations

import pytest

from policy.errors import Disallowed
from policy.grammar import (
    MAX_BODY_BYTES,
    MAX_COMMAND_LINE,
    Call,
    Models,
    Mux,
    Ping,
    command_line,
    parse_command_line,
    parse_stream_command,
    stream_line,
)

ACCEPTED = [
    ("sluice/1 ping", Ping()),
    ("sluice/1 models", Models()),
    ("sluice/1 mux", Mux()),
    ("sluice/1 call chat standin-chat 0", Call("chat", "standin-chat", 0)),
    ("sluice/1 call completions m 1234567", Call("completions", "m", 1234567)),
    (
        "sluice/1 call embeddings meta-llama/Llama-3.1-8B-Instruct:v2_x 42",
        Call("embeddings", "meta-llama/Llama-3.1-8B-Instruct:v2_x", 42),
    ),
    ("sluice/1 call chat " + "a" * 128 + " 1", Call("chat", "a" * 128, 1)),
]


@pytest.mark.parametrize(("line", "expected"), ACCEPTED)
def test_accepts_and_round_trips(line: str, expected: object) -> None:
    assert parse_command_line(line) == expected
    assert parse_command_line(line.encode()) == expected
    assert command_line(expected) == line  # type: ignore[arg-type]


@pytest.mark.parametrize("line", ["ping", "models", "call chat x 1"])
def test_stream_commands(line: str) -> None:
    command = parse_stream_command(line.encode())
    assert stream_line(command) == line


def _rejects(line: str | bytes, code: str | None = None) -> None:
    with pytest.raises(Disallowed) as info:
        parse_command_line(line)
    if code is not None:
        assert info.value.code == code
    text = line.decode("latin-1") if isinstance(line, bytes) else line
    assert str(info.value) not in ("", text)


@pytest.mark.parametrize(
    "line",
    [
        "",
        "sluice/1",
        "sluice/1 ",
        "sluice/1 ping ",
        " sluice/1 ping",
        "sluice/1  ping",
        "SLUICE/1 ping",
        "sluice/1 PING",
        "sluice/2 ping",
        "sluice/1 shell",
        "sluice/1 call chat",
        "sluice/1 call chat m",
        "sluice/1 call chat m 1 extra",
        "sluice/1 call Chat m 1",
        "sluice/1 call files m 1",
        "sluice/1 call chat m -1",
        "sluice/1 call chat m +1",
        "sluice/1 call chat m 01",
        "sluice/1 call chat m 1.0",
        "sluice/1 call chat m 123456789",
        "sluice/1 mux ping",
        "rm -rf / ; echo pwned",
        "sluice/1 call chat m 1; id",
        "sluice/1 call chat $(id) 1",
        "sluice/1 call chat `id` 1",
        "sluice/1 call chat ../../etc/passwd 1",
        "sluice/1 call chat /etc/passwd 1",
        "sluice/1 call chat .hidden 1",
        "sluice/1 call chat -rf 1",
        "sluice/1 call chat " + "a" * 129 + " 1",
        "internal-sftp",
    ],
)
def test_reject_outside_grammar(line: str) -> None:
    _rejects(line)


@pytest.mark.parametrize("char", ["\n", "\r", "\x00", "\t", "\x1b", "\x7f", "\u0661", "\u00e9", "\uff43"])
def test_reject_control_and_non_ascii(char: str) -> None:
    for line in (f"sluice/1 ping{char}", f"sluice/1 call chat m{char}x 1", f"sluice/1 call chat m 1{char}"):
        _rejects(line)
        _rejects(line.encode("utf-8"))


def test_reject_newline_redirect() -> None:
    """The published system's bug: a newline in a model name redirected the backend URL."""
    _rejects("sluice/1 call chat good\nhttp://evil.example 1")


def test_reject_invalid_utf8() -> None:
    _rejects(b"sluice/1 call chat m\xff 1")


def test_reject_over_long_line() -> None:
    _rejects("sluice/1 ping" + " " * MAX_COMMAND_LINE, "line_too_long")
    _rejects("x" * 100_000, "line_too_long")


def test_reject_body_length_over_ceiling() -> None:
    assert MAX_BODY_BYTES < 99_999_999
    _rejects(f"sluice/1 call chat m {MAX_BODY_BYTES + 1}", "body_length")
    assert parse_command_line(f"sluice/1 call chat m {MAX_BODY_BYTES}") == Call("chat", "m", MAX_BODY_BYTES)


def test_reject_mux_inside_a_session() -> None:
    with pytest.raises(Disallowed):
        parse_stream_command(b"mux")
    with pytest.raises(Disallowed):
        parse_stream_command(b"sluice/1 ping")


def test_reject_values_built_in_code() -> None:
    """The appliance builds Call values; they obey the grammar too."""
    for route, model, length in [("files", "m", 1), ("chat", "a b", 1), ("chat", "m\n", 1), ("chat", "m", -1)]:
        with pytest.raises(Disallowed):
            Call(route, model, length)
