"""Oblivious HTTP encapsulation (RFC 9458) and its chunked variant (draft-ietf-ohai-chunked-ohttp).

The recipe layer: a fixed suite (DHKEM(X25519, HKDF-SHA256), HKDF-SHA256,
AES-128-GCM), nonces and ephemeral keys made inside, no knobs.  Every failure
to open or accept something raises the message-less
:class:`~sluice_sdk.errors.SealError`.

Client (SDK)::

    enc_request, opener = encapsulate_request(config, bhttp_request)
    ... send enc_request as message/ohttp-req, receive enc_response ...
    bhttp_response = opener.open(enc_response)

Gateway (gate)::

    bhttp_request, sealer = decapsulate_request(keyring, enc_request)
    ... check sealer.enc with a ReplayGuard, handle the request ...
    enc_response = sealer.seal(bhttp_response)

Streamed responses use the chunked media types end to end: the client sends
``message/ohttp-chunked-req`` (:func:`encapsulate_chunked_request`, or
:class:`ChunkedRequestSealer` to write it incrementally), the gateway opens it
with :func:`decapsulate_chunked_request` (or :class:`ChunkedRequestOpener`)
and answers ``message/ohttp-chunked-res`` through a
:class:`ChunkedResponseSealer`, chunk by chunk; the client reads it with the
:class:`ChunkedResponseOpener` it got back.  Each chunk is authenticated with
its position (the HPKE sequence number for requests, a counter XORed into the
nonce for responses) and the last one with the AAD ``"final"``, so reordering,
dropping or truncating chunks is detected: :meth:`ChunkedResponseOpener.finish`
raises unless the authenticated final chunk arrived.

Constructions, verbatim from the specifications::

    hdr  = key_id(1) || kem_id(2) || kdf_id(2) || aead_id(2)
    info = "message/bhttp request" || 0x00 || hdr                 (RFC 9458 4.3)
    enc_request = hdr || enc || Seal("", request)
    secret = context.Export("message/bhttp response", max(Nn, Nk)) (RFC 9458 4.4)
    prk = Extract(enc || response_nonce, secret)
    key = Expand(prk, "key", Nk); nonce = Expand(prk, "nonce", Nn)
    enc_response = response_nonce || Seal(key, nonce, "", response)

The chunked variant uses the labels "message/bhttp chunked request" and
"message/bhttp chunked response", frames each chunk with a QUIC varint length
(RFC 9000 Section 16), marks the final chunk with a zero length (it runs to
the end of the stream) and seals it with AAD "final"; response chunk ``i``
uses ``nonce XOR encode(Nn, i)``.  Non-final chunks are never empty.

Deterministic seams for the known-answer tests are the private functions and
constructors that take ``_ephemeral`` / ``_response_nonce``; nothing else may
pass them.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Protocol, TypeVar

from . import _hazmat, _varint
from .errors import KeyConfigError, SealError
from .keyconfig import KeyConfig, SymmetricAlgorithm
from .keys import GatewayKey

__all__ = [
    "REQUEST_MEDIA_TYPE",
    "RESPONSE_MEDIA_TYPE",
    "CHUNKED_REQUEST_MEDIA_TYPE",
    "CHUNKED_RESPONSE_MEDIA_TYPE",
    "SEND_CHUNK_SIZE",
    "MAX_RECEIVE_CHUNK",
    "MAX_MESSAGE_BYTES",
    "KeyLookup",
    "encapsulate_request",
    "decapsulate_request",
    "ResponseOpener",
    "ResponseSealer",
    "encapsulate_chunked_request",
    "decapsulate_chunked_request",
    "ChunkedRequestSealer",
    "ChunkedRequestOpener",
    "ChunkedResponseSealer",
    "ChunkedResponseOpener",
]

REQUEST_MEDIA_TYPE = "message/ohttp-req"
RESPONSE_MEDIA_TYPE = "message/ohttp-res"
CHUNKED_REQUEST_MEDIA_TYPE = "message/ohttp-chunked-req"
CHUNKED_RESPONSE_MEDIA_TYPE = "message/ohttp-chunked-res"

_REQUEST_LABEL = b"message/bhttp request"
_RESPONSE_LABEL = b"message/bhttp response"
_CHUNKED_REQUEST_LABEL = b"message/bhttp chunked request"
_CHUNKED_RESPONSE_LABEL = b"message/bhttp chunked response"
_FINAL_AAD = b"final"

# The client's one suite; the gateway accepts a suite only if it is both
# implemented and listed in the key's configuration.
_CLIENT_SUITE = (_hazmat.KDF_HKDF_SHA256, _hazmat.AEAD_AES_128_GCM)

# Chunk plaintext a sender puts in one chunk: the draft's "MUST support
# receiving 2^14 octets" size, which every receiver accepts.
SEND_CHUNK_SIZE = 1 << 14
# Largest chunk plaintext we accept: four times what the draft requires us to.
MAX_RECEIVE_CHUNK = 1 << 16
# Total plaintext of one message, sealed or opened, chunked or not: 2^30 bytes
# keeps AES-128-GCM within the multi-user bound the chunked draft (Section
# 7.3) derives for 2^20 messages; it also bounds what a whole-message open
# holds in memory (the gate's route policy sets a far smaller body limit).
MAX_MESSAGE_BYTES = 1 << 30

_T = TypeVar("_T")


class KeyLookup(Protocol):
    """What the gateway opens requests with: a :class:`~sluice_sdk.keys.KeyRing` or one key."""

    def lookup(self, key_id: int) -> GatewayKey: ...


def _header(key_id: int, kem_id: int, kdf_id: int, aead_id: int) -> bytes:
    return struct.pack("!BHHH", key_id, kem_id, kdf_id, aead_id)


def _entropy_len(aead_id: int) -> int:
    nk, nn, _ = _hazmat.aead_sizes(aead_id)
    return max(nn, nk)


def _client_setup(config: KeyConfig, label: bytes, ephemeral: bytes | None) -> tuple[bytes, _hazmat.SenderContext]:
    if not config.usable or SymmetricAlgorithm(*_CLIENT_SUITE) not in config.symmetric:
        raise KeyConfigError("key configuration offers no suite this SDK uses (X25519, HKDF-SHA256, AES-128-GCM)")
    hdr = _header(config.key_id, config.kem_id, *_CLIENT_SUITE)
    try:
        ctx = _hazmat.setup_sender(config.kem_id, *_CLIENT_SUITE, config.public_key, label + b"\x00" + hdr, _ephemeral=ephemeral)
    except SealError:
        raise KeyConfigError("the key configuration's public key is not usable") from None
    return hdr, ctx


def _gateway_setup(
    keys: KeyLookup, data: bytes | bytearray, label: bytes
) -> tuple[_hazmat.ReceiverContext, bytes, int, int, int]:
    """Parse ``hdr || enc`` at the start of ``data``; ``(context, enc, kdf, aead, offset)``."""
    if len(data) < 7:
        raise SealError from None
    key_id, kem_id, kdf_id, aead_id = struct.unpack_from("!BHHH", data)
    key = keys.lookup(key_id)
    if (
        kem_id != key.config.kem_id
        or SymmetricAlgorithm(kdf_id, aead_id) not in key.config.symmetric
        or (kdf_id, aead_id) not in _hazmat.SUPPORTED_SYMMETRIC
    ):
        raise SealError from None
    _, nenc = _hazmat.kem_sizes(kem_id)
    if len(data) < 7 + nenc:
        raise SealError from None
    hdr = bytes(data[:7])
    enc = bytes(data[7 : 7 + nenc])
    ctx = _hazmat.setup_receiver(kem_id, kdf_id, aead_id, key.private_key, enc, label + b"\x00" + hdr)
    return ctx, enc, kdf_id, aead_id, 7 + nenc


# --- RFC 9458: one request, one response ---------------------------------------------------------


class ResponseOpener:
    """The client's half of an exchange: opens the one Encapsulated Response."""

    __slots__ = ("_secret", "_enc", "_kdf", "_aead")

    def __init__(self, ctx: _hazmat.SenderContext, kdf_id: int, aead_id: int) -> None:
        self._secret = ctx.export(_RESPONSE_LABEL, _entropy_len(aead_id))
        self._enc = ctx.enc
        self._kdf = kdf_id
        self._aead = aead_id

    def open(self, enc_response: bytes) -> bytes:
        """The binary HTTP response; :class:`SealError` if anything is wrong with it."""
        size = _entropy_len(self._aead)
        _, _, nt = _hazmat.aead_sizes(self._aead)
        if not size + nt <= len(enc_response) <= size + nt + MAX_MESSAGE_BYTES:
            raise SealError from None
        response_nonce = bytes(enc_response[:size])
        key, nonce = _hazmat.response_key_and_nonce(self._kdf, self._aead, self._secret, self._enc + response_nonce)
        return _hazmat.aead_open(self._aead, key, nonce, bytes(enc_response[size:]), b"")


