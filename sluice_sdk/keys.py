"""The gateway's keys: generate, store (mode 0600), load, rotate, look up by key id.

Server side only; clients need nothing here but :func:`fingerprint`.

* :func:`generate_key` makes a key pair with its RFC 9458 key configuration
  (the fixed suite: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-128-GCM).
* :func:`save_private_key` writes it to a new file with mode 0600 (never over
  an existing file); :func:`load_private_key` refuses a file that group or
  others can read, as OpenSSH does.
* :class:`KeyRing` holds the current key and retired keys that are still
  accepted until their overlap window ends, so that clients holding the old
  configuration keep working during a rotation.  Only the current key is
  advertised.  An unknown or expired key id raises
  :class:`~sluice_sdk.errors.SealError`, like every other reason not to open a
  request (RFC 9458 Section 6.4 key management; Section 6.6 forward secrecy
  comes from deleting retired keys after the window).
"""

from __future__ import annotations

import json
import os
import stat
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from . import _hazmat
from .errors import KeyConfigError, SealError
from .keyconfig import (
    AEAD_AES_128_GCM,
    KDF_HKDF_SHA256,
    KEM_X25519_HKDF_SHA256,
    KeyConfig,
    SymmetricAlgorithm,
    encode_key_configs,
)

__all__ = [
    "GatewayKey",
    "KeyRing",
    "generate_key",
    "save_private_key",
    "load_private_key",
    "fingerprint",
]

_FILE_FORMAT = "sluice-ohttp-gateway-key"
_FILE_VERSION = 1
_FILE_KEYS = frozenset({"format", "version", "key_id", "kem_id", "symmetric", "private_key"})
# A key file is a few hundred bytes; refuse to read anything much larger.
_MAX_KEY_FILE_BYTES = 64 * 1024
_FIXED_SYMMETRIC = (SymmetricAlgorithm(KDF_HKDF_SHA256, AEAD_AES_128_GCM),)


@dataclass(frozen=True, slots=True)
class GatewayKey:
    """A private key with the public key configuration that advertises it."""

    config: KeyConfig
    private_key: _hazmat.PrivateKey

    def __post_init__(self) -> None:
        if self.private_key.kem_id != self.config.kem_id or self.private_key.public_key != self.config.public_key:
            raise KeyConfigError("private key does not match the key configuration")

    @property
    def key_id(self) -> int:
        return self.config.key_id

    def lookup(self, key_id: int) -> GatewayKey:
        """A single key is a key ring of one (handy for tests and one-key gateways)."""
        if key_id != self.config.key_id:
            raise SealError from None
        return self


def generate_key(key_id: int) -> GatewayKey:
    """A fresh gateway key pair with id ``key_id`` (0..255) and the fixed suite."""
    private_key = _hazmat.generate_private_key(KEM_X25519_HKDF_SHA256)
    config = KeyConfig(key_id, KEM_X25519_HKDF_SHA256, private_key.public_key, _FIXED_SYMMETRIC)
    return GatewayKey(config, private_key)


def fingerprint(config: KeyConfig) -> str:
    """SHA-256 of the encoded key configuration, lowercase hex: what clients pin."""
    return config.fingerprint()


def save_private_key(key: GatewayKey, path: str | os.PathLike[str]) -> None:
    """Write ``key`` to a *new* file created with mode 0600 (``FileExistsError`` if it exists)."""
    document = {
        "format": _FILE_FORMAT,
        "version": _FILE_VERSION,
        "key_id": key.config.key_id,
        "kem_id": key.config.kem_id,
        "symmetric": [[s.kdf_id, s.aead_id] for s in key.config.symmetric],
        "private_key": key.private_key.reveal().hex(),
    }
    data = (json.dumps(document, indent=2) + "\n").encode("ascii")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags, 0o600)
    try:
        os.fchmod(fd, 0o600)  # in case the umask or the filesystem widened it
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)


