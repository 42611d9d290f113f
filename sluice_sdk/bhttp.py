"""Binary HTTP messages (RFC 9292), strict and bounded.

What is inside a sealed request or response.  Encoding produces the
known-length form (framing indicators 0 and 1); decoding accepts both the
known-length and the indeterminate-length forms (indicators 2 and 3), with the
truncation and zero padding that RFC 9292 Section 3.8 allows and nothing else.
For streamed responses, :class:`ResponseStreamEncoder` writes the
indeterminate-length form piece by piece and :class:`ResponseStreamDecoder`
reads it incrementally.

Strictness (every violation raises :class:`~sluice_sdk.errors.BhttpError` with
a fixed reason, never the input):

* field names are lowercase tokens (RFC 9110 Section 5.1, RFC 9113 Section
  8.2.1); pseudo-fields are refused, those RFC 9292 Section 3.6 names and any
  other, since no extension is used here;
* field values hold no NUL, CR, LF or other control byte except HTAB, and do not
  start or end with SP or HTAB (RFC 9113 Section 8.2.1);
* method is a token, scheme an RFC 3986 scheme, authority and path RFC 3986
  characters, the path non-empty;
* status codes are 100..199 for informational and 200..599 for final responses;
* padding is zero bytes only; truncation only where RFC 9292 Section 3.8 allows;
* every size has a named bound in :class:`Limits`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from . import _varint
from .errors import BhttpError

__all__ = [
    "Limits",
    "DEFAULT_LIMITS",
    "Fields",
    "Request",
    "Response",
    "InformationalResponse",
    "encode_request",
    "encode_response",
    "decode_request",
    "decode_response",
    "ResponseStreamEncoder",
    "ResponseStreamDecoder",
    "ResponseHead",
    "ResponseData",
    "ResponseEnd",
    "ResponseEvent",
    "encode_varint",
    "decode_varint",
]

# Framing indicators (RFC 9292 Section 3.3).
_KNOWN_REQUEST = 0
_KNOWN_RESPONSE = 1
_INDETERMINATE_REQUEST = 2
_INDETERMINATE_RESPONSE = 3


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds applied while decoding; each refuses input before it costs memory."""

    # Whole encoded message: the largest content plus generous room for fields.
    max_message: int = 16 * 1024 * 1024 + 256 * 1024
    # Content: a chat request with long context or a base64 image stays far
    # below 16 MiB; the gate's route policy applies its own, smaller limit.
    max_content: int = 16 * 1024 * 1024
    # One header or trailer section, names and values together (as h11's
    # 16 KiB default for a whole head, with room for long tokens).
    max_field_section: int = 64 * 1024
    # Field lines in one section.
    max_field_lines: int = 256
    # Each of method, scheme, authority and path.
    max_control: int = 8 * 1024
    # Informational (1xx) responses before the final one.
    max_informational: int = 8


DEFAULT_LIMITS = Limits()

Fields = tuple[tuple[bytes, bytes], ...]

_ALPHA = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_DIGIT = b"0123456789"
# RFC 9110 Section 5.6.2 tchar.
_TCHAR = frozenset(b"!#$%&'*+-.^_`|~" + _DIGIT + _ALPHA)
# Field names: tchar without uppercase (RFC 9113 Section 8.2.1).
_NAME_CHARS = _TCHAR - frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ")
# RFC 3986 Section 3.1 scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." ).
_SCHEME_FIRST = frozenset(_ALPHA)
_SCHEME_REST = frozenset(_ALPHA + _DIGIT + b"+-.")
# RFC 3986: unreserved / pct-encoded / sub-delims, plus the gen-delims each part may hold.
_URI_BASE = frozenset(_ALPHA + _DIGIT + b"-._~" + b"%" + b"!$&'()*+,;=")
_AUTHORITY_CHARS = _URI_BASE | frozenset(b":@[]")
_PATH_CHARS = _URI_BASE | frozenset(b":@/?")
# Field values: VCHAR, obs-text, SP and HTAB (RFC 9110 Section 5.5); no other controls.
_VALUE_CHARS = frozenset(range(0x20, 0x7F)) | frozenset(range(0x80, 0x100)) | frozenset(b"\t")
_WHITESPACE = frozenset(b" \t")