class ResponseSealer:
    """The gateway's half of an exchange: seals the response to the request it came from."""

    __slots__ = ("_secret", "_enc", "_kdf", "_aead")

    def __init__(self, ctx: _hazmat.ReceiverContext, enc: bytes, kdf_id: int, aead_id: int) -> None:
        self._secret = ctx.export(_RESPONSE_LABEL, _entropy_len(aead_id))
        self._enc = enc
        self._kdf = kdf_id
        self._aead = aead_id

    @property
    def enc(self) -> bytes:
        """The request's encapsulated key: unique per request, what a ReplayGuard remembers."""
        return self._enc

    def seal(self, response: bytes) -> bytes:
        """The Encapsulated Response (``message/ohttp-res``) for ``response`` (binary HTTP)."""
        return self._seal(response, _hazmat.random_bytes(_entropy_len(self._aead)))

    def _seal(self, response: bytes, response_nonce: bytes) -> bytes:
        # Deterministic seam: tests pass the RFC's response nonce.
        if len(response) > MAX_MESSAGE_BYTES or len(response_nonce) != _entropy_len(self._aead):
            raise SealError from None
        key, nonce = _hazmat.response_key_and_nonce(self._kdf, self._aead, self._secret, self._enc + response_nonce)
        return response_nonce + _hazmat.aead_seal(self._aead, key, nonce, response, b"")


