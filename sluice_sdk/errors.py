"""The errors of the sealing SDK.

Three kinds, each raised on purpose and nothing else leaking out of the
decoders (the fuzz tests hold every public decoder to that):

* :class:`SealError`: any failure to open, authenticate or accept a sealed
  message (unknown key id, wrong key, a flipped bit, a truncated or reordered
  chunk stream, a replay, a date outside the window, an oversized message).
  It is message-less on purpose, like cryptography's Fernet ``InvalidToken``:
  it never says which check failed, so that an attacker probing the gateway
  learns nothing from the error, and it is raised ``from None`` so that no
  chained exception says it either.
* :class:`KeyConfigError`: a key configuration (RFC 9458 Section 3) that is
  malformed, unsupported, does not match a pinned fingerprint, or a private key
  file that is unsafe to use.  Key configurations are public, so the message
  names what is wrong and how to fix it.
* :class:`BhttpError`: a Binary HTTP message (RFC 9292) that is invalid or over
  a limit.  The message is a short fixed reason, never the offending bytes.

The SDK may not import the rest of Sluice (``policy``), so these stand alone;
each carries the same ``code``/``status`` hints as ``policy.errors``.
"""

from __future__ import annotations

__all__ = ["SdkError", "SealError", "KeyConfigError", "BhttpError"]


class SdkError(Exception):
    """Base of every error the SDK raises on purpose."""

    code: str = "sealed_invalid"
    status: int = 400


class SealError(SdkError):
    """A sealed message could not be opened or accepted.  Deliberately message-less."""

    code = "sealed_invalid"
    status = 400

    def __init__(self) -> None:
        super().__init__()

    def __str__(self) -> str:
        return ""


class KeyConfigError(SdkError, ValueError):
    """A key configuration or key file is malformed, unsupported, changed or unsafe."""

    code = "key_config"
    status = 400


class BhttpError(SdkError, ValueError):
    """A Binary HTTP message is invalid or over a limit (fixed short reason, never the input)."""

    code = "bhttp_invalid"
    status = 400
