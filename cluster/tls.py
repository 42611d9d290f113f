"""Mutual TLS between the gate and the model servers, with no CA key anywhere.

vLLM checks its API key only under ``/v1``; ``/tokenize``, ``/metrics``,
``/health`` and whatever a newer version adds are open to anyone who reaches
the job's port.  So every job serves TLS and accepts only clients whose
certificate is in its client-certificate file, on every path:

- **The gate** has one client key and a self-signed certificate, made once by
  ``sluice-cluster tls init`` in ``gate.tls_dir`` (``client.key`` 0600,
  ``client.crt`` 0644: the jobs' side reads the certificate, never the key).
- **Each job** gets its own server key and self-signed certificate, made by
  the scheduler at submission in the job's private directory
  (:func:`make_job_identity`), and a client-certificate file holding the
  gate's certificate and the job's own (the scheduler probes ``/health`` with
  the job's own key, so it never needs the gate's).  The SHA-256 of the job's
  certificate (its *pin*) goes into the routing table.
- **The gate's HTTP client** presents its certificate and accepts the server
  only if the certificate it shows hashes to the pin
  (:func:`check_pin`, before a byte of the request is sent).  The server
  proved in the handshake that it holds the key of that certificate, so the
  pin is as strong as a CA that signed this one certificate, without a CA key
  that could sign others.

vLLM's flags for this are ``--ssl-keyfile --ssl-certfile --ssl-ca-certs
--ssl-cert-reqs 2``; the stand-in model server takes the same ones.  The per-job
bearer token stays as a second, independent check (a leaked client key alone
is not enough to use a job's ``/v1``).

Keys are ECDSA P-256 (what every TLS stack of the last decade speaks), the
protocol TLS 1.3 or newer (both ends are ours).  ``cryptography`` is imported
only by the functions that make keys; the gate's import of this module costs
the stdlib ``ssl`` alone.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import hmac
import logging
import os
import re
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from policy.errors import InternalError
from policy.events import event_line

__all__ = [
    "TlsError",
    "GateIdentity",
    "JobIdentity",
    "CLIENT_CERT",
    "CLIENT_KEY",
    "gate_identity",
    "init_gate_identity",
    "client_context",
    "GateContext",
    "remove_job_identity",
    "server_context",
    "make_job_identity",
    "job_identity",
    "pin_of",
    "check_pin",
    "valid_pin",
]

# File names in ``gate.tls_dir`` and in a job's directory.
CLIENT_KEY: Final = "client.key"
CLIENT_CERT: Final = "client.crt"
SERVER_KEY: Final = "server.key"
SERVER_CERT: Final = "server.crt"
CLIENTS: Final = "clients.pem"

# Self-signed certificates: the gate's lives as long as its key (rotate it by
# removing the directory and running ``tls init`` again); a job's longer than
# any Slurm time limit (30 days, see config.MAX_DURATION) with room for clocks.
GATE_CERT_DAYS: Final = 3650
JOB_CERT_DAYS: Final = 60

# Certificates are issued a little in the past: a compute node whose clock is
# a few minutes behind the login node still accepts them.
CLOCK_SKEW: Final = datetime.timedelta(hours=1)

_PIN: Final = re.compile(r"[0-9a-f]{64}")

log = logging.getLogger("sluice.gate")


class TlsError(InternalError):
    """A TLS identity is missing, unsafe or unreadable; the message says which and the fix."""


@dataclass(frozen=True, slots=True)
class GateIdentity:
    """The gate's client key and certificate files."""

    key: Path
    cert: Path


@dataclass(frozen=True, slots=True)
class JobIdentity:
    """One job's TLS files (the template's ``{tls_keyfile}``, ``{tls_certfile}``, ``{tls_ca}``) and pin."""

    directory: Path
    key: Path
    cert: Path
    clients: Path
    pin: str


def pin_of(cert_der: bytes) -> str:
    """The pin of a certificate: SHA-256 of its DER encoding, lowercase hex."""
    return hashlib.sha256(cert_der).hexdigest()


