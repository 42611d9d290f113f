"""Send the injection corpus (threat_model/injection/*.json) to a gate and check every answer.

Two targets, the same bytes:

* a local gate command, run the way sshd runs the forced command (the
  command line in ``SSH_ORIGINAL_COMMAND``, frames on stdin and stdout)::

      python threat_model/run_corpus.py local -- sluice-cluster gate --config /etc/sluice/cluster.toml

* a deployed gate, over SSH with the system ``ssh`` client, the operator's key
  and a pinned known_hosts file (host keys are always verified; there is no
  option to turn that off)::

      python threat_model/run_corpus.py ssh --identity ~/.ssh/sluice_appliance \\
          --known-hosts ~/.ssh/sluice_known_hosts --user sluice gate-host

Every case names what it attacks, what goes in and the short error code that
must come out.  A case passes when the gate answers with that code and the
documented exit status, echoes nothing of the input (no case's marker string
on stdout or stderr) and prints no Python traceback.  Cases that must be
*accepted* (hostile-looking text that is plain data inside a JSON string) need
a model the target really serves: ``--accept-model`` (default
``standin-chat``).  Rejected cases name the model ``tripwire``: an operator can
configure a backend of that name that only counts connections, to prove on a
deployment what the test suite proves locally -- rejected input never reaches
a backend.

The module is also the corpus loader of ``tests/security/test_injection_corpus.py``.
Standard library only (it runs on an operator's workstation).  Processes (the
gate, or ssh) are started with argument lists, never through a shell.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import select
import subprocess  # nosec B404
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

ROOT: Final = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(ROOT))

from policy.errors import Disallowed
from policy.frames import GATE_KINDS, Frame, FrameDecoder, Kind, encode

__all__ = [
    "ACCEPT_MODEL_PLACEHOLDER",
    "CORPUS_DIR",
    "MARKER",
    "Case",
    "LocalGate",
    "Result",
    "SshGate",
    "check",
    "check_answer",
    "check_leaks",
    "converse",
    "decode_value",
    "load_corpus",
    "main",
    "run_body_session",
    "run_case",
]

CORPUS_DIR: Final = Path(__file__).resolve().with_name("injection")

# Embedded in every input that can carry it: if it ever shows up in the gate's
# stdout or stderr, the gate echoed attacker-controlled input.
MARKER: Final = "Zq7pwnMARK"

# Replaced in accepted cases by a model the target serves (--accept-model).
ACCEPT_MODEL_PLACEHOLDER: Final = "$ACCEPT_MODEL"

# The gate's exit status per answer: a violation ends the process with 2; a
# stream's ERROR or a served request ends it with 0 (entry.py documents both).
EXIT_STATUS: Final = {"goaway": 2, "error": 0, "accepted": 0}

# How long one case may take end to end.
CASE_TIMEOUT: Final = 30.0

_FRAME_KINDS: Final = {"OPEN": Kind.OPEN, "DATA": Kind.DATA, "CANCEL": Kind.CANCEL}


# -- the corpus ----------------------------------------------------------------------


def decode_value(value: Any) -> bytes:
    """A corpus value as bytes.

    A JSON string is its UTF-8 encoding (JSON escapes such as ``\\u0000`` make
    control characters readable); ``{"b64": ...}`` is raw bytes (invalid UTF-8,
    a byte order mark); ``{"json": ...}`` is that JSON value serialized compactly
    with every non-ASCII character escaped (so ``"\\ud800"`` stays a lone
    surrogate escape); ``{"concat": [...]}`` joins values, where an element
    ``{"repeat": value, "times": n}`` repeats one (deep nesting, long lines).
    """
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, dict) and len(value) == 1:
        ((key, inner),) = value.items()
        if key == "b64":
            return base64.b64decode(inner, validate=True)
        if key == "json":
            return json.dumps(inner, separators=(",", ":"), ensure_ascii=True).encode("ascii")
        if key == "concat":
            return b"".join(decode_value(part) for part in inner)
    if isinstance(value, dict) and set(value) == {"repeat", "times"}:
        return decode_value(value["repeat"]) * int(value["times"])
    raise ValueError(f"not a corpus value: {value!r:.80}")


@dataclass(frozen=True)
class Case:
    """One attack: what goes to the gate and what must come back."""

    file: str
    id: str
    attacks: str
    expect: str  # a short error code, or "accepted"
    answer: str  # "goaway", "error" or "accepted"
    carrier: str  # "exec" (SSH_ORIGINAL_COMMAND), "open" (an OPEN payload), "frames", "body"
    command: bytes | None = None  # exec: the command line; None: no command (a shell request)
    stdin: bytes = b""  # exec: the body bytes; frames: the wire bytes after "sluice/1 mux"
    route: str = ""  # body cases
    model: str = ""
    eof_after_write: bool = False  # frames: close stdin right after writing (truncation)
    no_marker: str = ""  # why this input cannot carry the marker
    ssh_expect: str = ""  # what the ssh(1) client turns this case into, if different
    status_class: str = "4"  # error: the first digit of the status hint (4: the peer's fault)

    @property
    def exit_status(self) -> int:
        return EXIT_STATUS[self.answer]

    @property
    def input_bytes(self) -> bytes:
        """Everything of this case that comes from the attacker."""
        return (self.command or b"") + self.stdin


def _frames(specs: Sequence[Mapping[str, Any]]) -> bytes:
    """Wire bytes from frame specs: {"kind", "stream", "payload", "repeat", "stream_step"} or {"raw"}."""
    out = bytearray()
    for spec in specs:
        if "raw" in spec:
            out += decode_value(spec["raw"])
            continue
        kind = _FRAME_KINDS[spec["kind"]]
        payload = decode_value(spec.get("payload", ""))
        stream = int(spec["stream"])
        for _ in range(int(spec.get("repeat", 1))):
            out += encode(kind, stream, payload)
            stream += int(spec.get("stream_step", 0))
    return bytes(out)


def _case(file: str, defaults: Mapping[str, Any], raw: Mapping[str, Any], accept_model: str) -> Case:
    entry = {**defaults, **raw}
    expect = entry["expect"]
    answer = "accepted" if expect == "accepted" else entry["answer"]
    carrier = entry["carrier"]
    common: dict[str, Any] = {
        "file": file,
        "id": entry["id"],
        "attacks": entry["attacks"],
        "expect": expect,
        "answer": answer,
        "carrier": carrier,
        "no_marker": entry.get("no_marker", ""),
        "ssh_expect": entry.get("ssh_expect", ""),
        "status_class": entry.get("status_class", "4"),
    }
    if carrier == "exec":
        command = None if entry["input"] is None else decode_value(entry["input"])
        return Case(**common, command=command, stdin=decode_value(entry.get("stdin", "")))
    if carrier == "open":
        return Case(**common, command=b"sluice/1 mux", stdin=encode(Kind.OPEN, 1, decode_value(entry["input"])))
    if carrier == "frames":
        return Case(
            **common,
            command=b"sluice/1 mux",
            stdin=_frames(entry["input"]),
            eof_after_write=bool(entry.get("eof_after_write", False)),
        )
    if carrier == "body":
        body = decode_value(entry["input"]).replace(ACCEPT_MODEL_PLACEHOLDER.encode(), accept_model.encode())
        model = entry["model"].replace(ACCEPT_MODEL_PLACEHOLDER, accept_model)
        return Case(
            **common,
            stdin=body,
            route=entry["route"],
            model=model,
            command=f"sluice/1 call {entry['route']} {model} {len(body)}".encode(),
        )
    raise ValueError(f"{file}: {entry['id']}: unknown carrier {carrier!r}")


def load_corpus(directory: Path = CORPUS_DIR, accept_model: str = "standin-chat") -> list[Case]:
    """Every case of every ``*.json`` file in ``directory``, in file order."""
    cases: list[Case] = []
    for path in sorted(directory.glob("*.json")):
        document = json.loads(path.read_text(encoding="utf-8"))
        defaults = document.get("defaults", {})
        cases += [_case(path.name, defaults, raw, accept_model) for raw in document["cases"]]
    ids = [case.id for case in cases]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ValueError(f"duplicate case ids: {duplicates}")
    return cases


# -- targets -------------------------------------------------------------------------


class LocalGate:
    """A gate command on this machine, run as sshd runs the forced command."""

    def __init__(self, argv: Sequence[str], env: Mapping[str, str] | None = None, cwd: Path | None = None) -> None:
        self.argv = list(argv)
        self.env = dict(env if env is not None else {"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
        self.cwd = cwd

    def spawn(self, command: bytes | None) -> subprocess.Popen[bytes]:
        env: dict[str, str | bytes] = dict(self.env)
        if command is not None:
            env["SSH_ORIGINAL_COMMAND"] = command  # bytes: what sshd would put there, verbatim
        # The operator's gate argv, no shell; request bytes only in the environment and on stdin.
        return subprocess.Popen(  # nosec B603
            self.argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=self.cwd,  # type: ignore[arg-type]
        )


class SshGate:
    """A deployed gate behind the appliance's restricted key, through the system ssh client.

    Host keys are checked against ``known_hosts`` only (StrictHostKeyChecking=yes,
    no global file, no key learning); there is deliberately no way to relax that.
    """

    def __init__(
        self, host: str, identity: Path, known_hosts: Path, user: str | None = None, port: int | None = None, ssh: str = "ssh"
    ) -> None:
        if not known_hosts.is_file():
            raise ValueError(
                f"known_hosts file {known_hosts} does not exist: pin the gate's host key first "
                f"(ssh-keyscan -H gate-host > {known_hosts}, then compare the fingerprint)"
            )
        if not identity.is_file():
            raise ValueError(f"identity file {identity} does not exist")
        if host.startswith("-"):
            raise ValueError("the host must not start with '-'")
        self.argv = [
            ssh,
            "-T",
            "-x",
            "-a",
            "-i",
            str(identity),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            f"UserKnownHostsFile={known_hosts}",
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "UpdateHostKeys=no",
            "-o",
            "CheckHostIP=no",
            "-o",
            "ClearAllForwardings=yes",
            "-o",
            "PermitLocalCommand=no",
            # A shared master connection would skip this invocation's host key check.
            "-o",
            "ControlMaster=no",
            "-o",
            "ControlPath=none",
            "-o",
            "LogLevel=ERROR",
        ]
        if user is not None:
            self.argv += ["-l", user]
        if port is not None:
            self.argv += ["-p", str(port)]
        self.argv += ["--", host]

    def spawn(self, command: bytes | None) -> subprocess.Popen[bytes]:
        # ssh(1) sends the remote command as one exec request, byte for byte; no shell
        # on either side sees it (the forced command gets it in SSH_ORIGINAL_COMMAND).
        argv: list[str | bytes] = [*self.argv] + ([command] if command is not None else [])
        return subprocess.Popen(  # nosec B603
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )


# -- one conversation ----------------------------------------------------------------


@dataclass
class Result:
    status: int | None  # None: killed after the timeout
    stdout: bytes
    stderr: bytes
    frames: list[Frame]
    undecodable: str = ""  # the gate wrote something that is not gate frames


def converse(
    target: LocalGate | SshGate,
    command: bytes | None,
    data: bytes,
    *,
    eof_after_write: bool = True,
    done: Callable[[list[Frame]], bool] = lambda frames: False,
    timeout: float = CASE_TIMEOUT,
) -> Result:
    """Start the gate with ``command``, write ``data``, read frames until ``done`` or end of output.

    With ``eof_after_write`` stdin is closed as soon as ``data`` is written (exec
    mode: the body, then end of input); otherwise only once ``done`` holds, the
    output ends or time runs out (a mux session the appliance keeps open).
    """
    process = target.spawn(command)
    stdin, stdout, stderr = process.stdin, process.stdout, process.stderr
    if stdin is None or stdout is None or stderr is None:
        raise RuntimeError("the gate process has no pipes")
    errors: list[bytes] = []
    reader = threading.Thread(target=lambda: errors.append(stderr.read()), daemon=True)
    reader.start()

    def write() -> None:
        try:
            stdin.write(data)
            stdin.flush()
            if eof_after_write:
                stdin.close()
        except (BrokenPipeError, ValueError):
            pass  # the gate refused and left: that is an answer too

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    decoder = FrameDecoder(GATE_KINDS)
    frames: list[Frame] = []
    out = bytearray()
    undecodable = ""
    deadline = time.monotonic() + timeout
    fd = stdout.fileno()
    closed = False
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], min(max(deadline - time.monotonic(), 0), 0.5))
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            out += chunk
            if not undecodable:
                try:
                    frames += decoder.feed(chunk)
                except Disallowed as exc:
                    undecodable = exc.code
        if not closed and done(frames):
            # The answer is complete: end the session as the appliance would, then read to the end.
            writer.join(timeout=max(deadline - time.monotonic(), 0))
            if not writer.is_alive():
                _close(stdin)
            closed = True
    writer.join(timeout=1)
    if writer.is_alive():  # the gate neither reads nor exits: end it, which also ends the write
        process.kill()
        writer.join(timeout=5)
    _close(stdin)
    try:
        status: int | None = process.wait(timeout=max(deadline - time.monotonic(), 1))
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        status = None
    reader.join(timeout=5)
    stdout.close()
    stderr.close()
    if decoder.buffered and not undecodable:
        undecodable = "truncated output"
    return Result(status, bytes(out), b"".join(errors), frames, undecodable)


def _close(stdin: Any) -> None:
    try:
        stdin.close()
    except (BrokenPipeError, OSError, ValueError):
        pass


def _goaway(frames: list[Frame]) -> bool:
    return any(frame.kind is Kind.GOAWAY for frame in frames)


def run_case(target: LocalGate | SshGate, case: Case) -> Result:
    """One case in its own gate process (exec, an OPEN payload, or raw frames)."""
    if case.carrier in ("exec", "body"):
        return converse(target, case.command, case.stdin)
    done = _goaway if case.answer == "goaway" else _refused
    return converse(target, case.command, case.stdin, eof_after_write=case.eof_after_write, done=done)


def _refused(frames: list[Frame]) -> bool:
    """A stream refused on its own (ERROR), or the session ended (GOAWAY, then a wrong answer)."""
    return any(frame.kind in (Kind.ERROR, Kind.GOAWAY) for frame in frames)


def run_body_session(target: LocalGate | SshGate, cases: Sequence[Case]) -> tuple[Result, dict[str, list[Frame]]]:
    """All body cases in ONE mux session, one stream each: a body error ends only its stream."""
    wire = bytearray()
    streams: dict[int, Case] = {}
    for index, case in enumerate(cases):
        stream = index + 1  # consecutive ids (policy/FRAMES.md)
        streams[stream] = case
        wire += encode(Kind.OPEN, stream, f"call {case.route} {case.model} {len(case.stdin)}".encode())
        for start in range(0, len(case.stdin), 65536):
            wire += encode(Kind.DATA, stream, case.stdin[start : start + 65536])

    def finished(frames: list[Frame]) -> bool:
        ended = {f.stream for f in frames if f.kind in (Kind.END, Kind.ERROR)}
        return _goaway(frames) or ended >= set(streams)

    result = converse(target, b"sluice/1 mux", bytes(wire), eof_after_write=False, done=finished)
    per_case = {case.id: [f for f in result.frames if f.stream == stream] for stream, case in streams.items()}
    return result, per_case


# -- the verdict ---------------------------------------------------------------------


def check_answer(case: Case, frames: list[Frame], expect: str | None = None) -> list[str]:
    """Problems with ``frames`` as the answer to ``case`` (empty: as expected)."""
    expect = expect or case.expect
    if not frames:
        return ["no answer at all"]
    last = frames[-1]
    if case.answer == "goaway":
        if last != Frame(Kind.GOAWAY, 0, expect.encode()):
            return [f"expected GOAWAY {expect}, got {last.kind.name} {last.payload[:64]!r}"]
        return []
    if case.answer == "error":
        parts = last.payload.split(b" ")
        if last.kind is not Kind.ERROR or len(parts) != 2:
            return [f"expected ERROR ... {expect}, got {last.kind.name} {last.payload[:64]!r}"]
        status, code = parts
        problems = []
        if code != expect.encode():
            problems.append(f"expected code {expect}, got {code!r}")
        if not (len(status) == 3 and status.startswith(case.status_class.encode())):
            problems.append(f"expected a {case.status_class}xx status hint, got {status!r}")
        return problems
    if frames[0].kind is not Kind.HEAD or not frames[0].payload.startswith(b"200 ") or last.kind is not Kind.END:
        return [f"expected 200 ... END, got {[(f.kind.name, f.payload[:32]) for f in frames[:2]]} ... {last.kind.name}"]
    return []


def check_leaks(case: Case, stdout: bytes, stderr: bytes) -> list[str]:
    """The gate echoed nothing of the input and did not crash."""
    problems = []
    markers = (MARKER.encode(), MARKER.encode("utf-16-le"))
    if any(marker in stdout for marker in markers):
        problems.append("stdout echoes the input (marker found)")
    if any(marker in stderr for marker in markers):
        problems.append("stderr echoes the input (marker found)")
    if b"Traceback" in stderr:
        problems.append("a Python traceback on stderr")
    return problems


def check(case: Case, result: Result, *, over_ssh: bool = False) -> list[str]:
    """Every problem with ``result`` as the answer to ``case`` run in its own process."""
    expect = case.ssh_expect if over_ssh and case.ssh_expect else case.expect
    problems = []
    if result.undecodable:
        problems.append(f"output is not gate frames ({result.undecodable})")
    if result.status != case.exit_status:
        problems.append(f"exit status {result.status}, expected {case.exit_status}")
    problems += check_answer(case, result.frames, expect)
    problems += check_leaks(case, result.stdout, result.stderr)
    return problems


# -- the command line ----------------------------------------------------------------


def _select(cases: Iterable[Case], only: Sequence[str]) -> list[Case]:
    chosen = [c for c in cases if not only or c.id in only or c.file in only]
    missing = set(only) - {c.id for c in chosen} - {c.file for c in chosen}
    if missing:
        raise SystemExit(f"no such case or file: {', '.join(sorted(missing))}")
    return chosen


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="run_corpus.py",
        description="Send the Sluice injection corpus to a gate and check every answer.",
    )
    parser.add_argument("--corpus", type=Path, default=CORPUS_DIR, help="folder of *.json case files")
    parser.add_argument(
        "--accept-model",
        default="standin-chat",
        help="a model the target serves on the chat route, for the 'accepted as data' cases",
    )
    parser.add_argument("--only", action="append", default=[], help="a case id or file name (repeatable)")
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    sub = parser.add_subparsers(dest="target")
    local = sub.add_parser("local", help="run a gate command on this machine (as sshd would)")
    local.add_argument(
        "gate", nargs=argparse.REMAINDER, help="the gate command after --, e.g. -- sluice-cluster gate --config cluster.toml"
    )
    remote = sub.add_parser("ssh", help="reach a deployed gate with ssh(1)")
    remote.add_argument("host")
    remote.add_argument("--identity", type=Path, required=True, help="the appliance's private key")
    remote.add_argument("--known-hosts", type=Path, required=True, help="known_hosts file that pins the gate's host key")
    remote.add_argument("--user")
    remote.add_argument("--port", type=int)
    remote.add_argument("--ssh", default="ssh", help="the ssh client binary")
    args = parser.parse_args(argv)

    cases = _select(load_corpus(args.corpus, args.accept_model), args.only)
    if args.list or args.target is None:
        for case in cases:
            print(f"{case.id:40} {case.expect:28} {case.attacks}")
        return 0
    target: LocalGate | SshGate
    if args.target == "local":
        gate = args.gate[1:] if args.gate[:1] == ["--"] else args.gate
        if not gate:
            parser.error("local: give the gate command after --")
        target = LocalGate(gate)
    else:
        try:
            target = SshGate(args.host, args.identity, args.known_hosts, args.user, args.port, args.ssh)
        except ValueError as exc:
            parser.error(str(exc))
    over_ssh = args.target == "ssh"
    failed = 0
    for case in cases:
        if case.carrier == "body":
            continue
        if over_ssh and case.command is not None and b"\x00" in case.command:
            print(f"SKIP {case.id}: ssh cannot carry a NUL in a command")
            continue
        problems = check(case, run_case(target, case), over_ssh=over_ssh)
        failed += bool(problems)
        print(f"{'FAIL' if problems else 'ok  '} {case.id}" + "".join(f"\n     {p}" for p in problems))
    bodies = [c for c in cases if c.carrier == "body"]
    for case in bodies:  # exec mode, one process each
        problems = check(case, run_case(target, case), over_ssh=over_ssh)
        failed += bool(problems)
        print(f"{'FAIL' if problems else 'ok  '} {case.id} (exec)" + "".join(f"\n     {p}" for p in problems))
    if bodies:  # mux mode, one session for all
        result, per_case = run_body_session(target, bodies)
        session = [] if result.status == 0 and not _goaway(result.frames) else [f"session ended {result.status}"]
        session += check_leaks(bodies[0], result.stdout, result.stderr)
        for case in bodies:
            problems = session + check_answer(case, per_case[case.id])
            failed += bool(problems)
            print(f"{'FAIL' if problems else 'ok  '} {case.id} (mux)" + "".join(f"\n     {p}" for p in problems))
    print(f"{failed} failed" if failed else "all cases passed", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