def load_private_key(path: str | os.PathLike[str]) -> GatewayKey:
    """Read a key written by :func:`save_private_key`.

    Raises :class:`KeyConfigError`, naming the file and the fix, if the file is
    a symlink, not a regular file, accessible by group or others, owned by
    another user, or not exactly the expected document.
    """
    name = os.fspath(path)
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(name, flags)
    except OSError as exc:
        raise KeyConfigError(f"cannot open gateway key file {name!r}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise KeyConfigError(f"gateway key file {name!r} is not a regular file")
        if info.st_mode & 0o077:
            raise KeyConfigError(f"gateway key file {name!r} is accessible by group or others: chmod 600 it")
        if info.st_uid != os.geteuid():
            raise KeyConfigError(f"gateway key file {name!r} is owned by another user: chown it to the gate's account")
        data = os.read(fd, _MAX_KEY_FILE_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > _MAX_KEY_FILE_BYTES:
        raise KeyConfigError(f"gateway key file {name!r} is too large")
    return _parse_key_file(data, name)


def _parse_key_file(data: bytes, name: str) -> GatewayKey:
    bad = KeyConfigError(f"gateway key file {name!r} is not a {_FILE_FORMAT} v{_FILE_VERSION} document")
    try:
        document = json.loads(data.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise bad from None
    if not isinstance(document, dict) or set(document) != _FILE_KEYS:
        raise bad
    if document["format"] != _FILE_FORMAT or document["version"] != _FILE_VERSION:
        raise bad
    key_id, kem_id, symmetric, hex_key = (
        document["key_id"],
        document["kem_id"],
        document["symmetric"],
        document["private_key"],
    )
    if not (type(key_id) is int and type(kem_id) is int and isinstance(hex_key, str) and isinstance(symmetric, list)):
        raise bad
    if not all(isinstance(p, list) and len(p) == 2 and all(type(i) is int for i in p) for p in symmetric):
        raise bad
    if kem_id not in _hazmat.SUPPORTED_KEMS:
        raise KeyConfigError(f"gateway key file {name!r} uses an unsupported KEM")
    try:
        private_key = _hazmat.private_key_from_bytes(kem_id, bytes.fromhex(hex_key))
    except ValueError:
        raise bad from None
    pairs = tuple(SymmetricAlgorithm(k, a) for k, a in symmetric)
    if not all((p.kdf_id, p.aead_id) in _hazmat.SUPPORTED_SYMMETRIC for p in pairs):
        raise KeyConfigError(f"gateway key file {name!r} lists a KDF/AEAD pair this gateway does not implement")
    config = KeyConfig(key_id, kem_id, private_key.public_key, pairs)
    return GatewayKey(config, private_key)


class KeyRing:
    """The current gateway key plus retired keys still accepted until their window ends.

    ``clock`` (seconds, ``time.time`` by default) is injectable for tests.  The
    ring is not thread-safe by itself; the gate uses it from one thread.
    """

    __slots__ = ("_current", "_retired", "_clock")

    def __init__(
        self,
        current: GatewayKey,
        *,
        retired: Iterable[tuple[GatewayKey, float]] = (),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._current = current
        self._retired: dict[int, tuple[GatewayKey, float]] = {}
        self._clock = clock
        for key, accepted_until in retired:
            self.retire(key, accepted_until=accepted_until)

    @property
    def current(self) -> GatewayKey:
        return self._current

    def retire(self, key: GatewayKey, *, accepted_until: float) -> None:
        """Accept ``key`` until ``accepted_until`` (a ``clock`` time) without advertising it."""
        if key.key_id == self._current.key_id or key.key_id in self._retired:
            raise KeyConfigError("key id already in the key ring: every key needs its own id")
        self._retired[key.key_id] = (key, accepted_until)

    def rotate(self, new: GatewayKey, *, overlap_seconds: float) -> None:
        """Make ``new`` current; the old current key stays accepted for ``overlap_seconds``."""
        if overlap_seconds < 0:
            raise KeyConfigError("overlap_seconds must not be negative")
        self.prune()
        if new.key_id == self._current.key_id or new.key_id in self._retired:
            raise KeyConfigError("key id already in the key ring: every key needs its own id")
        old = self._current
        self._current = new
        self._retired[old.key_id] = (old, self._clock() + overlap_seconds)

    def next_key_id(self) -> int:
        """The lowest key id (0..255) not used by the current or a retained key."""
        self.prune()
        used = {self._current.key_id, *self._retired}
        for key_id in range(256):
            if key_id not in used:
                return key_id
        raise KeyConfigError("all 256 key ids are in use")  # pragma: no cover - needs 256 keys

    def prune(self) -> None:
        """Forget retired keys whose window has ended (their private keys become unreachable)."""
        now = self._clock()
        for key_id in [k for k, (_, until) in self._retired.items() if until <= now]:
            del self._retired[key_id]

    def lookup(self, key_id: int) -> GatewayKey:
        """The key for ``key_id``; :class:`SealError` if unknown, or retired and past its window."""
        if key_id == self._current.key_id:
            return self._current
        entry = self._retired.get(key_id)
        if entry is None or entry[1] <= self._clock():
            raise SealError from None
        return entry[0]

    def configs(self) -> tuple[KeyConfig, ...]:
        """What to advertise: the current key's configuration only."""
        return (self._current.config,)

    def encoded_configs(self) -> bytes:
        """The ``application/ohttp-keys`` body to serve."""
        return encode_key_configs(self.configs())