def encode_varint(value: int) -> bytes:
    """Shortest QUIC varint (RFC 9000 Section 16); :class:`BhttpError` out of range."""
    try:
        return _varint.encode(value)
    except ValueError:
        raise BhttpError("integer out of range") from None


def decode_varint(data: bytes, offset: int = 0) -> tuple[int, int]:
    """``(value, next offset)`` of the varint at ``offset``; :class:`BhttpError` if truncated."""
    got = _varint.decode(data, offset)
    if got is None:
        raise BhttpError("truncated integer")
    return got


def _check_bytes(value: object, what: str) -> bytes:
    if not isinstance(value, bytes):
        raise BhttpError(f"{what} must be bytes")
    return value


def _check_name(name: bytes) -> None:
    if not name or not _NAME_CHARS.issuperset(name):
        raise BhttpError("invalid field name")


def _check_value(value: bytes) -> None:
    if not _VALUE_CHARS.issuperset(value):
        raise BhttpError("invalid field value")
    if value and (value[0] in _WHITESPACE or value[-1] in _WHITESPACE):
        raise BhttpError("field value starts or ends with whitespace")


def _normalize_fields(fields: Iterable[tuple[bytes, bytes]]) -> Fields:
    out = []
    for pair in fields:
        if not isinstance(pair, tuple) or len(pair) != 2:
            raise BhttpError("a field is a (name, value) pair")
        name = _check_bytes(pair[0], "field name")
        value = _check_bytes(pair[1], "field value")
        _check_name(name)
        _check_value(value)
        out.append((name, value))
    return tuple(out)


def _header_values(fields: Fields, name: bytes) -> tuple[bytes, ...]:
    return tuple(v for n, v in fields if n == name)


@dataclass(frozen=True, slots=True)
class Request:
    """An HTTP request.  Constructing one validates it (and normalizes fields to tuples)."""

    method: bytes
    scheme: bytes
    authority: bytes
    path: bytes
    headers: Fields = ()
    content: bytes = b""
    trailers: Fields = ()

    def __post_init__(self) -> None:
        method = _check_bytes(self.method, "method")
        scheme = _check_bytes(self.scheme, "scheme")
        authority = _check_bytes(self.authority, "authority")
        path = _check_bytes(self.path, "path")
        if not method or not _TCHAR.issuperset(method):
            raise BhttpError("invalid method")
        if not scheme or scheme[0] not in _SCHEME_FIRST or not _SCHEME_REST.issuperset(scheme):
            raise BhttpError("invalid scheme")
        if not _AUTHORITY_CHARS.issuperset(authority):
            raise BhttpError("invalid authority")
        if not path or not _PATH_CHARS.issuperset(path):
            raise BhttpError("invalid path")
        _check_bytes(self.content, "content")
        object.__setattr__(self, "headers", _normalize_fields(self.headers))
        object.__setattr__(self, "trailers", _normalize_fields(self.trailers))

    def header_values(self, name: bytes) -> tuple[bytes, ...]:
        """Every value of header ``name`` (lowercase), in order."""
        return _header_values(self.headers, name)


@dataclass(frozen=True, slots=True)
class InformationalResponse:
    """A 1xx response that precedes the final one."""

    status: int
    headers: Fields = ()

    def __post_init__(self) -> None:
        if not isinstance(self.status, int) or not 100 <= self.status <= 199:
            raise BhttpError("informational status must be 100..199")
        object.__setattr__(self, "headers", _normalize_fields(self.headers))


@dataclass(frozen=True, slots=True)
class Response:
    """An HTTP response.  Constructing one validates it."""

    status: int
    headers: Fields = ()
    content: bytes = b""
    trailers: Fields = ()
    informational: tuple[InformationalResponse, ...] = field(default=())

    def __post_init__(self) -> None:
        if not isinstance(self.status, int) or not 200 <= self.status <= 599:
            raise BhttpError("final status must be 200..599")
        _check_bytes(self.content, "content")
        object.__setattr__(self, "headers", _normalize_fields(self.headers))
        object.__setattr__(self, "trailers", _normalize_fields(self.trailers))
        informational = tuple(self.informational)
        if not all(isinstance(i, InformationalResponse) for i in informational):
            raise BhttpError("informational responses must be InformationalResponse")
        object.__setattr__(self, "informational", informational)

    def header_values(self, name: bytes) -> tuple[bytes, ...]:
        """Every value of header ``name`` (lowercase), in order."""
        return _header_values(self.headers, name)


