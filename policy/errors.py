"""The one error hierarchy of Sluice, shared by the gate and the appliance.

Every error carries a short, fixed ``code`` (never the offending input) and an
HTTP ``status`` hint.  Errors split, as in h11, into the peer's fault
(:class:`PeerError`) and our own or a backend's fault (:class:`LocalError`).

A :class:`Disallowed` is a protocol violation: the gate answers it with the
code alone and ends the session it happened in.

Every code a client can meet is listed, with its status and message, in
:mod:`policy.codes`; ``tests/security/test_error_codes.py`` holds the two
together.  :class:`InternalError` is the one branch whose instances carry a
message instead of a code: it is for logs and operators, and a client that
meets one sees only ``internal``.
"""

from __future__ import annotations

__all__ = [
    "SluiceError",
    "PeerError",
    "Disallowed",
    "BodyRejected",
    "LocalError",
    "ModelNotFound",
    "NoBackend",
    "BackendFailed",
    "BackendTimeout",
    "Overloaded",
    "TransportError",
    "SealedUnavailable",
    "RelayedError",
    "InternalError",
]


class SluiceError(Exception):
    """Base of every error Sluice raises on purpose."""

    code: str = "internal"
    status: int = 500

    def __init__(self, code: str | None = None, status: int | None = None) -> None:
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        super().__init__(self.code)

    def __str__(self) -> str:
        return self.code


class PeerError(SluiceError):
    """The other side sent something we do not accept."""

    code = "bad_request"
    status = 400


class Disallowed(PeerError):
    """Outside the grammar or the frame layout: rejected, session ended."""

    code = "disallowed"
    status = 400


class BodyRejected(PeerError):
    """A request body that is not strict JSON or breaks its route's policy.

    ``status`` is 400 for bodies that are not acceptable JSON, 422 for JSON
    that breaks the route's field policy and 413 for bodies over the limit.
    """

    code = "invalid_body"
    status = 422


class LocalError(SluiceError):
    """Our side, or a backend behind us, could not serve the request."""

    code = "internal"
    status = 500


class ModelNotFound(PeerError):
    code = "model_not_found"
    status = 404


class NoBackend(LocalError):
    """The model is configured but no instance is ready."""

    code = "no_backend"
    status = 503


class BackendFailed(LocalError):
    code = "backend_failed"
    status = 502


class BackendTimeout(LocalError):
    code = "backend_timeout"
    status = 504


class Overloaded(LocalError):
    code = "overloaded"
    status = 503


class TransportError(LocalError):
    """The way to the gate (pipe or SSH) broke or is not there."""

    code = "cluster_unavailable"
    status = 503


class SealedUnavailable(LocalError):
    """This gate holds no key ring for sealed requests (none set up, or none readable)."""

    code = "sealed_unavailable"
    status = 503


class RelayedError(SluiceError):
    """An error the gate sent, relayed by the appliance with the gate's code and status.

    Its code comes from the other side of the SSH channel: one this Sluice does
    not list (an older or newer gate) is answered with the generic message of
    its status class.
    """


class InternalError(LocalError):
    """Our side failed in a way only logs and operators see (a garbled file, a
    failed Slurm command, a policy that does not parse).

    Unlike every other :class:`SluiceError` it carries a message, not a code:
    the message names what failed and the fix, for the operator.  A client
    that meets one gets the code ``internal`` and nothing more.
    """

    code = "internal"
    status = 500

    def __init__(self, *args: object) -> None:
        # Not SluiceError.__init__: the arguments are a message, and a subclass
        # that is also an OSError keeps OSError's (errno, strerror) handling.
        super(SluiceError, self).__init__(*args)

    def __str__(self) -> str:
        return super(SluiceError, self).__str__()
