"""Strict ``multipart/form-data`` (RFC 7578 over RFC 2046) for the audio routes.

The second body kind of the route policy, beside strict JSON.  One parse,
sans-IO, over the whole body; anything that is not the one plain shape below
raises :class:`~policy.errors.BodyRejected` with a short code and never the
input:

* The body starts with the delimiter line (no preamble) and ends with the
  close delimiter, optionally followed by one CRLF (no epilogue).  A boundary
  is 1 to 70 of RFC 2046's ``bchars``, not ending in a space; when the
  Content-Type header names one (the appliance, a sealed request), the body
  must use exactly that one ("lying boundary"); without a header (the gate's
  clear ``call``, whose body the appliance already checked against it) it is
  the body's first line.
* Every delimiter is followed by CRLF or ``--``: no transport padding, no
  line that only starts like a delimiter.
* Each part has 1 to :data:`MAX_PART_HEADERS` header lines of printable
  ASCII (no folding, no bare CR or LF, no NUL): ``Content-Disposition``
  (required: ``form-data; name="..."`` and, on the file part only,
  ``filename="..."``) and ``Content-Type``; any other header, a header named
  twice, ``filename*`` or an unquoted parameter is refused.
* Part names are allowlisted by the route; only names ending in ``[]``
  (arrays) may repeat; exactly one part is the file, at most
  ``max_file_bytes`` long, whose leading bytes must be audio
  (policy/_audio.py); no part is itself multipart (by its type or its first
  line).
* A file name is checked (ASCII letters, digits, ``._ -``, no path, at most
  :data:`MAX_FILENAME_CHARS`) and then dropped: nothing downstream sees it.
  :func:`build_form` writes the gate's own body with its own boundary and a
  file name of its own (``audio.<kind>``).

Codes (400 unless said): ``bad_content_type`` (415), ``bad_boundary``,
``no_final_boundary``, ``trailing_data``, ``too_many_parts``,
``bad_part_header``, ``unknown_part``, ``duplicate_part``, ``missing_part``,
``nested_multipart``, ``bad_filename``, ``bad_field``, ``file_too_large``
(413), ``body_too_large`` (413), ``not_audio``.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

from ._audio import AudioInfo, sniff_audio
from ._limits import _NOT_JSON, _TOO_LARGE
from .errors import BodyRejected

__all__ = [
    "MAX_BOUNDARY_CHARS",
    "MAX_PARTS",
    "MAX_PART_HEADERS",
    "MAX_PART_HEADER_BYTES",
    "MAX_FIELD_BYTES",
    "MAX_FILENAME_CHARS",
    "FormSpec",
    "AudioFile",
    "Form",
    "boundary_of",
    "parse_form",
    "build_form",
    "new_boundary",
]

# RFC 2046 section 5.1.1: a boundary is 1 to 70 characters.
MAX_BOUNDARY_CHARS: Final = 70

# Parts per body: the audio routes have one file and fewer than ten fields;
# repeated array fields (timestamp_granularities[]) take a few more.
MAX_PARTS: Final = 16

# Header lines per part: Content-Disposition and Content-Type are all a form needs.
MAX_PART_HEADERS: Final = 2

# Bytes of one part's header block: two lines with a 128-character file name fit many times.
MAX_PART_HEADER_BYTES: Final = 1024

# Bytes of one non-file field: a transcription prompt is a few hundred tokens.
MAX_FIELD_BYTES: Final = 16 * 1024

# Characters of a file name (which is checked, then dropped).
MAX_FILENAME_CHARS: Final = 128

_PART_NAMES: Final = {b"content-disposition", b"content-type"}
_CRLF: Final = b"\r\n"

# bchars := bcharsnospace / " " ; bcharsnospace := DIGIT / ALPHA / "'" / "(" / ")" /
#           "+" / "_" / "," / "-" / "." / "/" / ":" / "=" / "?"
# boundary := 0*69<bchars> bcharsnospace
_BCHARSNOSPACE = r"0-9A-Za-z'()+_,\-./:=?"
_BOUNDARY_RE: Final = re.compile(rf"[{_BCHARSNOSPACE} ]{{0,69}}[{_BCHARSNOSPACE}]", re.ASCII)
# Content-Type: multipart/form-data; boundary=<token or quoted boundary>, nothing else.
_CONTENT_TYPE_RE: Final = re.compile(
    r"multipart/form-data;[ ]?boundary=(?:\"(?P<quoted>[^\"]{1,70})\"|(?P<token>[0-9A-Za-z'+_\-.]{1,70}))",
    re.ASCII | re.IGNORECASE,
)
# A header line: a token name, a colon, optional space, printable bytes (Latin-1 above
# 0x7f is let through here so that a non-ASCII file name is told apart below).
_HEADER_RE: Final = re.compile(rb"([A-Za-z0-9\-]{1,64}):[ ]?([\x20-\x7e\x80-\xff]{0,1000})")
# Content-Disposition: form-data, then quoted parameters only.
_DISPOSITION_RE: Final = re.compile(r'form-data((?:; [A-Za-z*]{1,16}="[^"]*")*)', re.ASCII)
_PARAM_RE: Final = re.compile(r'; ([A-Za-z*]{1,16})="([^"]*)"')
_NAME_RE: Final = re.compile(r"[a-z][a-z0-9_]{0,63}(?:\[\])?", re.ASCII)
_FILENAME_RE: Final = re.compile(r"[A-Za-z0-9_\-][A-Za-z0-9_\-. ]{0,127}", re.ASCII)
# A part's own Content-Type: type/subtype and optional parameters.
_MEDIA_RE: Final = re.compile(r"([a-z0-9][a-z0-9.+\-]{0,63})/([a-z0-9][a-z0-9.+\-]{0,63})(?:;.{0,200})?", re.ASCII)
_NESTED_TYPES: Final = ("multipart", "message")


@dataclass(frozen=True, slots=True)
class FormSpec:
    """What one route's form may hold: its field names and its file part."""

    fields: frozenset[str]  # names of single fields
    repeated: frozenset[str]  # names that may repeat (each ends in "[]")
    file_field: str
    max_file_bytes: int


