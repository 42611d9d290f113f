"""A real OpenSSH server on a loopback port, with the gate as the forced command.

What it sets up, as an HPC admin would on a login node:
- a functional account (``sluicegate``, login shell /bin/sh, no password);
- the cluster side installed for that account with nothing but the system
  Python and a venv (the code copied to a directory it can read);
- its authorized_keys line from :func:`cluster.authorized_key.authorized_key_line`
  (``restrict,command="..."``);
- sshd with its own host key and config (ListenAddress 127.0.0.1, no passwords,
  no forwarding, no tty), started and stopped by the tests.

The appliance side gets a client key and a known_hosts file pinning the host key.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cluster.authorized_key import authorized_key_line, default_gate_command

ROOT = Path(__file__).resolve().parents[2]
USER = "sluicegate"
SYSTEM_PYTHON = "/usr/bin/python3"
SSHD = "/usr/sbin/sshd"


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def ensure_user(user: str = USER) -> None:
    try:
        pwd.getpwnam(user)
    except KeyError:
        _run("useradd", "--create-home", "--shell", "/bin/sh", user)
    # useradd leaves the account locked ('!'); with UsePAM no, sshd then refuses even keys.
    _run("usermod", "-p", "*", user)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _keygen(path: Path) -> str:
    _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "sluice-test", "-f", str(path))
    return path.with_suffix(".pub").read_text().strip()


class Sshd:
    """sshd + the gate's account, in a fresh directory; :meth:`stop` removes everything."""

    def __init__(self, cluster_toml: str, extra_files: dict[str, str] | None = None, user: str = USER) -> None:
        """``user``: the gate's account (a test that changes the account's home uses its own)."""
        self.user = user
        if os.geteuid() != 0:
            raise RuntimeError("the sshd tests create a user and start sshd: run them as root (CI does)")
        for tool in (SSHD, SYSTEM_PYTHON, "/usr/bin/ssh-keygen"):
            if not Path(tool).exists():
                raise RuntimeError(f"{tool} is missing: scripts/test installs openssh-server and python3-venv")
        ensure_user(user)
        self.dir = Path(tempfile.mkdtemp(prefix="sluice-sshd-"))
        self.dir.chmod(0o755)
        self.port = _free_port()
        # The cluster side, installed for the functional account.
        install = self.dir / "gate"
        shutil.copytree(ROOT / "policy", install / "src" / "policy", ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copytree(ROOT / "cluster", install / "src" / "cluster", ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copytree(ROOT / "sluice_sdk", install / "src" / "sluice_sdk", ignore=shutil.ignore_patterns("__pycache__"))
        _run(SYSTEM_PYTHON, "-m", "venv", str(install / "venv"))
        # The cluster side's locked dependencies, hash-checked, as an operator would install them.
        _run(
            str(install / "venv" / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            "--require-hashes",
            "--no-deps",
            "-r",
            str(ROOT / "requirements" / "cluster.lock"),
        )
        site = next((install / "venv" / "lib").glob("python3*/site-packages"))
        (site / "sluice-src.pth").write_text(str(install / "src") + "\n")
        # As pip would: byte-compile now, since the account cannot write __pycache__ here.
        _run(SYSTEM_PYTHON, "-m", "compileall", "-q", str(install / "src"))
        self.gate_python = install / "venv" / "bin" / "python"
        self.config = self.dir / "cluster.toml"
        self.config.write_text(cluster_toml)
        for name, content in (extra_files or {}).items():
            (self.dir / name).write_text(content)
        # Keys: the host's, and the appliance's client key.
        host_pub = _keygen(self.dir / "host_key")
        self.client_key = self.dir / "client_key"
        client_pub = _keygen(self.client_key)
        self.known_hosts = self.dir / "known_hosts"
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {host_pub}\n")
        auth = self.dir / "authorized_keys"
        auth.mkdir()
        self.gate_command = default_gate_command(str(self.gate_python), self.config)
        (auth / user).write_text(authorized_key_line(client_pub, self.gate_command) + "\n")
        self.log = self.dir / "sshd.log"
        self.sshd_config = self.dir / "sshd_config"
        self.sshd_config.write_text(
            "\n".join(
                [
                    "ListenAddress 127.0.0.1",
                    f"Port {self.port}",
                    f"HostKey {self.dir / 'host_key'}",
                    f"PidFile {self.dir / 'sshd.pid'}",
                    f"AuthorizedKeysFile {auth}/%u",
                    "StrictModes no",
                    "PubkeyAuthentication yes",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "UsePAM no",
                    f"AllowUsers {user}",
                    "PermitRootLogin no",
                    "AllowTcpForwarding no",
                    "AllowStreamLocalForwarding no",
                    "AllowAgentForwarding no",
                    "X11Forwarding no",
                    "PermitTunnel no",
                    "PermitUserRC no",
                    "PermitTTY no",
                    "MaxSessions 32",
                    "MaxStartups 64:30:128",
                    "LogLevel VERBOSE",
                    "",
                ]
            )
        )
        os.makedirs("/run/sshd", exist_ok=True)
        _run(SSHD, "-t", "-f", str(self.sshd_config))
        self.start()

    def run_as_gate(self, *args: str) -> str:
        """Run ``sluice-cluster ARGS`` as the functional account (e.g. ``keys create``)."""
        done = subprocess.run(
            ["runuser", "-u", self.user, "--", str(self.gate_python), "-I", "-m", "cluster.cli", *args],
            capture_output=True,
            text=True,
            timeout=60,
            cwd="/",
        )
        if done.returncode != 0:
            raise RuntimeError(f"sluice-cluster {' '.join(args)} failed: {done.stderr}")
        return done.stdout

    def create_sealed_keys(self) -> None:
        """The gate's keys, made and owned by the functional account, in a directory only it can read."""
        keys = self.dir / "sealed-keys"
        keys.mkdir(mode=0o700, exist_ok=True)
        os.chown(keys, pwd.getpwnam(self.user).pw_uid, pwd.getpwnam(self.user).pw_gid)
        self.run_as_gate("keys", "create", "--config", str(self.config))

    def start(self) -> None:
        _run(SSHD, "-f", str(self.sshd_config), "-E", str(self.log))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("sshd did not start listening")

    def _listener_pid(self) -> int | None:
        try:
            return int((self.dir / "sshd.pid").read_text())
        except (OSError, ValueError):
            return None

    def gate_pids(self) -> list[int]:
        """Processes of the functional account (the gates sshd started)."""
        uid = pwd.getpwnam(self.user).pw_uid
        pids = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    if os.stat(f"/proc/{entry}").st_uid == uid:
                        pids.append(int(entry))
                except OSError:
                    continue
        return pids

    def kill_sessions(self) -> None:
        """End every SSH session (the gates and their sshd children), as a crash would."""
        subprocess.run(["pkill", "-KILL", "-u", self.user], check=False)

    def stop(self, remove: bool = True) -> None:
        pid = self._listener_pid()
        if pid is not None:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        self.kill_sessions()
        deadline = time.monotonic() + 5
        while pid is not None and time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
            time.sleep(0.05)
        if remove:
            shutil.rmtree(self.dir, ignore_errors=True)

    def restart(self) -> None:
        self.stop(remove=False)
        self.start()


def python() -> str:
    return sys.executable
