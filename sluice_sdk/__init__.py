"""Sluice's sealing SDK: end-to-end encrypted ("sealed") requests to the cluster.

Clients that must not trust the appliance seal each request to the gate's
public key and get the response sealed back; the appliance relays ciphertext.
The format is the standards', not ours: Binary HTTP (RFC 9292) inside
Oblivious HTTP (RFC 9458) with HPKE (RFC 9180), and chunked Oblivious HTTP
(draft-ietf-ohai-chunked-ohttp) for streamed responses.  The same envelope
code serves both sides: the client SDK seals, the gate opens with a
:class:`~sluice_sdk.keys.KeyRing`.

Modules:

* :mod:`sluice_sdk.bhttp`: Binary HTTP messages, strict and bounded.
* :mod:`sluice_sdk.keyconfig`: RFC 9458 key configurations, pinning.
* :mod:`sluice_sdk.ohttp`: request/response encapsulation, chunked variants.
* :mod:`sluice_sdk.keys`: the gateway's keys: generate, store, rotate, look up.
* :mod:`sluice_sdk.replay`: replay guard and date window for the gateway.
* :mod:`sluice_sdk.client`: the client recipe (date, encode, seal).
* :mod:`sluice_sdk.gateway`: the gate recipe (open, decode, date, replay, in that order).
* :mod:`sluice_sdk.errors`: ``SealError`` (message-less), ``KeyConfigError``, ``BhttpError``.
* :mod:`sluice_sdk.transport`: httpx2 transports that seal the ``openai`` client's requests.
* :mod:`sluice_sdk.connect`: the recipe: ``sealed_openai_client`` and friends, no knobs.
* :mod:`sluice_sdk.cli`: ``sluice-seal``, one sealed chat request from a shell.
* ``sluice_sdk._hazmat``: the only module that touches cryptographic
  primitives.

May import: the standard library, ``cryptography`` and ``pyhpke`` (both only
in ``_hazmat``), and ``httpx2`` only in the transport module that adapts the
SDK to the official ``openai`` client.  Never the rest of Sluice: the gate
imports this package, not the other way round, and the appliance must never
import the code that opens sealed requests.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import BhttpError, KeyConfigError, SdkError, SealError

if TYPE_CHECKING:
    from .connect import fetch_fingerprint, sealed_async_openai_client, sealed_openai_client
    from .transport import AsyncSealedTransport, SealedTransport, UnsealableRequestError

__all__ = [
    "SdkError",
    "SealError",
    "KeyConfigError",
    "BhttpError",
    "UnsealableRequestError",
    "SealedTransport",
    "AsyncSealedTransport",
    "sealed_openai_client",
    "sealed_async_openai_client",
    "fetch_fingerprint",
]

# These load httpx2; the gate imports this package for the envelope code alone
# (on a login node without httpx2), so they are imported on first use.
_FROM_CONNECT = frozenset({"sealed_openai_client", "sealed_async_openai_client", "fetch_fingerprint"})
_FROM_TRANSPORT = frozenset({"SealedTransport", "AsyncSealedTransport", "UnsealableRequestError"})


def __getattr__(name: str) -> Any:
    if name in _FROM_CONNECT:
        from . import connect

        return getattr(connect, name)
    if name in _FROM_TRANSPORT:
        from . import transport

        return getattr(transport, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