def encapsulate_request(config: KeyConfig, request: bytes) -> tuple[bytes, ResponseOpener]:
    """Seal ``request`` (binary HTTP) to ``config``: ``(message/ohttp-req body, opener)``.

    ``config`` must come from :func:`~sluice_sdk.keyconfig.select_key_config`
    (pinned); :class:`KeyConfigError` if it offers no suite this SDK uses.
    """
    return _encapsulate_request(config, request, None)


def _encapsulate_request(config: KeyConfig, request: bytes, ephemeral: bytes | None) -> tuple[bytes, ResponseOpener]:
    if len(request) > MAX_MESSAGE_BYTES:
        raise SealError from None
    hdr, ctx = _client_setup(config, _REQUEST_LABEL, ephemeral)
    ct = ctx.seal(bytes(request), b"")
    return hdr + ctx.enc + ct, ResponseOpener(ctx, *_CLIENT_SUITE)


def decapsulate_request(keys: KeyLookup, enc_request: bytes) -> tuple[bytes, ResponseSealer]:
    """Open a ``message/ohttp-req`` body: ``(binary HTTP request, sealer for its response)``.

    :class:`SealError` for an unknown or expired key id, a suite the key does
    not list, a bad encapsulation, a failed tag, or an oversized message.  The
    caller still checks the inner request's date and the replay guard.
    """
    data = bytes(enc_request)
    if len(data) > MAX_MESSAGE_BYTES + 1024:
        raise SealError from None
    ctx, enc, kdf_id, aead_id, offset = _gateway_setup(keys, data, _REQUEST_LABEL)
    request = ctx.open(data[offset:], b"")
    return request, ResponseSealer(ctx, enc, kdf_id, aead_id)


