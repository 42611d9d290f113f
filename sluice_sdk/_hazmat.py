"""HAZMAT: the only module of the SDK that touches cryptographic primitives.

Everything here is a thin adapter over two libraries; no primitive is written
here:

* ``pyhpke`` for HPKE (RFC 9180) contexts: ``SetupBaseS``/``SetupBaseR``,
  ``Seal``/``Open`` with the context's sequence number, and ``Export``.
  ``cryptography.hazmat.primitives.hpke`` (cryptography >= 50) only offers
  single-shot base-mode ``Seal``/``Open`` without ``Export``, and Oblivious
  HTTP needs ``Export`` to key the response, so contexts come from pyhpke.
* ``cryptography`` for X25519 keys, HKDF-SHA256 ``Extract``/``Expand`` and
  AES-128-GCM, used for the response keys of RFC 9458 Section 4.4 and the
  chunked responses of draft-ietf-ohai-chunked-ohttp.

The rest of the SDK calls the functions below with plain bytes and never
imports ``cryptography`` or ``pyhpke`` itself.  Failures to open anything raise
:class:`~sluice_sdk.errors.SealError` (message-less, ``from None``).

Suites
------
One suite is implemented: DHKEM(X25519, HKDF-SHA256) / HKDF-SHA256 /
AES-128-GCM, the RFC 9458 example suite.  Adding a suite means adding a row
to ``_KEMS``, ``_KDFS`` or ``_AEADS``.

Post-quantum extension point
----------------------------
The hybrid KEM MLKEM768-X25519 (X-Wing, HPKE KEM id 0x647A) is what a
post-quantum key configuration would use.  cryptography 50 ships it
(``hpke.KEM.MLKEM768_X25519``) but only behind the single-shot ``Suite``
API: no sender/receiver context, no ``Export``, and no way to pass the
ephemeral randomness.  Oblivious HTTP cannot be built on that (the response
key is ``context.Export(...)``; chunked requests need a context with a
sequence number), and pyhpke 0.6.5 has no ML-KEM at all.  Writing the X-Wing
combiner here would be writing a primitive, which this module refuses to do.
When a library exposes an HPKE *context* for KEM 0x647A, add a ``_Kem`` row
whose ``suite`` builds that library's context with the same four methods
(``seal``, ``open``, ``export`` and the ``enc`` it returns); nothing outside
this module needs to change beyond allowing the KEM id in key configurations.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import pyhpke
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand

from .errors import SealError

__all__ = [
    "KEM_X25519_HKDF_SHA256",
    "KDF_HKDF_SHA256",
    "AEAD_AES_128_GCM",
    "SUPPORTED_KEMS",
    "SUPPORTED_SYMMETRIC",
    "PrivateKey",
    "SenderContext",
    "ReceiverContext",
    "generate_private_key",
    "private_key_from_bytes",
    "setup_sender",
    "setup_receiver",
    "response_key_and_nonce",
    "aead_seal",
    "aead_open",
    "aead_sizes",
    "kem_sizes",
    "random_bytes",
]

# IANA HPKE registry identifiers (RFC 9180 Section 7).
KEM_X25519_HKDF_SHA256 = 0x0020
KDF_HKDF_SHA256 = 0x0001
AEAD_AES_128_GCM = 0x0001


@dataclass(frozen=True, slots=True)
class _Kem:
    pyhpke_id: pyhpke.KEMId
    npk: int  # public key length (RFC 9180 Npk)
    nenc: int  # encapsulated key length (RFC 9180 Nenc)
    nsk: int  # private key length (RFC 9180 Nsk)
    generate: Callable[[], bytes]  # a fresh private key, serialized


@dataclass(frozen=True, slots=True)
class _Kdf:
    pyhpke_id: pyhpke.KDFId
    hash: Callable[[], hashes.HashAlgorithm]


@dataclass(frozen=True, slots=True)
class _Aead:
    pyhpke_id: pyhpke.AEADId
    nk: int
    nn: int
    nt: int
    cipher: Callable[[bytes], AESGCM]


def _generate_x25519() -> bytes:
    return X25519PrivateKey.generate().private_bytes_raw()


_KEMS: dict[int, _Kem] = {
    KEM_X25519_HKDF_SHA256: _Kem(pyhpke.KEMId.DHKEM_X25519_HKDF_SHA256, 32, 32, 32, _generate_x25519),
    # Extension point: 0x647A MLKEM768-X25519 (X-Wing); see the module docstring.
}
_KDFS: dict[int, _Kdf] = {KDF_HKDF_SHA256: _Kdf(pyhpke.KDFId.HKDF_SHA256, hashes.SHA256)}
_AEADS: dict[int, _Aead] = {AEAD_AES_128_GCM: _Aead(pyhpke.AEADId.AES128_GCM, 16, 12, 16, AESGCM)}

SUPPORTED_KEMS: frozenset[int] = frozenset(_KEMS)
SUPPORTED_SYMMETRIC: frozenset[tuple[int, int]] = frozenset((k, a) for k in _KDFS for a in _AEADS)

# Errors that the libraries raise for bad keys, bad encapsulations and bad tags.
_OPEN_FAILURES = (pyhpke.PyHPKEError, InvalidTag, ValueError)


def random_bytes(n: int) -> bytes:
    """``n`` bytes from the operating system's CSPRNG."""
    return os.urandom(n)


