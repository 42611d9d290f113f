"""The gate's recognizer for ``request.abnf``: the only way a command line gets in.

Each production of ``request.abnf`` is a named regex fragment below, with its
ABNF quoted above it (the habit of h11's ``_abnf.py``).  Fragments compose into
two anchored patterns compiled once at import; every match is a full match
through :func:`_full_match`.  A match becomes a frozen, typed value and nothing
downstream looks at the raw text again.  Anything else raises
:class:`~policy.errors.Disallowed` with a short code and without the input.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from .errors import Disallowed

__all__ = [
    "PROTOCOL",
    "MAX_COMMAND_LINE",
    "MAX_BODY_BYTES",
    "ROUTE_IDS",
    "Ping",
    "Models",
    "Mux",
    "Keys",
    "Call",
    "SEAL_KINDS",
    "StreamCommand",
    "SessionCommand",
    "parse_command_line",
    "parse_stream_command",
    "command_line",
    "stream_line",
]

# The longest line the grammar can produce is
# "sluice/1 sealed chunked transcriptions " + 128-char model + " " + 8 digits
# = 176 bytes.
# Anything longer is rejected before a regex ever looks at it.
MAX_COMMAND_LINE: Final = 192

# A hard ceiling on any declared body length, whatever a route allows:
# 8 MiB keeps a gate process's memory bounded per request.  Routes set lower
# limits in routes.toml.
MAX_BODY_BYTES: Final = 8 * 1024 * 1024

# protocol = %s"sluice/1"
PROTOCOL: Final = "sluice/1"
_protocol = re.escape(PROTOCOL)

# route-id = %s"chat" / %s"completions" / %s"embeddings" / %s"responses"
#          / %s"rerank" / %s"score" / %s"transcriptions" / %s"translations"
ROUTE_IDS: Final = ("chat", "completions", "embeddings", "responses", "rerank", "score", "transcriptions", "translations")
_route_id = "(?:" + "|".join(ROUTE_IDS) + ")"

# name-start = ALPHA / DIGIT
_name_start = r"[A-Za-z0-9]"
# name-char = ALPHA / DIGIT / "-" / "_" / "." / ":" / "/"
_name_char = r"[A-Za-z0-9\-_.:/]"
# model-name = name-start 0*127name-char
_model_name = rf"{_name_start}{_name_char}{{0,127}}"

# body-length = "0" / ( %x31-39 0*7DIGIT )
_body_length = r"(?:0|[1-9][0-9]{0,7})"

# seal-kind = %s"ohttp" / %s"chunked"
SEAL_KINDS: Final = ("ohttp", "chunked")
_seal_kind = "(?:" + "|".join(SEAL_KINDS) + ")"

# call = %s"call" SP route-id SP model-name SP body-length
# sealed = %s"sealed" SP seal-kind SP route-id SP model-name SP body-length
_call = (
    rf"(?:call|sealed (?P<seal>{_seal_kind})) "
    rf"(?P<route>{_route_id}) (?P<model>{_model_name}) (?P<length>{_body_length})"
)

# stream-command = ping / models / keys / call / sealed
# ping = %s"ping" ; models = %s"models" ; keys = %s"keys"
_stream_command = rf"(?P<ping>ping)|(?P<models>models)|(?P<keys>keys)|{_call}"

# session-command = mux / stream-command ; mux = %s"mux"
_session_command = rf"(?P<mux>mux)|{_stream_command}"

# command-line = protocol SP session-command
_command_line = rf"{_protocol} (?:{_session_command})"

# re.ASCII keeps [0-9] and friends from matching other scripts' digits.
_COMMAND_LINE_RE: Final = re.compile(_command_line, re.ASCII)
_STREAM_COMMAND_RE: Final = re.compile(_stream_command, re.ASCII)


@dataclass(frozen=True, slots=True)
class Ping:
    """``ping``: liveness, and the trigger of a scheduler pass."""


@dataclass(frozen=True, slots=True)
class Models:
    """``models``: the configured models and their readiness."""


@dataclass(frozen=True, slots=True)
class Keys:
    """``keys``: the gate's public key configurations for sealed requests."""


@dataclass(frozen=True, slots=True)
class Mux:
    """``mux``: a multiplexed session of frames follows on this channel."""


@dataclass(frozen=True, slots=True)
class Call:
    """``call`` (or ``sealed``): one request for ``route`` and ``model`` with ``length`` body bytes.

    ``seal`` is None for a request in the clear, else the seal kind of a
    sealed request ("ohttp" or "chunked"), whose body only the gate can open.
    """

    route: str
    model: str
    length: int
    seal: str | None = None

    def __post_init__(self) -> None:
        # Values built in code (by the appliance) obey the same rules as parsed ones.
        if self.route not in ROUTE_IDS:
            raise Disallowed("unknown_route")
        if self.seal is not None and self.seal not in SEAL_KINDS:
            raise Disallowed("bad_command")
        if not 0 <= self.length <= MAX_BODY_BYTES:
            raise Disallowed("body_length")
        if _STREAM_COMMAND_RE.fullmatch(self.line()) is None:
            raise Disallowed("bad_command")

    def line(self) -> str:
        """The ``call`` or ``sealed`` production for these values (the inverse of parsing)."""
        if self.seal is None:
            return f"call {self.route} {self.model} {self.length}"
        return f"sealed {self.seal} {self.route} {self.model} {self.length}"


StreamCommand = Ping | Models | Keys | Call
SessionCommand = Mux | StreamCommand


def _full_match(pattern: re.Pattern[str], data: bytes | str) -> re.Match[str]:
    """The one place a line is matched: bounded, ASCII-only, and whole."""
    if len(data) > MAX_COMMAND_LINE:
        raise Disallowed("line_too_long")
    if isinstance(data, bytes):
        try:
            text = data.decode("ascii")
        except UnicodeDecodeError:
            raise Disallowed("bad_command") from None
    else:
        text = data
    match = pattern.fullmatch(text)
    if match is None:
        raise Disallowed("bad_command")
    return match


def _typed(match: re.Match[str]) -> StreamCommand:
    if match["ping"] is not None:
        return Ping()
    if match["models"] is not None:
        return Models()
    if match["keys"] is not None:
        return Keys()
    length = int(match["length"])
    if length > MAX_BODY_BYTES:
        raise Disallowed("body_length")
    return Call(match["route"], match["model"], length, match["seal"])


def parse_command_line(data: bytes | str) -> SessionCommand:
    """Parse ``SSH_ORIGINAL_COMMAND`` (``command-line``) into a typed command."""
    match = _full_match(_COMMAND_LINE_RE, data)
    if match["mux"] is not None:
        return Mux()
    return _typed(match)


def parse_stream_command(data: bytes | str) -> StreamCommand:
    """Parse one OPEN frame's payload (``stream-command``) into a typed command."""
    return _typed(_full_match(_STREAM_COMMAND_RE, data))


def command_line(command: SessionCommand) -> str:
    """The ``command-line`` text for ``command``: what the appliance sends."""
    return f"{PROTOCOL} {stream_line(command) if not isinstance(command, Mux) else 'mux'}"


def stream_line(command: StreamCommand) -> str:
    """The ``stream-command`` text for ``command``."""
    if isinstance(command, Ping):
        return "ping"
    if isinstance(command, Models):
        return "models"
    if isinstance(command, Keys):
        return "keys"
    return command.line()
