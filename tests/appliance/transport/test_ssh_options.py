"""The SSH client's options (appliance/transport/ssh.py): pinned host keys always, one key, and
the cipher order for the CPU (AES-GCM first with AES instructions, chacha20-poly1305 without)."""

from __future__ import annotations

from pathlib import Path

import asyncssh
import pytest

from appliance.settings import SshCluster
from appliance.transport import ssh
from appliance.transport.ssh import connect_options, encryption_algs, has_aes_instructions

X86 = "processor\t: 0\nflags\t\t: fpu vme sse2 aes avx2 pclmulqdq\n\nprocessor\t: 1\nflags\t\t: fpu aes\n"
ARM = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32\n"
NO_AES = "processor\t: 0\nflags\t\t: fpu vme sse2 avx2 aesx\n"


def cluster(tmp_path: Path) -> SshCluster:
    return SshCluster("hpc", "mux", "gate.example", 22, "sluicegate", tmp_path / "id_ed25519", tmp_path / "known_hosts")


@pytest.mark.parametrize(("cpuinfo", "aes"), [(X86, True), (ARM, True), (NO_AES, False), ("", False)])
def test_aes_instructions_are_read_from_cpuinfo(cpuinfo: str, aes: bool) -> None:
    assert has_aes_instructions(cpuinfo) is aes


def test_aes_gcm_first_with_aes_instructions_chacha_first_without() -> None:
    with_aes, without = encryption_algs(aes=True), encryption_algs(aes=False)
    assert with_aes[:3] == ["aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "chacha20-poly1305@openssh.com"]
    assert without[0] == "chacha20-poly1305@openssh.com"
    assert sorted(with_aes) == sorted(without)  # the same ciphers, in another order
    # asyncssh's own defaults (AEAD and CTR), none of the CBC or RC4 ones.
    defaults = {alg.decode() for alg in asyncssh.encryption.get_default_encryption_algs()}
    assert set(with_aes) == defaults
    assert not [alg for alg in with_aes if "cbc" in alg or "arcfour" in alg]


def test_connect_options_keep_host_keys_pinned_and_offer_the_ciphers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ssh, "has_aes_instructions", lambda: True)
    options = connect_options(cluster(tmp_path))
    assert options["known_hosts"] == str(tmp_path / "known_hosts")  # never None: that would disable verification
    assert options["client_keys"] == [str(tmp_path / "id_ed25519")]
    assert options["agent_path"] is None and options["config"] == [] and options["password_auth"] is False
    assert options["encryption_algs"] == encryption_algs(aes=True)