def aead_sizes(aead_id: int) -> tuple[int, int, int]:
    """``(Nk, Nn, Nt)`` of a supported AEAD."""
    aead = _AEADS[aead_id]
    return aead.nk, aead.nn, aead.nt


class PrivateKey:
    """An HPKE private key.  Prints as ``**********``; bytes only via :meth:`reveal`."""

    __slots__ = ("_kem_id", "_raw", "_public")

    def __init__(self, kem_id: int, raw: bytes) -> None:
        kem = _KEMS.get(kem_id)
        if kem is None or len(raw) != kem.nsk:
            raise ValueError("unsupported KEM or wrong private key length")
        self._kem_id = kem_id
        self._raw = bytes(raw)
        sk = _suite(kem_id, KDF_HKDF_SHA256, AEAD_AES_128_GCM).kem.deserialize_private_key(self._raw)
        self._public: bytes = _public_bytes(sk)

    @property
    def kem_id(self) -> int:
        return self._kem_id

    @property
    def public_key(self) -> bytes:
        """The serialized public key (RFC 9180 ``SerializePublicKey``)."""
        return self._public

    def reveal(self) -> bytes:
        """The serialized private key, for writing to a mode-0600 file and nothing else."""
        return self._raw

    def __repr__(self) -> str:
        return "PrivateKey(**********)"

    __str__ = __repr__


def _public_bytes(sk: pyhpke.KEMKeyInterface) -> bytes:
    raw = sk.raw
    if isinstance(raw, X25519PrivateKey):
        pub: X25519PublicKey = raw.public_key()
        return pub.public_bytes_raw()
    raise ValueError("unsupported key type")


def generate_private_key(kem_id: int = KEM_X25519_HKDF_SHA256) -> PrivateKey:
    """A fresh private key for ``kem_id`` from the OS CSPRNG."""
    return PrivateKey(kem_id, _KEMS[kem_id].generate())


def private_key_from_bytes(kem_id: int, raw: bytes) -> PrivateKey:
    """Deserialize a private key; ``ValueError`` if it is not one."""
    return PrivateKey(kem_id, raw)


def kem_sizes(kem_id: int) -> tuple[int, int]:
    """``(Npk, Nenc)`` of a supported KEM."""
    kem = _KEMS[kem_id]
    return kem.npk, kem.nenc


def _suite(kem_id: int, kdf_id: int, aead_id: int) -> pyhpke.CipherSuite:
    return pyhpke.CipherSuite.new(_KEMS[kem_id].pyhpke_id, _KDFS[kdf_id].pyhpke_id, _AEADS[aead_id].pyhpke_id)


class SenderContext:
    """An HPKE base-mode sender context (RFC 9180 Section 5.1.1 ``SetupBaseS``)."""

    __slots__ = ("enc", "_ctx")

    def __init__(self, enc: bytes, ctx: pyhpke.ContextInterface) -> None:
        self.enc = enc
        self._ctx = ctx

    def seal(self, plaintext: bytes, aad: bytes = b"") -> bytes:
        return self._ctx.seal(plaintext, aad)

    def export(self, exporter_context: bytes, length: int) -> bytes:
        return self._ctx.export(exporter_context, length)


