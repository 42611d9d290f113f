"""The injection corpus (threat_model/injection/*.json) against the real gate process.

Every case runs in its own gate process, started the way sshd starts the forced
command (no ``--local-pipe``; the command line in ``SSH_ORIGINAL_COMMAND``), in
exec mode or, for OPEN payloads and frame cases, as a mux session.  Body cases
run again all together as streams of one mux session.  Behind the gate stand
the real stand-in models and a tripwire backend (a listener that counts
connections) serving the model ``tripwire`` that rejected cases name.

For every case: the expected short code in the expected frame, the documented
exit status, the tripwire never contacted, no trace of the input on stdout or
stderr (each input carries the marker ``Zq7pwnMARK``), no Python traceback.
The corpus and its checks live in threat_model/run_corpus.py, which sends the
same bytes to a deployed gate over ssh.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.gate.test_entry import Tripwire, gate_argv, gate_config, tripwire  # noqa: F401  (fixtures)
from tests.conftest import ROOT, Cluster
from tests.services.sshd import USER, Sshd
from threat_model.run_corpus import (
    MARKER,
    Case,
    LocalGate,
    SshGate,
    check,
    check_answer,
    check_leaks,
    load_corpus,
    run_body_session,
    run_case,
)

pytestmark = pytest.mark.integration

CASES = load_corpus()
REJECTED = [case for case in CASES if case.expect != "accepted"]
ACCEPTED = [case for case in CASES if case.expect == "accepted"]
BODIES = [case for case in CASES if case.carrier == "body"]

# What the corpus must cover (the list), by the words its cases use.
TOPICS = {
    "shell metacharacters": ["';'", "'&&'", "pipe", "redirection", "glob"],
    "command substitution": ["command substitution"],
    "path traversal": ["path traversal"],
    "newline/CRLF injection": ["newline", "CRLF"],
    "NUL bytes": ["NUL"],
    "over-long lines": ["longer than MAX_COMMAND_LINE"],
    "lying body lengths": ["lying body length", "early EOF", "trailing bytes"],
    "stream-id reuse": ["stream id reuse"],
    "unknown frame kinds": ["unknown frame kind"],
    "oversized frames": ["oversized frame"],
    "too many streams": ["too many streams"],
    "frame floods": ["frame flood"],
    "JSON bombs": [
        "JSON bomb",
        "huge number",
        "duplicate keys",
        "invalid UTF-8",
        "lone high surrogate",
        "byte order mark",
        "NaN",
    ],
    "unknown fields": ["unknown top-level field"],
    "SSRF": ["SSRF"],
    "prototype pollution": ["__proto__"],
    "smuggling accepted as data": ["accepted as data"],
    "sftp and shell requests": ["sftp", "shell request", "empty command"],
}


@pytest.fixture(scope="module")
def target(gate_config: Path) -> LocalGate:  # noqa: F811
    return LocalGate(gate_argv(gate_config, local_pipe=False), cwd=ROOT)


def test_corpus_is_well_formed() -> None:
    assert len(CASES) >= 60
    for case in CASES:
        assert case.id and case.attacks and "\n" not in case.attacks and case.expect, case.id
        # Every input an attacker can extend carries the marker that the echo checks look for.
        assert MARKER.encode() in case.input_bytes or case.no_marker, case.id
    text = " ".join(case.attacks for case in CASES)
    missing = {topic for topic, words in TOPICS.items() if not any(word in text for word in words)}
    assert not missing, f"the corpus lacks cases for: {sorted(missing)}"


def _assert_case(case: Case, target: LocalGate, tripwire: Tripwire) -> None:  # noqa: F811
    before = tripwire.hits
    result = run_case(target, case)
    assert check(case, result) == [], (case.id, result.frames[-3:], result.stderr[-500:])
    assert tripwire.hits == before, f"{case.id}: a rejected request reached a backend"


@pytest.mark.parametrize("case", REJECTED, ids=lambda case: case.id)
def test_reject_corpus_case(case: Case, target: LocalGate, tripwire: Tripwire) -> None:  # noqa: F811
    _assert_case(case, target, tripwire)


@pytest.mark.parametrize("case", ACCEPTED, ids=lambda case: case.id)
def test_hostile_text_is_accepted_as_data(case: Case, target: LocalGate, tripwire: Tripwire) -> None:  # noqa: F811
    """Header, HTTP and SSE look-alikes inside JSON strings are data: served, and nothing echoed."""
    _assert_case(case, target, tripwire)


def test_reject_bodies_per_stream_in_one_mux_session(target: LocalGate, tripwire: Tripwire) -> None:  # noqa: F811
    """Every body case as one stream of a single session: each gets its answer, the session lives on."""
    before = tripwire.hits
    result, per_case = run_body_session(target, BODIES)
    assert result.status == 0, result.frames[-3:]
    assert not [f for f in result.frames if f.stream == 0], "a body error ended the whole session"
    problems = {case.id: check_answer(case, per_case[case.id]) for case in BODIES}
    assert {k: v for k, v in problems.items() if v} == {}
    assert check_leaks(BODIES[0], result.stdout, result.stderr) == []
    assert tripwire.hits == before


# -- the same bytes over real SSH, as run_corpus.py sends them to a deployed gate -------------

# One case of each kind of carrier and answer, and the ones ssh(1) itself changes.
OVER_SSH = [
    "cl-shell-semicolon",
    "cl-newline-model-redirect",
    "cl-invalid-utf8",
    "cl-over-long-100k",
    "cl-empty-command",
    "cl-shell-request",
    "cl-internal-sftp",
    "cl-body-short",
    "cl-nul-open",
    "fr-too-many-streams",
    "fr-cancel-flood",
    "fr-truncated-payload",
    "bd-ssrf-http-image",
    "bd-smuggle-content",
]


@pytest.fixture(scope="module")
def sshd_gate(cluster: Cluster, tripwire: Tripwire) -> Iterator[tuple[SshGate, Sshd]]:  # noqa: F811
    """Real sshd, the gate as the forced command of a restricted key (tests/services/sshd.py)."""
    backends = [
        ("standin-chat", cluster.chat.port, '["chat", "completions"]', "chat.token"),
        ("standin-embed", cluster.embed.port, '["embeddings"]', "embed.token"),
        ("tripwire", tripwire.port, '["chat", "completions", "embeddings"]', None),
    ]
    lines = ["[gate]", 'routing_table = "routing.json"', "request_timeout = 30"]
    for model, port, routes, token in backends:
        lines += ["[[backends]]", f'model = "{model}"', f'url = "http://127.0.0.1:{port}"', f"routes = {routes}"]
        lines += [f'token_file = "{token}"'] if token else []
    server = Sshd("\n".join(lines) + "\n", {"chat.token": cluster.chat.token, "embed.token": cluster.embed.token})
    try:
        yield SshGate("127.0.0.1", server.client_key, server.known_hosts, user=USER, port=server.port), server
    finally:
        server.stop()


def test_corpus_over_ssh_with_pinned_host_key(sshd_gate: tuple[SshGate, Sshd], tripwire: Tripwire) -> None:  # noqa: F811
    """run_corpus.py's ssh target against real sshd and the forced command: same answers, host key pinned."""
    target, _ = sshd_gate
    before = tripwire.hits
    by_id = {case.id: case for case in CASES}
    failures = {}
    for case_id in OVER_SSH:
        problems = check(by_id[case_id], run_case(target, by_id[case_id]), over_ssh=True)
        if problems:
            failures[case_id] = problems
    bodies = [c for c in BODIES if c.id in OVER_SSH]
    result, per_case = run_body_session(target, bodies)
    for case in bodies:
        failures.update({f"{case.id} (mux)": p for p in [check_answer(case, per_case[case.id])] if p})
    assert failures == {}
    assert result.status == 0 and check_leaks(bodies[0], result.stdout, result.stderr) == []
    assert tripwire.hits == before


