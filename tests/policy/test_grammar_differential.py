"""The recognizer of request.abnf held against an independent parser of the same file.

``policy.grammar`` compiles request.abnf by hand into regexes.  Here the PyPI
``abnf`` package reads ``policy/request.abnf`` itself (RFC 5234 with RFC 7405
``%s"..."``) and is the oracle: for every input both must agree on accept or
reject.  The recognizer may reject more in exactly two documented ways, both
checked after the match (grammar.py names them):

* a line longer than ``MAX_COMMAND_LINE`` (``line_too_long``);
* a ``body-length`` above ``MAX_BODY_BYTES`` (``body_length``).

Inputs come from the grammar file, not from a hand-written copy of it: a
hypothesis strategy is derived by walking the rule tree the ``abnf`` package
built (:func:`_strategy`), then mutated (bit flips, insertions, deletions,
truncations, duplications, case changes, Unicode look-alikes, control
characters).  Each input is checked as ``str`` (what ``os.environ`` gives) and
as bytes (UTF-8, and raw bytes with high bits set).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from abnf.parser import (
    Alternation,
    Concatenation,
    Literal,
    Option,
    ParseError,
    Prose,
    Repetition,
    Rule,
)
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from policy import grammar
from policy.bodies import load_routes
from policy.errors import Disallowed
from policy.frames import Kind, encode
from policy.grammar import (
    MAX_BODY_BYTES,
    MAX_COMMAND_LINE,
    ROUTE_IDS,
    Call,
    command_line,
    parse_command_line,
    parse_stream_command,
    stream_line,
)

ABNF_PATH = Path(grammar.__file__).with_name("request.abnf")


class RequestAbnf(Rule):
    """The rules of policy/request.abnf, as the ``abnf`` package reads them."""


RequestAbnf.from_file(ABNF_PATH)

COMMAND_LINE = RequestAbnf("command-line")
STREAM_COMMAND = RequestAbnf("stream-command")

# Enough to cover every production many times over in a few seconds on two cores.
EXAMPLES = 400
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# -- the ABNF rule tree, walked ----------------------------------------------------


def _children(parser: Any) -> list[Any]:
    if isinstance(parser, Rule):
        return [parser.definition]
    if isinstance(parser, (Alternation, Concatenation)):
        return list(parser.parsers)
    if isinstance(parser, Repetition):
        return [parser.element]
    if isinstance(parser, Option):
        return [parser.alternation]
    return []


def _check_known(parser: Any) -> None:
    known = (Rule, Alternation, Concatenation, Repetition, Option, Literal)
    if isinstance(parser, Prose) or not isinstance(parser, known):
        raise TypeError(f"request.abnf uses a construct this test cannot walk: {parser}")


@cache
def _strategy(parser: Any) -> st.SearchStrategy[str]:
    """Every string ``parser`` matches, as a hypothesis strategy derived from the tree."""
    _check_known(parser)
    if isinstance(parser, Rule):
        return st.deferred(lambda: _strategy(parser.definition))
    if isinstance(parser, Alternation):
        return st.one_of([_strategy(p) for p in parser.parsers])
    if isinstance(parser, Concatenation):
        return st.tuples(*[_strategy(p) for p in parser.parsers]).map("".join)
    if isinstance(parser, Repetition):
        low, high = parser.repeat.min, parser.repeat.max
        return st.lists(_strategy(parser.element), min_size=low, max_size=high if high is not None else low + 8).map("".join)
    if isinstance(parser, Option):
        return st.one_of(st.just(""), _strategy(parser.alternation))
    if isinstance(parser.value, tuple):
        low, high = parser.value
        return st.integers(ord(low), ord(high)).map(chr)
    if parser.case_sensitive:
        return st.just(parser.value)
    # RFC 5234 char-val: case-insensitive over ASCII letters.
    return st.tuples(*[st.sampled_from(sorted({c.lower(), c.upper()})) for c in parser.value]).map("".join)


def _longest(parser: Any) -> str:
    """The longest string ``parser`` matches (one of them); fails on unbounded repetition."""
    _check_known(parser)
    if isinstance(parser, Rule):
        return _longest(parser.definition)
    if isinstance(parser, Alternation):
        return max((_longest(p) for p in parser.parsers), key=len)
    if isinstance(parser, Concatenation):
        return "".join(_longest(p) for p in parser.parsers)
    if isinstance(parser, Repetition):
        if parser.repeat.max is None:
            raise AssertionError(f"unbounded repetition in request.abnf: {parser}")
        return _longest(parser.element) * parser.repeat.max
    if isinstance(parser, Option):
        return _longest(parser.alternation)
    return parser.value[1] if isinstance(parser.value, tuple) else parser.value


def _find(node: Any, name: str) -> Any | None:
    if getattr(node, "name", None) == name:
        return node
    for child in getattr(node, "children", ()):
        found = _find(child, name)
        if found is not None:
            return found
    return None


# -- the oracle --------------------------------------------------------------------


def _verbs() -> frozenset[str]:
    """The names of the commands: the rules that session-command and stream-command choose between."""
    names: set[str] = set()
    for name in ("session-command", "stream-command"):
        definition = RequestAbnf(name).definition
        alternatives = definition.parsers if isinstance(definition, Alternation) else [definition]
        names.update(p.name for p in alternatives if isinstance(p, Rule))
    return frozenset(names - {"stream-command"})


VERBS = _verbs()


def _verb_node(node: Any) -> Any:
    if getattr(node, "name", None) in VERBS:
        return node
    for child in getattr(node, "children", ()):
        found = _verb_node(child)
        if found is not None:
            return found
    return None


def _oracle(rule: Rule, data: str | bytes) -> tuple[str, object]:
    """("accept", (verb, fields)) or ("reject", code): the abnf parse plus the documented bounds."""
    if len(data) > MAX_COMMAND_LINE:
        return "reject", "line_too_long"
    # latin-1 maps each octet to the code point of the same value (abnf's own advice).
    text = data.decode("latin-1") if isinstance(data, bytes) else data
    try:
        tree = rule.parse_all(text)
    except ParseError:
        return "reject", "bad_command"
    verb = _verb_node(tree)
    length = _find(verb, "body-length")
    if length is not None and int(length.value) > MAX_BODY_BYTES:
        return "reject", "body_length"
    fields = tuple(sorted(child.value for child in verb.children if child.name not in ("literal", "SP")))
    # A command without fields is known by its verb; one with fields by the values they hold
    # (a `sealed` has its seal kind among them, a `call` has not).
    return "accept", (verb.name, ()) if not fields else ("with fields", fields)


def _recognizer(parse: Callable[[str | bytes], object], data: str | bytes) -> tuple[str, object]:
    """The same shape from the typed value: its class for a command without fields, else their values.

    The round trip (checked in :func:`_agree`) then pins the verb of the rest.
    """
    try:
        value = parse(data)
    except Disallowed as exc:
        return "reject", exc.code
    values = [getattr(value, f.name) for f in dataclasses.fields(value)]  # type: ignore[arg-type]
    fields = tuple(sorted(str(v) for v in values if v is not None))
    return "accept", (type(value).__name__.lower(), ()) if not fields else ("with fields", fields)


def _agree(text: str) -> None:
    """Both parsers agree on ``text`` as str and as bytes, for both entry points."""
    forms: list[str | bytes] = [text, text.encode("utf-8", "surrogatepass")]
    for form in forms:
        assert _recognizer(parse_command_line, form) == _oracle(COMMAND_LINE, form), form
        assert _recognizer(parse_stream_command, form) == _oracle(STREAM_COMMAND, form), form
    verdict = _recognizer(parse_command_line, text)
    if verdict[0] == "accept":
        assert command_line(parse_command_line(text)) == text
    if _recognizer(parse_stream_command, text)[0] == "accept":
        assert stream_line(parse_stream_command(text)) == text


# -- mutations ---------------------------------------------------------------------

CONTROLS = ["\r", "\n", "\r\n", "\x00", "\t", "\x1b", "\x7f", "\x0b", "\x0c"]


def _lookalike(char: str) -> list[str]:
    """Characters that look like ``char`` but are not it."""
    out = []
    if "!" <= char <= "~":
        out.append(chr(ord(char) + 0xFEE0))  # fullwidth form
    if char.isdigit():
        out += [chr(0x0660 + int(char)), chr(0x06F0 + int(char)), chr(0xFF10 + int(char))]  # Arabic-Indic
    cyrillic = {
        "a": "\u0430",
        "c": "\u0441",
        "e": "\u0435",
        "o": "\u043e",
        "p": "\u0440",
        "x": "\u0445",
        "s": "\u0455",
        "i": "\u0456",
        "l": "\u04cf",
        "C": "\u0421",
        "M": "\u041c",
    }
    if char in cyrillic:
        out.append(cyrillic[char])
    if char == " ":
        out += ["\u00a0", "\u2007", "\u202f", "\u3000", "\u2028"]
    if char == "/":
        out += ["\u2215", "\u2044"]
    if char == "-":
        out += ["\u2010", "\u2212"]
    if char == ".":
        out += ["\u2024"]
    if char == "k":
        out += ["\u212a"]  # Kelvin sign: folds to "k" in full Unicode case folding
    if char == "s":
        out += ["\u017f"]  # long s: folds to "s"
    return out or ["\u00e9"]


@st.composite
def _mutated(draw: st.DrawFn, base: st.SearchStrategy[str]) -> str:
    line = draw(base)
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(line)))
        kind = draw(
            st.sampled_from(["flip", "insert", "delete", "truncate", "duplicate", "case", "lookalike", "control", "digits"])
        )
        if kind == "flip" and line:
            at = min(at, len(line) - 1)
            line = line[:at] + chr(ord(line[at]) ^ (1 << draw(st.integers(0, 7)))) + line[at + 1 :]
        elif kind == "insert":
            char = draw(st.one_of(st.characters(max_codepoint=0x7F), st.characters(max_codepoint=0x2FFF)))
            line = line[:at] + char + line[at:]
        elif kind == "delete":
            line = line[:at] + line[at + 1 :]
        elif kind == "truncate":
            line = line[:at]
        elif kind == "duplicate":
            start = draw(st.integers(0, at))
            line = line[:at] + line[start:at] + line[at:]
        elif kind == "case":
            start = draw(st.integers(0, at))
            line = line[:start] + line[start:at].swapcase() + line[at:]
        elif kind == "lookalike" and line:
            at = min(at, len(line) - 1)
            line = line[:at] + draw(st.sampled_from(_lookalike(line[at]))) + line[at + 1 :]
        elif kind == "control":
            line = line[:at] + draw(st.sampled_from(CONTROLS)) + line[at:]
        elif kind == "digits":
            line = line + draw(st.sampled_from(["0", "9", "00000000", "8388608", "8388609"]))
    return line


GENERATED_LINES = _strategy(COMMAND_LINE)
GENERATED_STREAM = _strategy(STREAM_COMMAND)
# Every verb equally often (the grammar's own nesting would make `mux` half of all lines):
# the verbs with fields carry most of the grammar (route, model, length) and get mutated most.
GENERATED_VERBS = st.tuples(
    _strategy(RequestAbnf("protocol")),
    _strategy(RequestAbnf("SP")),
    st.one_of([_strategy(RequestAbnf(verb)) for verb in sorted(VERBS)]),
).map("".join)


# -- properties --------------------------------------------------------------------


@SETTINGS
@given(GENERATED_LINES)
@example(f"sluice/1 call chat {'a' * 128} {MAX_BODY_BYTES}")
@example(f"sluice/1 call completions {'Z' * 128} {MAX_BODY_BYTES + 1}")
@example("sluice/1 call embeddings 9 99999999")
def test_generated_lines_agree_and_round_trip(line: str) -> None:
    _agree(line)
    # A line the grammar makes is refused only for its body length, never its size.
    assert _oracle(COMMAND_LINE, line) in (("reject", "body_length"), _recognizer(parse_command_line, line))


@SETTINGS
@given(GENERATED_STREAM)
def test_generated_stream_commands_agree_and_round_trip(line: str) -> None:
    _agree(line)
    _agree(f"{grammar.PROTOCOL} {line}")


@SETTINGS
@given(st.one_of(_mutated(GENERATED_VERBS), _mutated(GENERATED_LINES), _mutated(GENERATED_STREAM)))
@example("sluice/1 call chat good\nhttp://evil.example 1")
@example("sluice/1 call \u0441hat m 1")
@example("sluice/1\u00a0ping")
@example("sluice/1 call chat m \u0661\u0662")
@example("sluice/1 call chat m 1\x00")
@example("SLUICE/1 PING")
@example("sluice/1 call chat \u212aelvin 1")
def test_mutated_lines_agree(line: str) -> None:
    _agree(line)


@SETTINGS
@given(st.one_of(GENERATED_VERBS, GENERATED_LINES), st.data())
def test_mutated_bytes_agree(line: str, data: st.DataObject) -> None:
    """Raw byte edits, including bytes that are not ASCII or not UTF-8 at all."""
    raw = bytearray(line.encode())
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(raw)))
        byte = data.draw(st.integers(0, 255))
        if data.draw(st.booleans()) and at < len(raw):
            raw[at] = byte
        else:
            raw.insert(at, byte)
    for parse, rule in ((parse_command_line, COMMAND_LINE), (parse_stream_command, STREAM_COMMAND)):
        assert _recognizer(parse, bytes(raw)) == _oracle(rule, bytes(raw))


# Every character a single edit can bring in: all of ASCII (controls included), the
# rest of Latin-1 (as str; as bytes they are not UTF-8), and look-alikes of the
# grammar's own characters.
EDIT_ALPHABET = sorted(
    {chr(c) for c in range(0x80)}
    | {"\x80", "\x85", "\xa0", "\xad", "\xc0", "\xe9", "\xff"}
    | {x for c in " -./:0123456789acehklopsxCM" for x in _lookalike(c)}
)


def _single_edits(line: str) -> set[str]:
    """Every line one substitution, insertion or deletion away from ``line``."""
    out = set()
    for at in range(len(line) + 1):
        out.update(line[:at] + char + line[at:] for char in EDIT_ALPHABET)
        if at < len(line):
            out.update(line[:at] + char + line[at + 1 :] for char in EDIT_ALPHABET)
            out.add(line[:at] + line[at + 1 :])
    return out


def _sample(parser: Any, k: int = 0) -> str:
    """One deterministic string ``parser`` matches; ``k`` rotates the choices so that samples differ."""
    _check_known(parser)
    if isinstance(parser, Rule):
        return _sample(parser.definition, k)
    if isinstance(parser, Alternation):
        return _sample(parser.parsers[k % len(parser.parsers)], k)
    if isinstance(parser, Concatenation):
        return "".join(_sample(p, k + i) for i, p in enumerate(parser.parsers))
    if isinstance(parser, Repetition):
        count = parser.repeat.min + 3 if parser.repeat.max is None else min(parser.repeat.max, parser.repeat.min + 3)
        return "".join(_sample(parser.element, k + i) for i in range(count))
    if isinstance(parser, Option):
        return _sample(parser.alternation, k)
    if isinstance(parser.value, tuple):
        low, high = map(ord, parser.value)
        return chr(low + k % (high - low + 1))
    return parser.value


# One grammatical line per verb, from the grammar itself, as a command line and
# (for the verbs an OPEN frame may carry) as a stream command.
NEIGHBOURHOOD_SEEDS = [
    (COMMAND_LINE, parse_command_line, f"{_sample(RequestAbnf('protocol'))} {_sample(RequestAbnf(verb), 1)}")
    for verb in sorted(VERBS)
] + [
    (STREAM_COMMAND, parse_stream_command, _sample(RequestAbnf(verb), 2))
    for verb in sorted(VERBS)
    if _oracle(STREAM_COMMAND, _sample(RequestAbnf(verb), 2))[0] == "accept"
]


@pytest.mark.parametrize(
    ("rule", "parse", "line"),
    NEIGHBOURHOOD_SEEDS,
    ids=[f"{rule.name}:{line}" for rule, _, line in NEIGHBOURHOOD_SEEDS],
)
def test_single_edit_neighbourhood_agrees(rule: Rule, parse: Callable[[str | bytes], object], line: str) -> None:
    """Exhaustive, not sampled: every one-character edit of a grammatical line."""
    rule.parse_all(line)
    for edited in _single_edits(line):
        assert _recognizer(parse, edited) == _oracle(rule, edited), edited


@pytest.mark.parametrize("size", [MAX_COMMAND_LINE, MAX_COMMAND_LINE + 1, 10_000])
def test_over_long_lines_agree(size: int) -> None:
    line = ("sluice/1 call chat " + "a" * size)[:size]
    _agree(line)
    _agree(line + " 1")


# -- the grammar file and the code that names its parts ------------------------------


def _literals(parser: Any) -> list[Literal]:
    if isinstance(parser, Literal):
        return [parser]
    return [lit for child in _children(parser) for lit in _literals(child)]


def test_route_ids_are_one_list() -> None:
    """request.abnf, policy.grammar.ROUTE_IDS and routes.toml name the same routes."""
    literals = _literals(RequestAbnf("route-id").definition)
    assert all(lit.case_sensitive and isinstance(lit.value, str) for lit in literals), 'route ids must be %s"..."'
    in_abnf = sorted(lit.value for lit in literals)
    assert in_abnf == sorted(ROUTE_IDS) == sorted(load_routes().ids)


def test_keywords_are_case_sensitive() -> None:
    """Every keyword of the grammar is %s"...": "SLUICE/1 PING" is not "sluice/1 ping"."""
    for rule in RequestAbnf.rules():
        for lit in _literals(rule.definition):
            if isinstance(lit.value, str) and lit.value.lower() != lit.value.upper():
                assert lit.case_sensitive, (rule.name, lit.value)


def test_max_command_line_bounds_every_line_the_grammar_makes() -> None:
    """The grammar has no unbounded repetition, and its longest line fits MAX_COMMAND_LINE.

    So the length check in grammar.py never rejects a line the grammar accepts:
    the longest grammatical line is refused for its body length, not its size.
    """
    longest = _longest(COMMAND_LINE)
    COMMAND_LINE.parse_all(longest)
    assert len(longest) <= MAX_COMMAND_LINE
    with pytest.raises(Disallowed) as info:
        parse_command_line(longest)
    assert info.value.code == "body_length"  # 8 nines: grammatical, above MAX_BODY_BYTES
    accepted = longest.rsplit(" ", 1)[0] + f" {MAX_BODY_BYTES}"
    assert isinstance(parse_command_line(accepted), Call)
    # Every stream command fits the payload bound of an OPEN frame.
    longest_stream = _longest(STREAM_COMMAND)
    assert len(longest_stream) <= MAX_COMMAND_LINE
    encode(Kind.OPEN, 1, longest_stream.encode("ascii"))