class ReceiverContext:
    """An HPKE base-mode receiver context (RFC 9180 Section 5.1.1 ``SetupBaseR``)."""

    __slots__ = ("_ctx",)

    def __init__(self, ctx: pyhpke.ContextInterface) -> None:
        self._ctx = ctx

    def open(self, ciphertext: bytes, aad: bytes = b"") -> bytes:
        """Open the next message in sequence; :class:`SealError` if it does not authenticate."""
        try:
            return self._ctx.open(ciphertext, aad)
        except _OPEN_FAILURES:
            raise SealError from None

    def export(self, exporter_context: bytes, length: int) -> bytes:
        return self._ctx.export(exporter_context, length)


def setup_sender(
    kem_id: int,
    kdf_id: int,
    aead_id: int,
    public_key: bytes,
    info: bytes,
    *,
    _ephemeral: bytes | None = None,
) -> SenderContext:
    """``SetupBaseS(pkR, info)``.

    ``_ephemeral`` is the deterministic seam for known-answer tests only: the
    serialized ephemeral private key.  Production callers never pass it, and the
    ephemeral key then comes from the OS CSPRNG inside pyhpke/cryptography.
    """
    suite = _suite(kem_id, kdf_id, aead_id)
    try:
        pkr = suite.kem.deserialize_public_key(public_key)
    except ValueError:
        raise SealError from None
    eks: pyhpke.KEMKeyPair | None = None
    if _ephemeral is not None:
        esk = suite.kem.deserialize_private_key(_ephemeral)
        epk = suite.kem.deserialize_public_key(_public_bytes(esk))
        eks = pyhpke.KEMKeyPair(esk, epk)
    try:
        enc, ctx = suite.create_sender_context(pkr, info, eks=eks)
    except _OPEN_FAILURES:  # e.g. a low-order public key giving an all-zero shared secret
        raise SealError from None
    return SenderContext(enc, ctx)


def setup_receiver(kem_id: int, kdf_id: int, aead_id: int, private_key: PrivateKey, enc: bytes, info: bytes) -> ReceiverContext:
    """``SetupBaseR(enc, skR, info)``; :class:`SealError` if ``enc`` is not a valid encapsulation."""
    if private_key.kem_id != kem_id:
        raise SealError from None
    suite = _suite(kem_id, kdf_id, aead_id)
    try:
        skr = suite.kem.deserialize_private_key(private_key.reveal())
        return ReceiverContext(suite.create_recipient_context(enc, skr, info))
    except _OPEN_FAILURES:
        raise SealError from None


def response_key_and_nonce(kdf_id: int, aead_id: int, secret: bytes, salt: bytes) -> tuple[bytes, bytes]:
    """RFC 9458 Section 4.4: ``prk = Extract(salt, secret)``; key and nonce by ``Expand``."""
    algorithm = _KDFS[kdf_id].hash
    aead = _AEADS[aead_id]
    prk = HKDF.extract(algorithm(), salt, secret)
    key = HKDFExpand(algorithm(), aead.nk, b"key").derive(prk)
    nonce = HKDFExpand(algorithm(), aead.nn, b"nonce").derive(prk)
    return key, nonce


def _prk_for_tests(kdf_id: int, secret: bytes, salt: bytes) -> bytes:
    """``Extract(salt, secret)`` alone, so that tests can check the RFC's intermediate value."""
    return HKDF.extract(_KDFS[kdf_id].hash(), salt, secret)


def aead_seal(aead_id: int, key: bytes, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
    return _AEADS[aead_id].cipher(key).encrypt(nonce, plaintext, aad)


def aead_open(aead_id: int, key: bytes, nonce: bytes, ciphertext: bytes, aad: bytes) -> bytes:
    """AEAD ``Open``; :class:`SealError` if the tag does not verify."""
    try:
        return _AEADS[aead_id].cipher(key).decrypt(nonce, ciphertext, aad)
    except _OPEN_FAILURES:
        raise SealError from None