# --- encoding (known-length) ---------------------------------------------------------------


def _length_prefixed(value: bytes) -> bytes:
    return encode_varint(len(value)) + value


def _encode_field_lines(fields: Fields) -> bytes:
    return b"".join(_length_prefixed(n) + _length_prefixed(v) for n, v in fields)


def _known_section(fields: Fields) -> bytes:
    return _length_prefixed(_encode_field_lines(fields))


def _known_tail(headers: Fields, content: bytes, trailers: Fields, truncate: bool) -> bytes:
    parts = [_known_section(headers), _length_prefixed(content), _known_section(trailers)]
    if truncate:  # RFC 9292 Section 3.8: empty trailing parts may be left out
        while parts and parts[-1] == b"\x00":
            parts.pop()
    return b"".join(parts)


def encode_request(request: Request, *, truncate: bool = False) -> bytes:
    """Known-length encoding (framing indicator 0), without padding.

    ``truncate`` leaves out empty trailing parts (RFC 9292 Section 3.8), as the
    RFC 9458 Appendix A request does; the default writes every length.
    """
    control = b"".join(_length_prefixed(p) for p in (request.method, request.scheme, request.authority, request.path))
    tail = _known_tail(request.headers, request.content, request.trailers, truncate)
    return encode_varint(_KNOWN_REQUEST) + control + tail


def encode_response(response: Response, *, truncate: bool = False) -> bytes:
    """Known-length encoding (framing indicator 1), without padding."""
    informational = b"".join(encode_varint(i.status) + _known_section(i.headers) for i in response.informational)
    tail = _known_tail(response.headers, response.content, response.trailers, truncate)
    return encode_varint(_KNOWN_RESPONSE) + informational + encode_varint(response.status) + tail


# --- decoding (whole messages) ---------------------------------------------------------------


class _Reader:
    __slots__ = ("data", "pos", "end")

    def __init__(self, data: bytes, pos: int = 0, end: int | None = None) -> None:
        self.data = data
        self.pos = pos
        self.end = len(data) if end is None else end

    def at_end(self) -> bool:
        return self.pos >= self.end

    def varint(self) -> int:
        got = _varint.decode(self.data, self.pos, self.end)
        if got is None:
            raise BhttpError("truncated message")
        value, self.pos = got
        return value

    def take(self, n: int) -> bytes:
        if n > self.end - self.pos:
            raise BhttpError("truncated message")
        start = self.pos
        self.pos += n
        return self.data[start : self.pos]

    def prefixed(self, limit: int) -> bytes:
        n = self.varint()
        if n > limit:
            raise BhttpError("field over limit")
        return self.take(n)


def _field_line(reader: _Reader, name_length: int, limits: Limits) -> tuple[bytes, bytes]:
    if name_length > limits.max_field_section:
        raise BhttpError("field over limit")
    name = reader.take(name_length)
    value = reader.prefixed(limits.max_field_section)
    _check_name(name)
    _check_value(value)
    return name, value


def _known_fields(reader: _Reader, limits: Limits) -> Fields:
    length = reader.varint()
    if length > limits.max_field_section:
        raise BhttpError("field section over limit")
    if length > reader.end - reader.pos:
        raise BhttpError("truncated message")
    section = _Reader(reader.data, reader.pos, reader.pos + length)
    reader.pos += length
    fields: list[tuple[bytes, bytes]] = []
    while not section.at_end():
        if len(fields) >= limits.max_field_lines:
            raise BhttpError("too many field lines")
        name_length = section.varint()
        if name_length == 0:
            raise BhttpError("empty field name")
        fields.append(_field_line(section, name_length, limits))
    return tuple(fields)