@dataclass(frozen=True, slots=True)
class AudioFile:
    """The file part: its bytes (never in ``repr``) and what its header says."""

    data: bytes = field(repr=False)
    audio: AudioInfo


@dataclass(frozen=True, slots=True)
class Form:
    """A parsed form: its boundary, its fields in order, and its one audio file."""

    boundary: str
    fields: tuple[tuple[str, str], ...] = field(repr=False)
    file: AudioFile


def _reject(code: str, status: int = _NOT_JSON) -> BodyRejected:
    return BodyRejected(code, status)


def boundary_of(content_type: str) -> str:
    """The boundary a ``multipart/form-data`` Content-Type names; ``bad_content_type`` (415) otherwise."""
    match = _CONTENT_TYPE_RE.fullmatch(content_type.strip()) if len(content_type) <= 200 else None
    if match is None:
        raise _reject("bad_content_type", 415)
    boundary = match["quoted"] or match["token"]
    if _BOUNDARY_RE.fullmatch(boundary) is None:
        raise _reject("bad_boundary")
    return boundary


def _first_boundary(body: bytes) -> str:
    """The boundary of the body's first line, ``--<boundary>`` CRLF."""
    end = body.find(_CRLF, 0, MAX_BOUNDARY_CHARS + 4)
    line = body[2:end] if body.startswith(b"--") and end > 2 else b""
    try:
        boundary = line.decode("ascii")
    except UnicodeDecodeError:
        raise _reject("bad_boundary") from None
    if _BOUNDARY_RE.fullmatch(boundary) is None:
        raise _reject("bad_boundary")
    return boundary


def _split(body: bytes, boundary: str) -> list[bytes]:
    """The parts between the delimiters; the close delimiter must end the body."""
    first = b"--" + boundary.encode("ascii") + _CRLF
    if not body.startswith(first):
        raise _reject("bad_boundary")
    delimiter = _CRLF + b"--" + boundary.encode("ascii")
    parts: list[bytes] = []
    at = len(first)
    while True:
        end = body.find(delimiter, at)
        if end < 0:
            raise _reject("no_final_boundary")
        if len(parts) == MAX_PARTS:
            raise _reject("too_many_parts")
        parts.append(body[at:end])
        after = end + len(delimiter)
        tail = body[after : after + 2]
        if tail == b"--":
            if body[after + 2 :] not in (b"", _CRLF):
                raise _reject("trailing_data")
            return parts
        if tail != _CRLF:
            raise _reject("bad_boundary" if len(tail) == 2 else "no_final_boundary")
        at = after + 2


def _headers(block: bytes) -> dict[bytes, bytes]:
    if len(block) > MAX_PART_HEADER_BYTES:
        raise _reject("bad_part_header")
    lines = block.split(_CRLF)
    if len(lines) > MAX_PART_HEADERS:
        raise _reject("bad_part_header")
    headers: dict[bytes, bytes] = {}
    for line in lines:
        match = _HEADER_RE.fullmatch(line)
        if match is None:  # folding, a bare CR or LF, a control byte, no colon
            raise _reject("bad_part_header")
        name = match[1].lower()
        if name not in _PART_NAMES or name in headers:
            raise _reject("bad_part_header")
        headers[name] = match[2]
    return headers