# --- chunked framing, shared by both directions -------------------------------------------------


class _ChunkReader:
    """Splits a chunk stream into sealed chunks and opens each with ``open_chunk(ct, final)``.

    Bounded: a chunk over :data:`MAX_RECEIVE_CHUNK` plaintext, an empty
    non-final chunk, or a total over :data:`MAX_MESSAGE_BYTES` is refused.
    """

    __slots__ = ("_buf", "_final", "_total", "_nt", "_open")

    def __init__(self, nt: int, open_chunk: Callable[[bytes, bool], bytes]) -> None:
        self._buf = bytearray()
        self._final = False
        self._total = 0
        self._nt = nt
        self._open = open_chunk

    def _count(self, plaintext: bytes) -> bytes:
        self._total += len(plaintext)
        if self._total > MAX_MESSAGE_BYTES:
            raise SealError from None
        return plaintext

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        out: list[bytes] = []
        pos = 0  # consumed so far; the buffer is compacted once, at the end
        try:
            while not self._final:
                got = _varint.decode(self._buf, pos)
                if got is None:
                    break
                length, start = got
                if length == 0:
                    pos = start
                    self._final = True
                    break
                if not self._nt < length <= self._nt + MAX_RECEIVE_CHUNK:
                    raise SealError from None  # an empty non-final chunk counts as a decryption error
                if len(self._buf) < start + length:
                    break
                sealed = bytes(self._buf[start : start + length])
                pos = start + length
                out.append(self._count(self._open(sealed, False)))
        finally:
            del self._buf[:pos]
        if self._final and len(self._buf) > self._nt + MAX_RECEIVE_CHUNK:
            raise SealError from None
        return out

    def finish(self) -> bytes:
        if not self._final or len(self._buf) < self._nt:
            raise SealError from None  # truncated: the authenticated final chunk never came
        sealed = bytes(self._buf)
        self._buf.clear()
        return self._count(self._open(sealed, True))


class _Latch:
    """Fails closed: after one SealError every later call raises SealError too."""

    __slots__ = ("failed",)

    def __init__(self) -> None:
        self.failed = False

    def run(self, step: Callable[[], _T]) -> _T:
        if self.failed:
            raise SealError from None
        try:
            return step()
        except SealError:
            self.failed = True
            raise SealError from None


def _pieces(data: bytes) -> list[bytes]:
    return [data[i : i + SEND_CHUNK_SIZE] for i in range(0, len(data), SEND_CHUNK_SIZE)]


def _frame(sealed: bytes) -> bytes:
    return _varint.encode(len(sealed)) + sealed


# --- chunked requests ----------------------------------------------------------------------------