def _indeterminate_fields(reader: _Reader, limits: Limits) -> Fields:
    start = reader.pos
    fields: list[tuple[bytes, bytes]] = []
    while True:
        name_length = reader.varint()
        if name_length == 0:
            return tuple(fields)
        if len(fields) >= limits.max_field_lines:
            raise BhttpError("too many field lines")
        fields.append(_field_line(reader, name_length, limits))
        if reader.pos - start > limits.max_field_section:
            raise BhttpError("field section over limit")


def _indeterminate_content(reader: _Reader, limits: Limits) -> bytes:
    chunks: list[bytes] = []
    total = 0
    while True:
        length = reader.varint()
        if length == 0:
            return b"".join(chunks)
        total += length
        if total > limits.max_content:
            raise BhttpError("content over limit")
        chunks.append(reader.take(length))


def _check_padding(reader: _Reader) -> None:
    if any(reader.data[reader.pos : reader.end]):
        raise BhttpError("non-zero padding")


def _decode_tail(reader: _Reader, known: bool, limits: Limits) -> tuple[Fields, bytes, Fields]:
    """Header section, content, trailer section, padding; truncation after each part."""
    headers: Fields = ()
    content = b""
    trailers: Fields = ()
    if not reader.at_end():
        headers = _known_fields(reader, limits) if known else _indeterminate_fields(reader, limits)
        if not reader.at_end():
            if known:
                length = reader.varint()
                if length > limits.max_content:
                    raise BhttpError("content over limit")
                content = reader.take(length)
            else:
                content = _indeterminate_content(reader, limits)
            if not reader.at_end():
                trailers = _known_fields(reader, limits) if known else _indeterminate_fields(reader, limits)
                _check_padding(reader)
    return headers, content, trailers


def _start(data: bytes, limits: Limits) -> tuple[_Reader, int]:
    data = bytes(data)
    if len(data) > limits.max_message:
        raise BhttpError("message over limit")
    reader = _Reader(data)
    return reader, reader.varint()


def decode_request(data: bytes, limits: Limits = DEFAULT_LIMITS) -> Request:
    """Decode a known- or indeterminate-length request; :class:`BhttpError` if invalid."""
    reader, framing = _start(data, limits)
    if framing not in (_KNOWN_REQUEST, _INDETERMINATE_REQUEST):
        raise BhttpError("not a request")
    method, scheme, authority, path = (reader.prefixed(limits.max_control) for _ in range(4))
    headers, content, trailers = _decode_tail(reader, framing == _KNOWN_REQUEST, limits)
    return Request(method, scheme, authority, path, headers, content, trailers)


def decode_response(data: bytes, limits: Limits = DEFAULT_LIMITS) -> Response:
    """Decode a known- or indeterminate-length response; :class:`BhttpError` if invalid."""
    reader, framing = _start(data, limits)
    if framing not in (_KNOWN_RESPONSE, _INDETERMINATE_RESPONSE):
        raise BhttpError("not a response")
    known = framing == _KNOWN_RESPONSE
    informational: list[InformationalResponse] = []
    while True:
        status = reader.varint()
        if 200 <= status <= 599:
            break
        if not 100 <= status <= 199:
            raise BhttpError("invalid status")
        if len(informational) >= limits.max_informational:
            raise BhttpError("too many informational responses")
        headers = _known_fields(reader, limits) if known else _indeterminate_fields(reader, limits)
        informational.append(InformationalResponse(status, headers))
    headers, content, trailers = _decode_tail(reader, known, limits)
    return Response(status, headers, content, trailers, tuple(informational))


# --- streaming (indeterminate-length responses) ------------------------------------------------