def test_corpus_over_ssh_refuses_an_unpinned_host(sshd_gate: tuple[SshGate, Sshd], tmp_path: Path) -> None:
    """A host key that is not the pinned one: ssh refuses, and the run fails instead of passing."""
    _, server = sshd_gate
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    wrong = tmp_path / "known_hosts"
    wrong.write_text(f"[127.0.0.1]:{server.port} {other.with_suffix('.pub').read_text().strip()}\n")
    target = SshGate("127.0.0.1", server.client_key, wrong, user=USER, port=server.port)
    case = next(c for c in CASES if c.id == "cl-shell-semicolon")
    result = run_case(target, case)
    assert result.status == 255 and result.frames == []
    assert check(case, result, over_ssh=True) != []


def test_ssh_target_always_verifies_host_keys(tmp_path: Path) -> None:
    key, known = tmp_path / "key", tmp_path / "known_hosts"
    key.write_text("x")
    with pytest.raises(ValueError, match="known_hosts"):
        SshGate("gate-host", key, tmp_path / "missing")
    known.write_text("")
    argv = SshGate("gate-host", key, known).argv
    assert "StrictHostKeyChecking=yes" in argv and f"UserKnownHostsFile={known}" in argv
    assert not [a for a in argv if a.startswith("StrictHostKeyChecking=") and a != "StrictHostKeyChecking=yes"]
    assert argv[-2:] == ["--", "gate-host"]
    with pytest.raises(ValueError):
        SshGate("-oProxyCommand=id", key, known)


def test_tripwire_never_contacted(tripwire: Tripwire) -> None:  # noqa: F811
    """Runs last in this module: connections still in the listener's queue are counted too."""
    time.sleep(0.2)
    assert tripwire.hits == 0