class ChunkedRequestSealer:
    """Client: writes a ``message/ohttp-chunked-req`` body incrementally.

    :meth:`write` returns non-final chunks (the first output also carries the
    header and ``enc``); :meth:`close` returns the rest, ending with the final
    chunk.  Then :meth:`response_opener` reads the chunked response.
    """

    __slots__ = ("_hdr", "_ctx", "_started", "_closed", "_total")

    def __init__(self, config: KeyConfig) -> None:
        self._init(config, None)

    @classmethod
    def _deterministic(cls, config: KeyConfig, ephemeral: bytes) -> ChunkedRequestSealer:
        # Deterministic seam for known-answer tests.
        self = cls.__new__(cls)
        self._init(config, ephemeral)
        return self

    def _init(self, config: KeyConfig, ephemeral: bytes | None) -> None:
        self._hdr, self._ctx = _client_setup(config, _CHUNKED_REQUEST_LABEL, ephemeral)
        self._started = False
        self._closed = False
        self._total = 0

    def _prefix(self) -> bytes:
        if self._started:
            return b""
        self._started = True
        return self._hdr + self._ctx.enc

    def _account(self, data: bytes) -> None:
        if self._closed:
            raise SealError from None
        self._total += len(data)
        if self._total > MAX_MESSAGE_BYTES:
            raise SealError from None

    def write(self, data: bytes) -> bytes:
        """Seal ``data`` as non-final chunks of at most :data:`SEND_CHUNK_SIZE` bytes."""
        self._account(data)
        return self._prefix() + b"".join(_frame(self._ctx.seal(p, b"")) for p in _pieces(bytes(data)))

    def close(self, data: bytes = b"") -> bytes:
        """Seal the rest of the request; its last piece (possibly empty) is the final chunk."""
        self._account(data)
        pieces = _pieces(bytes(data)) or [b""]
        out = [self._prefix()]
        out += [_frame(self._ctx.seal(p, b"")) for p in pieces[:-1]]
        out.append(b"\x00" + self._ctx.seal(pieces[-1], _FINAL_AAD))
        self._closed = True
        return b"".join(out)

    def response_opener(self) -> ChunkedResponseOpener:
        """The opener of the ``message/ohttp-chunked-res`` that answers this request."""
        return ChunkedResponseOpener(self._ctx, self._ctx.enc, *_CLIENT_SUITE)


def encapsulate_chunked_request(config: KeyConfig, request: bytes) -> tuple[bytes, ChunkedResponseOpener]:
    """Seal a whole ``request`` as ``message/ohttp-chunked-req``: ``(body, response opener)``."""
    sealer = ChunkedRequestSealer(config)
    body = sealer.close(request)
    return body, sealer.response_opener()


class ChunkedRequestOpener:
    """Gateway: sans-IO reader of a ``message/ohttp-chunked-req`` body.

    :meth:`feed` returns the plaintext of each chunk it completes; :meth:`finish`
    (at the end of the body) returns the final chunk's plaintext, or raises
    :class:`SealError` if the body was truncated.  Only a complete request
    gives a :meth:`response_sealer`: the gate never answers before the whole
    request authenticated, which also keeps exchanges non-interactive.
    """

    __slots__ = ("_keys", "_latch", "_head", "_ctx", "_enc", "_suite", "_reader", "_done")

    def __init__(self, keys: KeyLookup) -> None:
        self._keys = keys
        self._latch = _Latch()
        self._head = bytearray()
        self._ctx: _hazmat.ReceiverContext | None = None
        self._enc = b""
        self._suite = (0, 0)
        self._reader: _ChunkReader | None = None
        self._done = False

    @property
    def enc(self) -> bytes:
        """The request's encapsulated key (empty until the header arrived)."""
        return self._enc

    def _open_chunk(self, sealed: bytes, final: bool) -> bytes:
        if self._ctx is None:
            raise SealError from None
        return self._ctx.open(sealed, _FINAL_AAD if final else b"")

    def feed(self, data: bytes) -> list[bytes]:
        return self._latch.run(lambda: self._feed(bytes(data)))

    def _feed(self, data: bytes) -> list[bytes]:
        if self._done:
            raise SealError from None
        if self._reader is None:
            self._head += data
            if len(self._head) < 7:
                return []
            (kem_id,) = struct.unpack_from("!H", self._head, 1)
            try:
                _, nenc = _hazmat.kem_sizes(kem_id)
            except KeyError:
                raise SealError from None
            if len(self._head) < 7 + nenc:
                return []
            ctx, enc, kdf_id, aead_id, offset = _gateway_setup(self._keys, self._head, _CHUNKED_REQUEST_LABEL)
            self._ctx, self._enc, self._suite = ctx, enc, (kdf_id, aead_id)
            self._reader = _ChunkReader(_hazmat.aead_sizes(aead_id)[2], self._open_chunk)
            data = bytes(self._head[offset:])
            self._head.clear()
        return self._reader.feed(data)

    def finish(self) -> bytes:
        return self._latch.run(self._finish)

    def _finish(self) -> bytes:
        if self._done or self._reader is None:
            raise SealError from None
        final = self._reader.finish()
        self._done = True
        return final

    def response_sealer(self) -> ChunkedResponseSealer:
        """The sealer for the chunked response; only after :meth:`finish` succeeded."""
        return self._response_sealer(None)

    def _response_sealer(self, response_nonce: bytes | None) -> ChunkedResponseSealer:
        # ``response_nonce`` is the deterministic seam for known-answer tests.
        if not self._done or self._latch.failed or self._ctx is None:
            raise SealError from None
        if response_nonce is None:
            return ChunkedResponseSealer(self._ctx, self._enc, *self._suite)
        return ChunkedResponseSealer._deterministic(self._ctx, self._enc, *self._suite, response_nonce)