class ResponseStreamEncoder:
    """Writes an indeterminate-length response (framing indicator 3) as it is produced.

    Call :meth:`head` once, :meth:`data` any number of times, :meth:`end` once;
    each returns the bytes to seal next.  Out-of-order calls raise
    :class:`BhttpError`.
    """

    __slots__ = ("_state",)

    def __init__(self) -> None:
        self._state = "head"

    def head(
        self,
        status: int,
        headers: Iterable[tuple[bytes, bytes]] = (),
        informational: Iterable[InformationalResponse] = (),
    ) -> bytes:
        if self._state != "head":
            raise BhttpError("head already written")
        response = Response(status, tuple(headers), informational=tuple(informational))
        self._state = "data"
        out = [encode_varint(_INDETERMINATE_RESPONSE)]
        for info in response.informational:
            out += [encode_varint(info.status), _encode_field_lines(info.headers), b"\x00"]
        out += [encode_varint(response.status), _encode_field_lines(response.headers), b"\x00"]
        return b"".join(out)

    def data(self, chunk: bytes) -> bytes:
        if self._state != "data":
            raise BhttpError("data outside the content")
        chunk = _check_bytes(chunk, "content")
        return _length_prefixed(chunk) if chunk else b""

    def end(self, trailers: Iterable[tuple[bytes, bytes]] = ()) -> bytes:
        if self._state != "data":
            raise BhttpError("end without head, or twice")
        fields = _normalize_fields(trailers)
        self._state = "done"
        return b"\x00" + _encode_field_lines(fields) + b"\x00"


@dataclass(frozen=True, slots=True)
class ResponseHead:
    """The final status and header section, and any informational responses before it."""

    status: int
    headers: Fields
    informational: tuple[InformationalResponse, ...] = ()