def valid_pin(value: object) -> bool:
    return isinstance(value, str) and _PIN.fullmatch(value) is not None


def check_pin(ssl_object: ssl.SSLObject | ssl.SSLSocket | None, pin: str) -> bool:
    """Whether the peer of a finished handshake showed the certificate with ``pin``."""
    if ssl_object is None or not valid_pin(pin):
        return False
    der = ssl_object.getpeercert(binary_form=True)
    return der is not None and hmac.compare_digest(pin_of(der), pin)


# ---------------------------------------------------------------- contexts (stdlib)


def gate_identity(tls_dir: Path) -> GateIdentity:
    """The gate's identity in ``tls_dir``; :class:`TlsError` if missing or unsafe.

    The key must belong to the account that runs this process and be readable
    by it alone (as OpenSSH demands of its keys): a key that another account
    could have written or read is not the gate's.
    """
    identity = GateIdentity(tls_dir / CLIENT_KEY, tls_dir / CLIENT_CERT)
    try:
        info = identity.key.stat()
        identity.cert.stat()
    except FileNotFoundError:
        raise TlsError(
            f"no TLS identity in {tls_dir}: run 'sluice-cluster tls init --config ...' as the gate's account"
        ) from None
    except OSError as exc:
        raise TlsError(f"cannot read the TLS identity in {tls_dir}: {exc.strerror}") from None
    if info.st_uid != os.geteuid():
        raise TlsError(f"{identity.key} belongs to another account: the gate's key must be its own")
    if info.st_mode & 0o077:
        raise TlsError(f"{identity.key} is readable or writable by others: chmod 600 it")
    return identity