def decapsulate_chunked_request(keys: KeyLookup, body: bytes) -> tuple[bytes, ChunkedResponseSealer]:
    """Open a whole ``message/ohttp-chunked-req`` body: ``(binary HTTP request, response sealer)``."""
    opener = ChunkedRequestOpener(keys)
    parts = opener.feed(body)
    parts.append(opener.finish())
    return b"".join(parts), opener.response_sealer()


# --- chunked responses ---------------------------------------------------------------------------


def _chunk_nonce(nonce: bytes, counter: int) -> bytes:
    # chunk_nonce = aead_nonce XOR encode(Nn, counter)
    if counter >= 1 << (8 * len(nonce)):
        raise SealError from None
    return (int.from_bytes(nonce, "big") ^ counter).to_bytes(len(nonce), "big")


class ChunkedResponseSealer:
    """Gateway: seals a ``message/ohttp-chunked-res`` body chunk by chunk.

    The first output of :meth:`write` or :meth:`close` starts with the response
    nonce; :meth:`close` ends the stream with the final chunk (AAD ``"final"``).
    """

    __slots__ = ("_aead", "_key", "_nonce", "_response_nonce", "_counter", "_started", "_closed", "_total", "_enc")

    def __init__(self, ctx: _hazmat.ReceiverContext, enc: bytes, kdf_id: int, aead_id: int) -> None:
        self._init(ctx, enc, kdf_id, aead_id, _hazmat.random_bytes(_entropy_len(aead_id)))

    @classmethod
    def _deterministic(
        cls, ctx: _hazmat.ReceiverContext, enc: bytes, kdf_id: int, aead_id: int, response_nonce: bytes
    ) -> ChunkedResponseSealer:
        # Deterministic seam for known-answer tests.
        self = cls.__new__(cls)
        self._init(ctx, enc, kdf_id, aead_id, response_nonce)
        return self

    def _init(self, ctx: _hazmat.ReceiverContext, enc: bytes, kdf_id: int, aead_id: int, response_nonce: bytes) -> None:
        size = _entropy_len(aead_id)
        if len(response_nonce) != size:
            raise SealError from None
        secret = ctx.export(_CHUNKED_RESPONSE_LABEL, size)
        self._key, self._nonce = _hazmat.response_key_and_nonce(kdf_id, aead_id, secret, enc + response_nonce)
        self._aead = aead_id
        self._response_nonce = response_nonce
        self._enc = enc
        self._counter = 0
        self._started = False
        self._closed = False
        self._total = 0

    @property
    def enc(self) -> bytes:
        """The request's encapsulated key: what a ReplayGuard remembers."""
        return self._enc

    def _prefix(self) -> bytes:
        if self._started:
            return b""
        self._started = True
        return self._response_nonce

    def _seal(self, piece: bytes, aad: bytes) -> bytes:
        sealed = _hazmat.aead_seal(self._aead, self._key, _chunk_nonce(self._nonce, self._counter), piece, aad)
        self._counter += 1
        return sealed

    def _account(self, data: bytes) -> None:
        if self._closed:
            raise SealError from None
        self._total += len(data)
        if self._total > MAX_MESSAGE_BYTES:
            raise SealError from None

    def write(self, data: bytes) -> bytes:
        """Seal ``data`` as non-final chunks of at most :data:`SEND_CHUNK_SIZE` bytes."""
        self._account(data)
        return self._prefix() + b"".join(_frame(self._seal(p, b"")) for p in _pieces(bytes(data)))

    def close(self, data: bytes = b"") -> bytes:
        """Seal the rest of the response; its last piece (possibly empty) is the final chunk."""
        self._account(data)
        pieces = _pieces(bytes(data)) or [b""]
        out = [self._prefix()]
        out += [_frame(self._seal(p, b"")) for p in pieces[:-1]]
        out.append(b"\x00" + self._seal(pieces[-1], _FINAL_AAD))
        self._closed = True
        return b"".join(out)