@dataclass(frozen=True, slots=True)
class ResponseData:
    """A piece of content, as it arrived (boundaries carry no meaning)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class ResponseEnd:
    """The response is complete."""

    trailers: Fields = ()


ResponseEvent = ResponseHead | ResponseData | ResponseEnd


class ResponseStreamDecoder:
    """Sans-IO incremental decoder of a response, for streamed (chunked OHTTP) replies.

    :meth:`feed` takes bytes as they are opened and returns the events they
    complete; :meth:`finish` is called at the end of the stream and returns the
    last events, raising :class:`BhttpError` if the message ended where RFC 9292
    does not allow it.  Indeterminate-length responses are decoded as they
    arrive; a known-length response is buffered and decoded at :meth:`finish`.
    Any error leaves the decoder failed: every later call raises again.
    """

    __slots__ = (
        "_limits",
        "_buf",
        "_pos",
        "_state",
        "_status",
        "_fields",
        "_section_bytes",
        "_informational",
        "_chunk_left",
        "_content",
        "_total",
        "_failed",
        "_known",
    )

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        self._limits = limits
        self._buf = bytearray()
        self._pos = 0
        self._state = "framing"
        self._status = 0
        self._fields: list[tuple[bytes, bytes]] = []
        self._section_bytes = 0
        self._informational: list[InformationalResponse] = []
        self._chunk_left = 0
        self._content = 0
        self._total = 0
        self._failed = False
        self._known = False

    def feed(self, data: bytes) -> list[ResponseEvent]:
        if self._failed:
            raise BhttpError("decoder failed earlier")
        try:
            self._total += len(data)
            if self._total > self._limits.max_message:
                raise BhttpError("message over limit")
            self._buf += data
            try:
                return self._run()
            finally:
                del self._buf[: self._pos]
                self._pos = 0
        except BhttpError:
            self._failed = True
            raise

    def finish(self) -> list[ResponseEvent]:
        if self._failed:
            raise BhttpError("decoder failed earlier")
        try:
            return self._finish()
        except BhttpError:
            self._failed = True
            raise

    # The parser proper.  Each step consumes only whole items, advancing _pos
    # through _buf, so a partial item simply waits for more bytes; feed()
    # compacts the buffer once per call.

    def _varint(self) -> int | None:
        got = _varint.decode(self._buf, self._pos)
        if got is None:
            return None
        value, self._pos = got
        return value

    def _field_line(self) -> bool | None:
        """Consume one field line or the terminator: True for a line, False at the end, None to wait."""
        start = self._pos
        got = _varint.decode(self._buf, start)
        if got is None:
            return None
        name_length, name_at = got
        if name_length == 0:
            self._pos = name_at
            return False
        limit = self._limits.max_field_section
        if len(self._fields) >= self._limits.max_field_lines:
            raise BhttpError("too many field lines")
        if self._section_bytes + (name_at - start) + name_length > limit:
            raise BhttpError("field section over limit")
        if len(self._buf) < name_at + name_length:
            return None
        name = bytes(self._buf[name_at : name_at + name_length])
        got = _varint.decode(self._buf, name_at + name_length)
        if got is None:
            return None
        value_length, value_at = got
        end = value_at + value_length
        if self._section_bytes + (end - start) > limit:
            raise BhttpError("field section over limit")
        if len(self._buf) < end:
            return None
        value = bytes(self._buf[value_at:end])
        _check_name(name)
        _check_value(value)
        self._section_bytes += end - start
        self._pos = end
        self._fields.append((name, value))
        return True

    def _run(self) -> list[ResponseEvent]:
        events: list[ResponseEvent] = []
        while True:
            state = self._state
            if state == "framing":
                got = _varint.decode(self._buf, self._pos)
                if got is None:
                    return events
                framing, after = got
                if framing == _KNOWN_RESPONSE:
                    self._known = True
                    self._state = "buffered"  # keep the whole message for decode_response
                elif framing == _INDETERMINATE_RESPONSE:
                    self._pos = after
                    self._state = "status"
                else:
                    raise BhttpError("not a response")
            elif state == "buffered":
                return events
            elif state == "status":
                status = self._varint()
                if status is None:
                    return events
                if 200 <= status <= 599:
                    self._state = "headers"
                elif 100 <= status <= 199:
                    if len(self._informational) >= self._limits.max_informational:
                        raise BhttpError("too many informational responses")
                    self._state = "informational"
                else:
                    raise BhttpError("invalid status")
                self._status = status
                self._fields = []
                self._section_bytes = 0
            elif state in ("informational", "headers", "trailers"):
                line = self._field_line()
                if line is None:
                    return events
                if line:
                    continue
                fields = tuple(self._fields)
                if state == "informational":
                    self._informational.append(InformationalResponse(self._status, fields))
                    self._state = "status"
                elif state == "headers":
                    events.append(ResponseHead(self._status, fields, tuple(self._informational)))
                    self._state = "content"
                else:
                    events.append(ResponseEnd(fields))
                    self._state = "padding"
            elif state == "content":
                if self._chunk_left == 0:
                    length = self._varint()
                    if length is None:
                        return events
                    if length == 0:
                        self._state = "trailers"
                        self._fields = []
                        self._section_bytes = 0
                        continue
                    self._content += length
                    if self._content > self._limits.max_content:
                        raise BhttpError("content over limit")
                    self._chunk_left = length
                available = len(self._buf) - self._pos
                if not available:
                    return events
                take = min(self._chunk_left, available)
                piece = bytes(self._buf[self._pos : self._pos + take])
                self._pos += take
                self._chunk_left -= take
                events.append(ResponseData(piece))
            elif state == "padding":
                if any(self._buf[self._pos :]):
                    raise BhttpError("non-zero padding")
                self._pos = len(self._buf)
                return events
            else:  # pragma: no cover - "done" is never fed
                raise BhttpError("decoder finished")

    def _finish(self) -> list[ResponseEvent]:
        state = self._state
        if state == "buffered":
            response = decode_response(bytes(self._buf[self._pos :]), self._limits)
            self._state = "done"
            events: list[ResponseEvent] = [ResponseHead(response.status, response.headers, response.informational)]
            if response.content:
                events.append(ResponseData(response.content))
            events.append(ResponseEnd(response.trailers))
            return events
        self._state = "done"
        if len(self._buf) > self._pos and state != "padding":
            raise BhttpError("truncated message")
        if state == "headers" and not self._fields and self._section_bytes == 0:
            # Truncated right after the final control data: everything else empty.
            return [ResponseHead(self._status, (), tuple(self._informational)), ResponseEnd()]
        if state == "content" and self._content == 0:
            # Truncated right after the header section: no content, no trailers.
            return [ResponseEnd()]
        if state == "trailers" and not self._fields:
            return [ResponseEnd()]
        if state == "padding":
            return []
        raise BhttpError("truncated message")
