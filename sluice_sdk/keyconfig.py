"""Oblivious HTTP key configurations (RFC 9458 Section 3), parsed strictly.

A key configuration is public: the gateway's key id, its HPKE KEM and public
key, and the (KDF, AEAD) pairs it accepts.  Clients must not trust one that
arrives over the relay (here: the appliance) without checking it, so a client
*pins* configurations by :meth:`KeyConfig.fingerprint` (SHA-256 of the
encoding, lowercase hex) and :func:`select_key_config` refuses anything not
pinned.  An empty pin list denies.

Wire format (RFC 9458 Figure 2)::

    Key Config {
      Key Identifier (8),
      HPKE KEM ID (16),
      HPKE Public Key (Npk * 8),
      HPKE Symmetric Algorithms Length (16) = 4..65532,
      HPKE Symmetric Algorithms (32) ...,
    }

``application/ohttp-keys`` (Section 3.2) is a list of configurations, each
prefixed by a 16-bit length; an incorrectly encoded list is discarded whole.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from . import _hazmat
from .errors import KeyConfigError

__all__ = [
    "KEYS_MEDIA_TYPE",
    "KEM_X25519_HKDF_SHA256",
    "KDF_HKDF_SHA256",
    "AEAD_AES_128_GCM",
    "SymmetricAlgorithm",
    "KeyConfig",
    "encode_key_configs",
    "decode_key_configs",
    "select_key_config",
]

KEYS_MEDIA_TYPE = "application/ohttp-keys"

KEM_X25519_HKDF_SHA256 = _hazmat.KEM_X25519_HKDF_SHA256
KDF_HKDF_SHA256 = _hazmat.KDF_HKDF_SHA256
AEAD_AES_128_GCM = _hazmat.AEAD_AES_128_GCM

# Npk of the KEMs in the IANA HPKE registry whose configurations we can at
# least *parse* (RFC 9180 Section 7.1; 0x647A from draft-ietf-hpke-pq).  Only
# those in _hazmat.SUPPORTED_KEMS can be *used*.  An unknown KEM id makes a
# configuration unparseable (its public key length is unknown), so it is an
# error rather than something to skip.
_KEM_PUBLIC_KEY_LENGTHS: dict[int, int] = {
    0x0010: 65,  # DHKEM(P-256, HKDF-SHA256)
    0x0011: 97,  # DHKEM(P-384, HKDF-SHA384)
    0x0012: 133,  # DHKEM(P-521, HKDF-SHA512)
    0x0020: 32,  # DHKEM(X25519, HKDF-SHA256)
    0x0021: 56,  # DHKEM(X448, HKDF-SHA512)
    0x647A: 1216,  # MLKEM768-X25519 (X-Wing)
}

# Symmetric Algorithms Length is 4..65532 (RFC 9458 Figure 2), four bytes each.
_MIN_SYMMETRIC_BYTES = 4
_MAX_SYMMETRIC_BYTES = 65532
# A gateway publishes a current key and perhaps the next one; 16 is generous
# and bounds the work a hostile list can cause.
MAX_KEY_CONFIGS = 16
# A fingerprint is SHA-256 in lowercase hex.
_FINGERPRINT_LENGTH = 64
_HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True, slots=True)
class SymmetricAlgorithm:
    """One (HPKE KDF id, HPKE AEAD id) pair a gateway accepts."""

    kdf_id: int
    aead_id: int

    def __post_init__(self) -> None:
        if not (0 <= self.kdf_id <= 0xFFFF and 0 <= self.aead_id <= 0xFFFF):
            raise KeyConfigError("KDF and AEAD ids are 16-bit integers")


_DEFAULT_SYMMETRIC = (SymmetricAlgorithm(KDF_HKDF_SHA256, AEAD_AES_128_GCM),)


@dataclass(frozen=True, slots=True)
class KeyConfig:
    """One RFC 9458 key configuration.  Constructing one validates it."""

    key_id: int
    kem_id: int
    public_key: bytes
    symmetric: tuple[SymmetricAlgorithm, ...] = _DEFAULT_SYMMETRIC

    def __post_init__(self) -> None:
        if not 0 <= self.key_id <= 0xFF:
            raise KeyConfigError("key_id must be 0..255 (RFC 9458 Section 3.1)")
        npk = _KEM_PUBLIC_KEY_LENGTHS.get(self.kem_id)
        if npk is None:
            raise KeyConfigError("unknown HPKE KEM id")
        if not isinstance(self.public_key, bytes) or len(self.public_key) != npk:
            raise KeyConfigError("public key length does not match the KEM")
        count = len(self.symmetric)
        if not _MIN_SYMMETRIC_BYTES <= 4 * count <= _MAX_SYMMETRIC_BYTES:
            raise KeyConfigError("a key configuration lists 1..16383 symmetric algorithms")
        if len(set(self.symmetric)) != count:
            raise KeyConfigError("symmetric algorithms are listed twice")

    def encode(self) -> bytes:
        """The RFC 9458 Section 3.1 encoding."""
        algorithms = b"".join(struct.pack("!HH", s.kdf_id, s.aead_id) for s in self.symmetric)
        return struct.pack("!BH", self.key_id, self.kem_id) + self.public_key + struct.pack("!H", len(algorithms)) + algorithms

    @classmethod
    def decode(cls, data: bytes) -> KeyConfig:
        """Parse exactly one configuration; :class:`KeyConfigError` if it is malformed."""
        config, end = _decode_one(bytes(data), 0)
        if end != len(data):
            raise KeyConfigError("trailing bytes after the key configuration")
        return config

    def fingerprint(self) -> str:
        """SHA-256 of :meth:`encode`, lowercase hex: what a client pins."""
        return hashlib.sha256(self.encode()).hexdigest()

    @property
    def usable(self) -> bool:
        """Whether this SDK can seal to it: supported KEM and our fixed (KDF, AEAD) offered."""
        return self.kem_id in _hazmat.SUPPORTED_KEMS and any(
            (s.kdf_id, s.aead_id) in _hazmat.SUPPORTED_SYMMETRIC for s in self.symmetric
        )


def _decode_one(data: bytes, offset: int) -> tuple[KeyConfig, int]:
    if len(data) - offset < 3:
        raise KeyConfigError("key configuration is truncated")
    key_id, kem_id = struct.unpack_from("!BH", data, offset)
    offset += 3
    npk = _KEM_PUBLIC_KEY_LENGTHS.get(kem_id)
    if npk is None:
        raise KeyConfigError("unknown HPKE KEM id")
    if len(data) - offset < npk + 2:
        raise KeyConfigError("key configuration is truncated")
    public_key = data[offset : offset + npk]
    offset += npk
    (sym_len,) = struct.unpack_from("!H", data, offset)
    offset += 2
    if sym_len % 4 or not _MIN_SYMMETRIC_BYTES <= sym_len <= _MAX_SYMMETRIC_BYTES:
        raise KeyConfigError("symmetric algorithms length must be 4..65532 and a multiple of 4")
    if len(data) - offset < sym_len:
        raise KeyConfigError("key configuration is truncated")
    symmetric = tuple(SymmetricAlgorithm(*struct.unpack_from("!HH", data, offset + i)) for i in range(0, sym_len, 4))
    return KeyConfig(key_id, kem_id, public_key, symmetric), offset + sym_len


def encode_key_configs(configs: Iterable[KeyConfig]) -> bytes:
    """The ``application/ohttp-keys`` body (RFC 9458 Section 3.2)."""
    out = []
    for config in configs:
        encoded = config.encode()
        if len(encoded) > 0xFFFF:
            raise KeyConfigError("key configuration too long for a 16-bit length")
        out.append(struct.pack("!H", len(encoded)) + encoded)
    if not out:
        raise KeyConfigError("an application/ohttp-keys body has at least one configuration")
    return b"".join(out)


def decode_key_configs(data: bytes) -> tuple[KeyConfig, ...]:
    """Parse an ``application/ohttp-keys`` body; any encoding error discards it whole."""
    data = bytes(data)
    configs: list[KeyConfig] = []
    offset = 0
    while offset < len(data):
        if len(configs) >= MAX_KEY_CONFIGS:
            raise KeyConfigError("too many key configurations")
        if len(data) - offset < 2:
            raise KeyConfigError("key configuration list is truncated")
        (length,) = struct.unpack_from("!H", data, offset)
        offset += 2
        end = offset + length
        if end > len(data):
            raise KeyConfigError("key configuration list is truncated")
        config, used = _decode_one(data[:end], offset)
        if used != end:
            raise KeyConfigError("key configuration length prefix does not match its content")
        configs.append(config)
        offset = end
    if not configs:
        raise KeyConfigError("an application/ohttp-keys body has at least one configuration")
    return tuple(configs)


def _check_pin(pin: str) -> str:
    if len(pin) != _FINGERPRINT_LENGTH or not set(pin) <= _HEX:
        raise KeyConfigError("a pin is a SHA-256 fingerprint in 64 lowercase hex digits")
    return pin


def select_key_config(configs: Iterable[KeyConfig], pinned: Iterable[str]) -> KeyConfig:
    """The first configuration that this SDK can use and whose fingerprint is pinned.

    Raises :class:`KeyConfigError` when none is: the gateway's key changed (or
    the relay substituted one), or the pins are empty, which denies everything.
    """
    pins = [_check_pin(p) for p in pinned]
    if not pins:
        raise KeyConfigError("no pinned key configuration fingerprints: refusing to seal")
    for config in configs:
        if not config.usable:
            continue
        fingerprint = config.fingerprint()
        if any(hmac.compare_digest(fingerprint, pin) for pin in pins):
            return config
    raise KeyConfigError("no usable key configuration matches a pinned fingerprint (key changed?)")