def client_context(identity: GateIdentity | JobIdentity) -> ssl.SSLContext:
    """A client context that shows ``identity``'s certificate and checks the server by pin.

    The chain is not verified by OpenSSL (there is no CA): every connection
    made with this context must pass :func:`check_pin` before it is used.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.check_hostname = False  # a job's host is known only once it runs; the pin names it
    context.verify_mode = ssl.CERT_NONE  # verified by pin, see check_pin
    try:
        context.load_cert_chain(identity.cert, identity.key)
    except (OSError, ssl.SSLError) as exc:
        raise TlsError(f"cannot load the TLS key {identity.key}: {exc}") from None
    return context


def server_context(certfile: str, keyfile: str, ca_certs: str | None, cert_reqs: int = 2) -> ssl.SSLContext:
    """A server context as vLLM builds one from ``--ssl-certfile --ssl-keyfile --ssl-ca-certs
    --ssl-cert-reqs``.  With ``cert_reqs`` 2 (required) a client whose certificate is not in
    ``ca_certs`` fails the handshake and gets no byte of HTTP, on any path.

    OSError or ssl.SSLError when a file cannot be loaded.
    """
    if cert_reqs not in (0, 1, 2) or (cert_reqs and not ca_certs):
        raise ValueError("cert_reqs is 0, 1 or 2, and 1 or 2 need ca_certs")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2  # what uvicorn (vLLM) accepts too
    context.load_cert_chain(certfile, keyfile)
    if ca_certs:
        context.load_verify_locations(cafile=ca_certs)
    context.verify_mode = (ssl.CERT_NONE, ssl.CERT_OPTIONAL, ssl.CERT_REQUIRED)[cert_reqs]
    return context


class GateContext:
    """The gate's client context, loaded when first needed and cached.

    Until it loads (``tls init`` has not run yet, or the key is unsafe: logged
    once) a TLS backend fails with ``backend_failed``; plain-HTTP backends
    work.  A failed load is tried again at most every :data:`RETRY` seconds,
    so a long mux session picks up an identity made after it started.
    """

    RETRY: Final = 5.0

    def __init__(self, tls_dir: Path, clock: Callable[[], float] = time.monotonic) -> None:
        self._dir = tls_dir
        self._clock = clock
        self._context: ssl.SSLContext | None = None
        self._next_try = float("-inf")
        self._logged = False

    def __call__(self) -> ssl.SSLContext | None:
        if self._context is None and self._clock() >= self._next_try:
            try:
                self._context = client_context(gate_identity(self._dir))
            except TlsError as exc:
                self._next_try = self._clock() + self.RETRY
                if not self._logged:
                    log.error(event_line("tls_identity_unusable", error=str(exc)))
                    self._logged = True
        return self._context


# ---------------------------------------------------------------- key making (cryptography)


def _self_signed(common_name: str, days: int, server: bool) -> tuple[bytes, bytes, str]:
    """(key PEM, certificate PEM, pin) of a new P-256 key and its self-signed certificate."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    if server:
        usages.insert(0, ExtendedKeyUsageOID.SERVER_AUTH)  # and client: the scheduler probes with it
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )  # fmt: skip
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    der = cert.public_bytes(serialization.Encoding.DER)
    return key_pem, cert.public_bytes(serialization.Encoding.PEM), pin_of(der)


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` with ``mode`` (never widened by the umask, never over an existing file)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, mode)
    try:
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def init_gate_identity(tls_dir: Path) -> tuple[GateIdentity, bool]:
    """Make the gate's key and certificate in ``tls_dir`` unless they exist; (identity, made)."""
    tls_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
    identity = GateIdentity(tls_dir / CLIENT_KEY, tls_dir / CLIENT_CERT)
    if identity.key.exists() or identity.cert.exists():
        return gate_identity(tls_dir), False
    key_pem, cert_pem, _ = _self_signed("sluice-gate", GATE_CERT_DAYS, server=False)
    _write_new(identity.key, key_pem, 0o600)
    _write_new(identity.cert, cert_pem, 0o644)
    return identity, True


def make_job_identity(directory: Path, gate_cert: Path, common_name: str) -> JobIdentity:
    """A new job's key, certificate and client-certificate file in ``directory`` (made 0700).

    ``clients.pem`` lists the gate's certificate and the job's own: the job
    accepts the gate, and the scheduler probing with the job's own key.
    """
    try:
        gate_pem = gate_cert.read_bytes()
    except OSError as exc:
        raise TlsError(f"cannot read the gate's certificate {gate_cert}: {exc.strerror}; run 'sluice-cluster tls init'") from None
    if b"-----BEGIN CERTIFICATE-----" not in gate_pem:
        raise TlsError(f"{gate_cert} is not a PEM certificate")
    directory.mkdir(mode=0o700)
    try:
        key_pem, cert_pem, pin = _self_signed(common_name, JOB_CERT_DAYS, server=True)
        identity = JobIdentity(directory, directory / SERVER_KEY, directory / SERVER_CERT, directory / CLIENTS, pin)
        _write_new(identity.key, key_pem, 0o600)
        _write_new(identity.cert, cert_pem, 0o600)
        _write_new(identity.clients, gate_pem.rstrip(b"\n") + b"\n" + cert_pem, 0o600)
    except BaseException:
        remove_job_identity(directory)
        raise
    return identity


def job_identity(directory: Path, pin: str) -> JobIdentity:
    """The identity :func:`make_job_identity` made in ``directory`` (for the scheduler's probes)."""
    if not directory.is_absolute() or not directory.is_dir():
        raise TlsError(f"the job's TLS directory {directory} is gone")
    return JobIdentity(directory, directory / SERVER_KEY, directory / SERVER_CERT, directory / CLIENTS, pin)


def remove_job_identity(directory: Path) -> None:
    """Delete a job's TLS files and directory (the job ended); missing is fine."""
    for name in (SERVER_KEY, SERVER_CERT, CLIENTS):
        with contextlib.suppress(FileNotFoundError):
            (directory / name).unlink()
    with contextlib.suppress(FileNotFoundError, OSError):
        directory.rmdir()