class ChunkedResponseOpener:
    """Client: sans-IO reader of a ``message/ohttp-chunked-res`` body.

    :meth:`feed` returns the plaintext of each chunk as soon as it
    authenticates (so a streamed answer can be shown as it arrives);
    :meth:`finish`, at the end of the body, returns the final chunk's
    plaintext and raises :class:`SealError` if the stream was truncated, a
    chunk dropped, reordered or altered.  Until :meth:`finish` returns, what
    was read is not known to be complete.
    """

    __slots__ = ("_latch", "_secret", "_enc", "_suite", "_head", "_reader", "_key", "_nonce", "_counter", "_done")

    def __init__(self, ctx: _hazmat.SenderContext, enc: bytes, kdf_id: int, aead_id: int) -> None:
        self._latch = _Latch()
        self._secret = ctx.export(_CHUNKED_RESPONSE_LABEL, _entropy_len(aead_id))
        self._enc = enc
        self._suite = (kdf_id, aead_id)
        self._head = bytearray()
        self._reader: _ChunkReader | None = None
        self._key = b""
        self._nonce = b""
        self._counter = 0
        self._done = False

    def _open_chunk(self, sealed: bytes, final: bool) -> bytes:
        nonce = _chunk_nonce(self._nonce, self._counter)
        self._counter += 1
        return _hazmat.aead_open(self._suite[1], self._key, nonce, sealed, _FINAL_AAD if final else b"")

    def feed(self, data: bytes) -> list[bytes]:
        return self._latch.run(lambda: self._feed(bytes(data)))

    def _feed(self, data: bytes) -> list[bytes]:
        if self._done:
            raise SealError from None
        if self._reader is None:
            kdf_id, aead_id = self._suite
            size = _entropy_len(aead_id)
            self._head += data
            if len(self._head) < size:
                return []
            response_nonce = bytes(self._head[:size])
            data = bytes(self._head[size:])
            self._head.clear()
            self._key, self._nonce = _hazmat.response_key_and_nonce(kdf_id, aead_id, self._secret, self._enc + response_nonce)
            self._reader = _ChunkReader(_hazmat.aead_sizes(aead_id)[2], self._open_chunk)
        return self._reader.feed(data)

    def finish(self) -> bytes:
        return self._latch.run(self._finish)

    def _finish(self) -> bytes:
        if self._done or self._reader is None:
            raise SealError from None
        final = self._reader.finish()
        self._done = True
        return final

    def open(self, body: bytes) -> bytes:
        """Open a whole chunked response body at once: all chunks joined."""
        parts = self.feed(body)
        parts.append(self.finish())
        return b"".join(parts)