def _disposition(value: bytes) -> tuple[str, str | None]:
    """(name, filename or None) of a Content-Disposition value."""
    text = value.decode("latin-1")
    match = _DISPOSITION_RE.fullmatch(text)
    if match is None:
        raise _reject("bad_part_header")
    params: dict[str, str] = {}
    for key, param in _PARAM_RE.findall(match[1]):
        if key not in ("name", "filename") or key in params:
            raise _reject("bad_part_header")
        params[key] = param
    name = params.get("name")
    if name is None or _NAME_RE.fullmatch(name) is None:
        raise _reject("bad_part_header")
    filename = params.get("filename")
    if filename is not None and (_FILENAME_RE.fullmatch(filename) is None or ".." in filename):
        raise _reject("bad_filename")
    return name, filename


def _media(value: bytes | None) -> str | None:
    """The part's type/subtype in lowercase (None when absent); multipart or message is nested."""
    if value is None:
        return None
    match = _MEDIA_RE.fullmatch(value.decode("latin-1").lower())
    if match is None:
        raise _reject("bad_part_header")
    if match[1] in _NESTED_TYPES:
        raise _reject("nested_multipart")
    return f"{match[1]}/{match[2]}"


def _looks_multipart(content: bytes) -> bool:
    """Content whose first line is a delimiter line: a multipart body inside a part."""
    if not content.startswith(b"--"):
        return False
    try:
        _first_boundary(content)
    except BodyRejected:
        return False
    return True


def parse_form(body: bytes, spec: FormSpec, boundary: str | None = None) -> Form:
    """Parse ``body`` strictly (see the module doc); ``boundary`` from the Content-Type, if there is one."""
    body = body if isinstance(body, bytes) else memoryview(body).tobytes()
    if boundary is None:
        boundary = _first_boundary(body)
    elif _BOUNDARY_RE.fullmatch(boundary) is None:
        raise _reject("bad_boundary")
    fields: list[tuple[str, str]] = []
    seen: set[str] = set()
    audio: AudioFile | None = None
    for part in _split(body, boundary):
        cut = part.find(_CRLF + _CRLF, 0, MAX_PART_HEADER_BYTES + 4)
        if cut < 0:
            raise _reject("bad_part_header")
        headers = _headers(part[:cut])
        content = part[cut + 4 :]
        disposition = headers.get(b"content-disposition")
        if disposition is None:
            raise _reject("bad_part_header")
        name, filename = _disposition(disposition)
        media = _media(headers.get(b"content-type"))
        if name in seen and name not in spec.repeated:
            raise _reject("duplicate_part")
        seen.add(name)
        if _looks_multipart(content):
            raise _reject("nested_multipart")
        if name == spec.file_field:
            if len(content) > spec.max_file_bytes:
                raise _reject("file_too_large", _TOO_LARGE)
            audio = AudioFile(content, sniff_audio(content))
            continue
        if filename is not None:
            raise _reject("bad_part_header")  # only the file part names a file
        if name not in spec.fields and name not in spec.repeated:
            raise _reject("unknown_part")
        if media is not None and media != "text/plain":
            raise _reject("bad_part_header")
        fields.append((name, _field_text(content)))
    if audio is None:
        raise _reject("missing_part")
    return Form(boundary, tuple(fields), audio)


def _field_text(content: bytes) -> str:
    if len(content) > MAX_FIELD_BYTES or b"\x00" in content:
        raise _reject("bad_field")
    try:
        return content.decode("utf-8")
    except UnicodeDecodeError:
        pass  # raised below, without the bytes as context
    raise _reject("bad_field")


def new_boundary() -> str:
    """A boundary of the gate's own: 32 random hex digits after a fixed prefix."""
    return "sluice-" + secrets.token_hex(16)


def build_form(fields: Iterable[tuple[str, str]], file_field: str, audio: AudioFile, boundary: str) -> bytes:
    """The gate's own body: ``fields`` in order, then the file as ``audio.<kind>`` of its sniffed type.

    Raises ``ValueError`` if ``boundary`` occurs in any content (it cannot with
    :func:`new_boundary`'s, short of a collision; the caller draws another).
    """
    if _BOUNDARY_RE.fullmatch(boundary) is None:
        raise ValueError("not a boundary")
    dash = b"--" + boundary.encode("ascii")
    out: list[bytes] = []
    for name, value in fields:
        data = value.encode("utf-8")
        if dash in data:
            raise ValueError("boundary in content")
        out += [dash, b'\r\nContent-Disposition: form-data; name="', name.encode("ascii"), b'"\r\n\r\n', data, _CRLF]
    if dash in audio.data:
        raise ValueError("boundary in content")
    kind = audio.audio.kind.encode("ascii")
    out += [
        dash,
        b'\r\nContent-Disposition: form-data; name="',
        file_field.encode("ascii"),
        b'"; filename="audio.',
        kind,
        b'"\r\nContent-Type: ',
        audio.audio.media_type.encode("ascii"),
        b"\r\n\r\n",
        audio.data,
        _CRLF,
        dash,
        b"--\r\n",
    ]
    return b"".join(out)
