"""Gateway keys: files with mode 0600, the key ring's rotation window, lookups failing closed."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from sluice_sdk import ohttp
from sluice_sdk.errors import KeyConfigError, SealError
from sluice_sdk.keyconfig import decode_key_configs
from sluice_sdk.keys import KeyRing, fingerprint, generate_key, load_private_key, save_private_key


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_generate_key() -> None:
    key = generate_key(5)
    assert key.key_id == 5
    assert key.config.kem_id == 0x0020
    assert len(key.config.public_key) == 32
    assert key.config.usable
    assert "**********" in repr(key)
    assert key.private_key.reveal().hex() not in repr(key)
    assert generate_key(5).config.public_key != key.config.public_key


def test_save_and_load(tmp_path: Path) -> None:
    key = generate_key(11)
    path = tmp_path / "gate.key"
    save_private_key(key, path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = load_private_key(path)
    assert loaded.config == key.config
    assert loaded.private_key.reveal() == key.private_key.reveal()
    enc_request, _ = ohttp.encapsulate_request(key.config, b"x")
    assert ohttp.decapsulate_request(loaded, enc_request)[0] == b"x"


def test_save_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "gate.key"
    save_private_key(generate_key(1), path)
    with pytest.raises(FileExistsError):
        save_private_key(generate_key(2), path)


def test_save_ignores_a_wide_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        save_private_key(generate_key(1), tmp_path / "k")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "k").stat().st_mode) == 0o600


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660])
def test_reject_readable_key_file(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "gate.key"
    save_private_key(generate_key(1), path)
    path.chmod(mode)
    with pytest.raises(KeyConfigError, match="chmod 600"):
        load_private_key(path)


def test_reject_symlinked_or_missing_key_file(tmp_path: Path) -> None:
    path = tmp_path / "gate.key"
    save_private_key(generate_key(1), path)
    link = tmp_path / "link.key"
    link.symlink_to(path)
    with pytest.raises(KeyConfigError):
        load_private_key(link)
    with pytest.raises(KeyConfigError):
        load_private_key(tmp_path / "missing.key")
    with pytest.raises(KeyConfigError):
        load_private_key(tmp_path)


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"not json",
        b"[]",
        b'{"format": "sluice-ohttp-gateway-key"}',
        b'{"format": "x", "version": 1, "key_id": 1, "kem_id": 32, "symmetric": [[1, 1]], "private_key": "00"}',
        b'{"format": "sluice-ohttp-gateway-key", "version": 1, "key_id": 1, "kem_id": 32, '
        b'"symmetric": [[1, 1]], "private_key": "zz"}',
        b'{"format": "sluice-ohttp-gateway-key", "version": 1, "key_id": 1, "kem_id": 16, '
        b'"symmetric": [[1, 1]], "private_key": "' + b"00" * 32 + b'"}',
        b'{"format": "sluice-ohttp-gateway-key", "version": 1, "key_id": true, "kem_id": 32, '
        b'"symmetric": [[1, 1]], "private_key": "' + b"11" * 32 + b'"}',
        b'{"format": "sluice-ohttp-gateway-key", "version": 1, "key_id": 300, "kem_id": 32, '
        b'"symmetric": [[1, 1]], "private_key": "' + b"11" * 32 + b'"}',
        b'{"format": "sluice-ohttp-gateway-key", "version": 1, "key_id": 1, "kem_id": 32, '
        b'"symmetric": [[1, 3]], "private_key": "' + b"11" * 32 + b'"}',  # a pair we do not implement
        b'{"format": "sluice-ohttp-gateway-key", "version": 1, "key_id": 1, "kem_id": 32, '
        b'"symmetric": [[1, 1]], "private_key": "' + b"11" * 31 + b'"}',  # short key
        b" " * (64 * 1024 + 1),  # too large to be a key file
        b"\xff\xfe",
    ],
)
def test_reject_malformed_key_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "gate.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, content)
    os.close(fd)
    with pytest.raises(KeyConfigError):
        load_private_key(path)


def test_keyring_current_and_unknown() -> None:
    current = generate_key(1)
    ring = KeyRing(current)
    assert ring.lookup(1) is current
    with pytest.raises(SealError):
        ring.lookup(2)
    assert ring.configs() == (current.config,)
    assert decode_key_configs(ring.encoded_configs()) == (current.config,)


def test_keyring_rotation_window() -> None:
    clock = Clock()
    old, new = generate_key(1), generate_key(2)
    ring = KeyRing(old, clock=clock)
    enc_old, _ = ohttp.encapsulate_request(old.config, b"before rotation")
    ring.rotate(new, overlap_seconds=3600)
    assert ring.current is new
    assert ring.configs() == (new.config,)  # only the current key is advertised
    assert ohttp.decapsulate_request(ring, enc_old)[0] == b"before rotation"  # retired, still accepted
    clock.now += 3599
    assert ohttp.decapsulate_request(ring, enc_old)[0] == b"before rotation"
    clock.now += 1
    with pytest.raises(SealError):  # retired and expired
        ohttp.decapsulate_request(ring, enc_old)
    enc_new, _ = ohttp.encapsulate_request(new.config, b"after")
    assert ohttp.decapsulate_request(ring, enc_new)[0] == b"after"
    ring.prune()
    assert ring.next_key_id() == 0


def test_keyring_retired_at_start() -> None:
    clock = Clock()
    old = generate_key(4)
    ring = KeyRing(generate_key(5), retired=[(old, clock.now + 10)], clock=clock)
    assert ring.lookup(4) is old
    clock.now += 10
    with pytest.raises(SealError):
        ring.lookup(4)


def test_keyring_refuses_duplicate_ids() -> None:
    ring = KeyRing(generate_key(1))
    with pytest.raises(KeyConfigError):
        ring.rotate(generate_key(1), overlap_seconds=10)
    ring.rotate(generate_key(2), overlap_seconds=10)
    with pytest.raises(KeyConfigError):
        ring.rotate(generate_key(1), overlap_seconds=10)  # 1 is still retained
    with pytest.raises(KeyConfigError):
        ring.retire(generate_key(2), accepted_until=0)
    with pytest.raises(KeyConfigError):
        ring.rotate(generate_key(3), overlap_seconds=-1)
    assert ring.next_key_id() == 0


def test_wrong_key_for_config_refused() -> None:
    a, b = generate_key(1), generate_key(1)
    from sluice_sdk.keys import GatewayKey

    with pytest.raises(KeyConfigError):
        GatewayKey(a.config, b.private_key)


def test_fingerprint() -> None:
    key = generate_key(1)
    assert fingerprint(key.config) == key.config.fingerprint()
    assert len(fingerprint(key.config)) == 64
