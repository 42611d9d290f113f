"""Sans-IO HTTP/1.1: heads, body framing and chunked coding, and nothing else.

One module holds every byte-level HTTP/1.1 rule that the cluster side relies on:
the gate's client to its backends (:mod:`cluster.backend_client`) parses
*response* heads with it, and the stand-in model server
(:mod:`cluster.standin.server`) parses *request* heads with it.  No sockets, no
event loop: functions take bytes and return frozen values or raise.

Strict by design (the peers are our own backends and our own gate, so there is
no legacy client to be lenient for):

* lines end in CRLF; a bare CR or LF anywhere in a head is rejected;
* obs-fold (a header line starting with SP or HTAB) is rejected;
* whitespace between a field name and its colon is rejected;
* ``Content-Length`` must be one header of plain digits; ``Transfer-Encoding``
  may only be ``chunked``; both together are rejected (request smuggling);
* informational (1xx) responses are rejected: we never send ``Expect`` or
  ``Upgrade``, so a backend that sends one is not speaking to us.

Errors: what the peer sent raises :class:`RemoteProtocolError` (a
:class:`policy.errors.PeerError` whose ``status`` is the HTTP answer a server
gives); what we were asked to send but must not (a path with a CR in it, a
token with a space) raises :class:`LocalProtocolError`.  Neither message echoes
the input.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from http import HTTPStatus

from policy.errors import LocalError, PeerError

__all__ = [
    "MAX_HEAD_BYTES",
    "MAX_HEADERS",
    "MAX_CHUNK_LINE_BYTES",
    "MAX_CHUNK_SIZE_DIGITS",
    "MAX_CONTENT_LENGTH_DIGITS",
    "MAX_TRAILER_BYTES",
    "LAST_CHUNK",
    "RemoteProtocolError",
    "LocalProtocolError",
    "RequestHead",
    "ResponseHead",
    "find_head_end",
    "check_response_start",
    "parse_request_head",
    "parse_response_head",
    "build_request_head",
    "build_response_head",
    "encode_chunk",
    "BodyDecoder",
    "LengthDecoder",
    "CloseDelimitedDecoder",
    "ChunkedDecoder",
    "response_body_decoder",
]

# --------------------------------------------------------------------------- limits

MAX_HEAD_BYTES = 16 * 1024
"""Largest head (start line, fields, blank line).  Our gate and vLLM send well
under 1 KiB; 16 KiB is h11's and nginx's order of magnitude and stops a peer
from growing our buffer without bound while it drips a head that never ends."""

MAX_HEADERS = 100
"""Most header fields in one head (Python's ``http.client`` uses the same
number).  Each field costs a tuple and a regex match: bound the work per head."""

MAX_CHUNK_LINE_BYTES = 1024
"""Longest chunk-size line including extensions and CRLF.  Real size lines are
under 20 bytes and nobody sends extensions to us; this bounds the line buffer."""

MAX_CHUNK_SIZE_DIGITS = 15
"""Most hex digits in a chunk size: 16**15 is 2**60, far beyond any body we
accept, and it keeps sizes inside int64 for anything we hand them to."""

MAX_CONTENT_LENGTH_DIGITS = 18
"""Most decimal digits in Content-Length: below 10**18 fits int64; longer
values are an overflow probe, not a body."""

MAX_TRAILER_BYTES = MAX_HEAD_BYTES
"""Most bytes of chunked trailers (which we read and drop): the same budget as
a head, since trailers are header fields in the same syntax."""

LAST_CHUNK = b"0\r\n\r\n"
"""The last-chunk plus empty trailer section that ends a chunked body."""

# --------------------------------------------------------------------------- errors


class RemoteProtocolError(PeerError):
    """The peer sent bytes that are not the strict HTTP/1.1 we accept.

    ``code`` names the rule that broke (never the input); ``status`` is the
    answer a server gives to such a request (400, 411, 413, 431 or 501).
    """

    code = "bad_http"
    status = 400


class LocalProtocolError(LocalError):
    """We were asked to send something that is not valid HTTP/1.1."""

    code = "bad_http_local"
    status = 500


# --------------------------------------------------------------------------- grammar
# Fragments after RFC 9110 / RFC 9112, each with its ABNF quoted above it.  Every
# match is a full match (re.fullmatch); nothing is searched for inside a line.

# tchar = "!" / "#" / "$" / "%" / "&" / "'" / "*" / "+" / "-" / "." / "^" / "_"
#       / "`" / "|" / "~" / DIGIT / ALPHA
# token = 1*tchar
_TOKEN = rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+"
_TOKEN_RE = re.compile(_TOKEN)

# field-line = field-name ":" OWS field-value OWS
# field-value = *field-content ; field-content = field-vchar [ 1*( SP / HTAB / field-vchar ) field-vchar ]
# field-vchar = VCHAR / obs-text   (the leading OWS is matched first, so a linear class suffices;
# the trailing OWS is cut from the value after the match)
_FIELD_LINE_RE = re.compile(rb"(" + _TOKEN + rb"):[ \t]*([\t\x20-\x7e\x80-\xff]*)")

# status-line = HTTP-version SP status-code SP [ reason-phrase ]
# reason-phrase = 1*( HTAB / SP / VCHAR / obs-text )
# (the SP before an empty reason is optional here, as in h11: many servers omit it)
_STATUS_LINE_RE = re.compile(rb"HTTP/1\.([01]) ([1-9][0-9]{2})(?: [\t\x20-\x7e\x80-\xff]*)?")

# origin-form = absolute-path [ "?" query ] ; absolute-path = 1*( "/" segment )
# segment = *pchar ; pchar = unreserved / pct-encoded / sub-delims / ":" / "@" ; query = *( pchar / "/" / "?" )
_ORIGIN_FORM = rb"/[-A-Za-z0-9._~!$&'()*+,;=:@/?%]*"
_ORIGIN_FORM_RE = re.compile(_ORIGIN_FORM)

# request-line = method SP request-target SP HTTP-version ; method = token
_REQUEST_LINE_RE = re.compile(rb"(" + _TOKEN + rb") (" + _ORIGIN_FORM + rb") HTTP/1\.([01])")

# chunk-size = 1*HEXDIG ; chunk-ext = *( BWS ";" BWS chunk-ext-name [ BWS "=" BWS chunk-ext-val ] )
# chunk-ext-val = token / quoted-string
_QUOTED_STRING = rb'"(?:[\t !#-\[\]-~\x80-\xff]|\\[\t\x20-\x7e\x80-\xff])*"'
_CHUNK_LINE_RE = re.compile(
    rb"([0-9A-Fa-f]{1,%d})" % MAX_CHUNK_SIZE_DIGITS
    + rb"(?:[ \t]*;[ \t]*"
    + _TOKEN
    + rb"(?:[ \t]*=[ \t]*(?:"
    + _TOKEN
    + rb"|"
    + _QUOTED_STRING
    + rb"))?)*"
)

_DIGITS_RE = re.compile(rb"[0-9]{1,%d}" % MAX_CONTENT_LENGTH_DIGITS)

# b64token (RFC 6750) for "Authorization: Bearer <token>"
_BEARER_TOKEN_RE = re.compile(r"[-A-Za-z0-9._~+/]+=*")
# host (reg-name or IPv4; IPv6 literals are bracketed by build_request_head)
_HOST_RE = re.compile(r"[-A-Za-z0-9._~]+|\[[0-9A-Fa-f:.]+\]")
_METHOD_RE = re.compile(r"[A-Z]+")

_PHRASES = {status.value: status.phrase for status in HTTPStatus}

_HEAD_END = b"\r\n\r\n"
_STATUS_PREFIX = b"HTTP/1."
_CRLF = b"\r\n"

Headers = tuple[tuple[bytes, bytes], ...]
"""Header fields in order: (lower-cased name, value without surrounding OWS)."""


# --------------------------------------------------------------------------- heads


@dataclass(frozen=True, slots=True)
class RequestHead:
    """A parsed request head (origin-form target only)."""

    method: str
    target: str
    http_minor: int
    headers: Headers
    content_length: int | None
    chunked: bool
    keep_alive: bool

    @property
    def path(self) -> str:
        """The target without its query."""
        return self.target.partition("?")[0]

    def get(self, name: bytes) -> bytes | None:
        """The value of the one field ``name`` (lower case), None if absent."""
        return _get_single(self.headers, name)


@dataclass(frozen=True, slots=True)
class ResponseHead:
    """A parsed response head."""

    status: int
    http_minor: int
    headers: Headers
    content_length: int | None
    chunked: bool
    keep_alive: bool
    content_type: str
    """The one Content-Type value, or the empty string."""

    def get(self, name: bytes) -> bytes | None:
        """The value of the one field ``name`` (lower case), None if absent."""
        return _get_single(self.headers, name)


def _get_single(headers: Headers, name: bytes) -> bytes | None:
    found: bytes | None = None
    for key, value in headers:
        if key == name:
            if found is not None:
                raise RemoteProtocolError("duplicate_header")
            found = value
    return found


def find_head_end(buf: bytes | bytearray) -> int:
    """The index just past the blank line ending the head in ``buf``, or -1.

    -1 means "feed more bytes".  Raises :class:`RemoteProtocolError` (431) when
    ``buf`` holds ``MAX_HEAD_BYTES`` or more without a complete head, and (400)
    when the head would end in a bare-LF blank line, which we never accept.
    """
    end = buf.find(_HEAD_END, 0, MAX_HEAD_BYTES)
    if end >= 0:
        return end + 4
    if buf.find(b"\n\n", 0, MAX_HEAD_BYTES) >= 0 or buf.find(b"\n\r\n", 0, MAX_HEAD_BYTES) >= 0:
        raise RemoteProtocolError("bare_lf")
    if len(buf) >= MAX_HEAD_BYTES:
        raise RemoteProtocolError("head_too_large", 431)
    return -1


def check_response_start(buf: bytes | bytearray) -> None:
    """Raise at once if ``buf`` cannot be the start of an HTTP/1.x status line.

    Lets a client fail fast on a peer that speaks another protocol (an SSH
    banner, a TLS alert) instead of waiting for a head that will never end.
    """
    prefix = _STATUS_PREFIX[: len(buf)]
    if buf[: len(prefix)] != prefix:
        raise RemoteProtocolError("bad_status_line")


def _split_head(head: bytes | bytearray) -> tuple[bytes, list[bytes]]:
    """Start line and field lines of a complete head (as found by find_head_end)."""
    if len(head) > MAX_HEAD_BYTES:
        raise RemoteProtocolError("head_too_large", 431)
    if not head.endswith(_HEAD_END):
        raise RemoteProtocolError("head_incomplete")
    lines = bytes(head[:-4]).split(_CRLF)
    if len(lines) - 1 > MAX_HEADERS:
        raise RemoteProtocolError("too_many_headers", 431)
    return lines[0], lines[1:]


def _parse_fields(lines: list[bytes]) -> Headers:
    fields = []
    match_line = _FIELD_LINE_RE.fullmatch
    for line in lines:
        match = match_line(line)
        if match is None:
            # obs-fold (leading SP/HTAB), "Name :", no colon, CTLs (a bare CR or LF) in a name or value
            raise RemoteProtocolError("bad_header")
        fields.append((match[1].lower(), match[2].rstrip(b" \t")))
    return tuple(fields)


def _framing(headers: Headers, minor: int) -> tuple[int | None, bool, bool]:
    """(content_length, chunked, connection_close) from the framing fields of an HTTP/1.``minor`` message."""
    length: int | None = None
    chunked = False
    close = False
    seen_te = False
    for name, value in headers:
        if name == b"content-length":
            if length is not None:
                raise RemoteProtocolError("duplicate_content_length")
            if _DIGITS_RE.fullmatch(value) is None:
                raise RemoteProtocolError("bad_content_length")
            length = int(value)
        elif name == b"transfer-encoding":
            if seen_te or value.lower() != b"chunked":
                raise RemoteProtocolError("unsupported_transfer_encoding", 501)
            seen_te = chunked = True
        elif name == b"connection":
            for option in value.split(b","):
                if option.strip(b" \t").lower() == b"close":
                    close = True
    if chunked and length is not None:
        raise RemoteProtocolError("conflicting_length")
    if chunked and minor == 0:  # RFC 9112 section 6.1: HTTP/1.0 framing with Transfer-Encoding is faulty
        raise RemoteProtocolError("transfer_encoding_http10")
    return length, chunked, close


def parse_response_head(head: bytes | bytearray) -> ResponseHead:
    """Parse a complete response head (ending in CRLF CRLF).

    Raises :class:`RemoteProtocolError` for anything outside the strict syntax,
    and for 1xx responses (we never ask for one).
    """
    start, lines = _split_head(head)
    match = _STATUS_LINE_RE.fullmatch(start)
    if match is None:
        raise RemoteProtocolError("bad_status_line")
    minor = int(match[1])
    status = int(match[2])
    if status < 200:
        raise RemoteProtocolError("unexpected_informational")
    headers = _parse_fields(lines)
    length, chunked, close = _framing(headers, minor)
    content_type = _get_single(headers, b"content-type")
    return ResponseHead(
        status=status,
        http_minor=minor,
        headers=headers,
        content_length=length,
        chunked=chunked,
        keep_alive=minor == 1 and not close,
        content_type="" if content_type is None else content_type.decode("latin-1"),
    )


def parse_request_head(head: bytes | bytearray) -> RequestHead:
    """Parse a complete request head (ending in CRLF CRLF).

    Only origin-form targets are accepted; HTTP/1.1 requests need exactly one
    ``Host`` field.  Raises :class:`RemoteProtocolError` with the status a
    server should answer.
    """
    start, lines = _split_head(head)
    match = _REQUEST_LINE_RE.fullmatch(start)
    if match is None:
        raise RemoteProtocolError("bad_request_line")
    minor = int(match[3])
    headers = _parse_fields(lines)
    length, chunked, close = _framing(headers, minor)
    hosts = sum(1 for name, _ in headers if name == b"host")
    if hosts > 1 or (minor == 1 and hosts == 0):
        raise RemoteProtocolError("bad_host")
    return RequestHead(
        method=match[1].decode("ascii"),
        target=match[2].decode("ascii"),
        http_minor=minor,
        headers=headers,
        content_length=length,
        chunked=chunked,
        keep_alive=minor == 1 and not close,
    )


# The media types the gate sends: JSON, or its own form (boundary of RFC 2046 bchars, no space).
_CONTENT_TYPE_RE = re.compile(r"application/json|multipart/form-data; boundary=[0-9A-Za-z'()+_,\-./:=?]{1,70}")


def build_request_head(
    method: str,
    path: str,
    host: str,
    port: int,
    content_length: int | None,
    token: str | None = None,
    content_type: str = "application/json",
) -> bytes:
    """The head of a request from the gate to a backend.

    ``content_length`` None means no body (no Content-Type, no Content-Length);
    otherwise the body is JSON of that many bytes.  ``token`` adds
    ``Authorization: Bearer``.  Never sends ``Expect: 100-continue``: a JSON
    body is small, and a round trip more per request costs more than it saves.
    ``content_type`` is the body's media type: JSON, or a form the gate wrote
    (``multipart/form-data; boundary=...``).
    Raises :class:`LocalProtocolError` for anything that could split the head.
    """
    start = _request_head_start(method, path, host, port, token, content_type, content_length is not None)
    if content_length is None:
        return start + _CRLF
    if content_length < 0:
        raise LocalProtocolError("bad_content_length")
    return start + b"content-length: %d\r\n\r\n" % content_length


@functools.lru_cache(maxsize=256)
def _request_head_start(method: str, path: str, host: str, port: int, token: str | None, content_type: str, body: bool) -> bytes:
    """Every line of a request head but Content-Length, checked; the same for every request to
    one route of one instance, so it is checked and built once (a raise is not remembered)."""
    if _CONTENT_TYPE_RE.fullmatch(content_type) is None:
        raise LocalProtocolError("bad_content_type")
    if _METHOD_RE.fullmatch(method) is None:
        raise LocalProtocolError("bad_method")
    if _ORIGIN_FORM_RE.fullmatch(path.encode("ascii", "replace")) is None or not path.isascii():
        raise LocalProtocolError("bad_path")
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    if _HOST_RE.fullmatch(host) is None or not host.isascii():
        raise LocalProtocolError("bad_host")
    if not 0 < port < 65536:
        raise LocalProtocolError("bad_port")
    parts = [f"{method} {path} HTTP/1.1\r\nhost: {host}:{port}\r\n"]
    if token is not None:
        if _BEARER_TOKEN_RE.fullmatch(token) is None or not token.isascii():
            raise LocalProtocolError("bad_token")
        parts.append(f"authorization: Bearer {token}\r\n")
    if body:
        parts.append(f"content-type: {content_type}\r\n")
    return "".join(parts).encode("ascii")


def build_response_head(
    status: int,
    content_type: str | None,
    content_length: int | None,
    *,
    chunked: bool = False,
    close: bool = False,
    extra: tuple[tuple[str, str], ...] = (),
) -> bytes:
    """The head of a response from the stand-in server.

    Exactly one of ``content_length`` and ``chunked`` frames the body.
    ``extra`` fields are constants of the caller (never peer input), checked
    all the same.
    """
    if (content_length is None) == (not chunked):
        raise LocalProtocolError("bad_framing")
    phrase = _PHRASES.get(status)
    if phrase is None:
        raise LocalProtocolError("bad_status")
    parts = [f"HTTP/1.1 {status} {phrase}\r\n"]
    if content_type is not None:
        parts.append(f"content-type: {content_type}\r\n")
    if chunked:
        parts.append("transfer-encoding: chunked\r\n")
    else:
        parts.append(f"content-length: {content_length}\r\n")
    if close:
        parts.append("connection: close\r\n")
    for name, value in extra:
        if _TOKEN_RE.fullmatch(name.encode("ascii")) is None or "\r" in value or "\n" in value:
            raise LocalProtocolError("bad_header")
        parts.append(f"{name}: {value}\r\n")
    parts.append("\r\n")
    return "".join(parts).encode("latin-1")


def encode_chunk(data: bytes) -> bytes:
    """One chunk of a chunked body (``data`` must not be empty)."""
    if not data:
        raise LocalProtocolError("empty_chunk")
    return b"%x\r\n%s\r\n" % (len(data), data)


# --------------------------------------------------------------------------- bodies


class BodyDecoder:
    """Common shape of the body decoders: ``feed`` bytes, get body pieces.

    ``done`` turns true when the body is complete; bytes fed after that are
    kept in ``unused`` (for a client, the sign of a peer that talks out of
    turn; for a pipelining server, the next request).
    """

    __slots__ = ("unused",)

    def __init__(self) -> None:
        self.unused = b""

    @property
    def done(self) -> bool:
        raise NotImplementedError

    def feed(self, data: bytes) -> list[bytes]:
        """Body pieces decoded from ``data`` (possibly none)."""
        raise NotImplementedError

    def feed_eof(self) -> None:
        """The peer closed: complete the body, or raise if it was cut short."""
        if not self.done:
            raise RemoteProtocolError("body_truncated")


class LengthDecoder(BodyDecoder):
    """A body framed by Content-Length."""

    __slots__ = ("remaining",)

    def __init__(self, length: int) -> None:
        super().__init__()
        self.remaining = length

    @property
    def done(self) -> bool:
        return self.remaining == 0

    def feed(self, data: bytes) -> list[bytes]:
        remaining = self.remaining
        if len(data) <= remaining:
            self.remaining = remaining - len(data)
            return [data] if data else []
        self.unused += data[remaining:]
        self.remaining = 0
        return [data[:remaining]] if remaining else []


class CloseDelimitedDecoder(BodyDecoder):
    """A response body that ends when the server closes (no length, no chunks).

    Such a connection can never be reused.
    """

    __slots__ = ("_eof",)

    def __init__(self) -> None:
        super().__init__()
        self._eof = False

    @property
    def done(self) -> bool:
        return self._eof

    def feed(self, data: bytes) -> list[bytes]:
        return [data] if data else []

    def feed_eof(self) -> None:
        self._eof = True


_SIZE, _DATA, _DATA_END, _TRAILER, _DONE = range(5)


class ChunkedDecoder(BodyDecoder):
    """Incremental decoder of ``Transfer-Encoding: chunked``.

    Feed any split of the bytes; get the data pieces in order.  Chunk
    extensions are checked and ignored, trailers are checked, bounded and
    dropped.  ``done`` turns true after the last chunk and its trailer section.
    """

    __slots__ = ("_state", "_remaining", "_line", "_trailer_bytes", "_trailer_fields")

    def __init__(self) -> None:
        super().__init__()
        self._state = _SIZE
        self._remaining = 0
        self._line = bytearray()
        self._trailer_bytes = 0
        self._trailer_fields = 0

    @property
    def done(self) -> bool:
        return self._state == _DONE

    def feed(self, data: bytes) -> list[bytes]:
        out: list[bytes] = []
        pos = 0
        end = len(data)
        while pos < end:
            state = self._state
            if state == _DATA:
                take = min(self._remaining, end - pos)
                out.append(data[pos : pos + take])
                pos += take
                self._remaining -= take
                if self._remaining == 0:
                    self._state = _DATA_END
            elif state == _DATA_END:
                if not self._line and data.startswith(_CRLF, pos):  # the usual case: the whole CRLF is here
                    pos += 2
                    self._state = _SIZE
                    continue
                while pos < end and len(self._line) < 2:
                    if data[pos] != _CRLF[len(self._line)]:
                        raise RemoteProtocolError("bad_chunk_end")
                    self._line.append(data[pos])
                    pos += 1
                if len(self._line) == 2:
                    self._line.clear()
                    self._state = _SIZE
            elif state == _SIZE:
                line, pos = self._take_line(data, pos, MAX_CHUNK_LINE_BYTES)
                if line is None:
                    break
                match = _CHUNK_LINE_RE.fullmatch(line)
                if match is None:
                    raise RemoteProtocolError("bad_chunk_size")
                size = int(match[1], 16)
                if size:
                    self._remaining = size
                    self._state = _DATA
                else:
                    self._state = _TRAILER
            elif state == _TRAILER:
                budget = MAX_TRAILER_BYTES - self._trailer_bytes
                line, pos = self._take_line(data, pos, budget)
                if line is None:
                    break
                if not line:
                    self._state = _DONE
                    continue
                self._trailer_bytes += len(line) + 2
                self._trailer_fields += 1
                if self._trailer_fields > MAX_HEADERS:
                    raise RemoteProtocolError("too_many_trailers")
                _parse_fields([line])
            else:  # _DONE
                break
        if pos < end:
            self.unused += data[pos:]
        return out

    def _take_line(self, data: bytes, pos: int, limit: int) -> tuple[bytes | None, int]:
        """A CRLF-terminated line (without CRLF) once complete, else (None, end)."""
        newline = data.find(b"\n", pos)
        if newline >= 0 and not self._line and newline + 1 - pos <= limit:
            line = data[pos : newline - 1]  # the usual case: the whole line is here
            if newline == pos or data[newline - 1] != 0x0D or b"\r" in line:
                raise RemoteProtocolError("bare_lf")
            return line, newline + 1
        if newline < 0:
            self._line += data[pos:]
            if len(self._line) >= limit:
                raise RemoteProtocolError("chunk_line_too_long")
            return None, len(data)
        self._line += data[pos : newline + 1]
        if len(self._line) > limit:
            raise RemoteProtocolError("chunk_line_too_long")
        line = bytes(self._line)
        self._line.clear()
        if len(line) < 2 or line[-2] != 0x0D or b"\r" in line[:-2]:
            raise RemoteProtocolError("bare_lf")
        return line[:-2], newline + 1


def response_body_decoder(head: ResponseHead, request_method: str) -> BodyDecoder:
    """The decoder that frames the body of ``head`` (RFC 9112 section 6.3).

    A response to HEAD and 204/304 responses have no body; otherwise chunked,
    then Content-Length, then read-until-close.
    """
    if request_method == "HEAD" or head.status in (204, 304):
        return LengthDecoder(0)
    if head.chunked:
        return ChunkedDecoder()
    if head.content_length is not None:
        return LengthDecoder(head.content_length)
    return CloseDelimitedDecoder()
