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
* ``sluice_sdk._hazmat``: the only module that touches cryptographic
  primitives.

May import: the standard library, ``cryptography`` and ``pyhpke`` (both only
in ``_hazmat``), and ``httpx`` only in the transport module that adapts the
SDK to the official ``openai`` client.  Never the rest of Sluice: the gate
imports this package, not the other way round, and the appliance must never
import the code that opens sealed requests.
"""

from __future__ import annotations

from .errors import BhttpError, KeyConfigError, SdkError, SealError

__all__ = ["SdkError", "SealError", "KeyConfigError", "BhttpError"]
