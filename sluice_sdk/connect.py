"""The recipe: an official ``openai`` client whose prompts and answers are sealed to the gate.

No cryptographic knobs: the suite, nonces, dates and media types are fixed
below this layer.  What a caller chooses is where the appliance is, its API
key, and which gate key fingerprint(s) to trust::

    from sluice_sdk import sealed_openai_client

    client = sealed_openai_client("https://sluice.example.org/v1", api_key, fingerprint)
    reply = client.chat.completions.create(model="llama-3-70b", messages=[...])

``fingerprint`` comes from the gate's operator, out of band (never from the
appliance); during a key rotation pass both the old and the new one.
:func:`fetch_fingerprint` shows what the appliance serves now, for the
operator to publish and for users to compare.  See ``docs/sealed.md``.

``openai`` is imported only when a client is made, so the envelope code works
without it; ``httpx2`` stays in :mod:`sluice_sdk.transport`.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from types import ModuleType
from typing import TYPE_CHECKING

from . import transport as _transport
from .errors import KeyConfigError
from .transport import DEFAULT_PAD_TO

if TYPE_CHECKING:
    import openai

__all__ = ["sealed_openai_client", "sealed_async_openai_client", "fetch_fingerprint"]


def _openai() -> ModuleType:
    try:
        return importlib.import_module("openai")
    except ImportError:
        raise ImportError("the sealed openai clients need the openai package: pip install openai") from None


def _options(timeout: float | None, max_retries: int | None) -> dict[str, object]:
    options: dict[str, object] = {}
    if timeout is not None:
        options["timeout"] = timeout
    if max_retries is not None:
        options["max_retries"] = max_retries
    return options


def sealed_openai_client(
    base_url: str,
    api_key: str,
    fingerprint: str | Iterable[str],
    *,
    pad_to: int = DEFAULT_PAD_TO,
    timeout: float | None = None,
    max_retries: int | None = None,
) -> openai.OpenAI:
    """An ``openai.OpenAI`` for ``base_url`` whose chat, completions and embeddings are sealed.

    ``fingerprint``: the pinned gate key fingerprint, or several (rotation).
    ``pad_to``: padding bucket of the sealed request in bytes (0: none).
    ``timeout`` and ``max_retries``: as for ``openai.OpenAI`` (its defaults if None).
    """
    module = _openai()
    http_client = _transport.sealed_http_client(base_url, fingerprint, pad_to=pad_to)
    client: openai.OpenAI = module.OpenAI(
        base_url=base_url, api_key=api_key, http_client=http_client, **_options(timeout, max_retries)
    )
    return client


def sealed_async_openai_client(
    base_url: str,
    api_key: str,
    fingerprint: str | Iterable[str],
    *,
    pad_to: int = DEFAULT_PAD_TO,
    timeout: float | None = None,
    max_retries: int | None = None,
) -> openai.AsyncOpenAI:
    """The ``openai.AsyncOpenAI`` twin of :func:`sealed_openai_client`."""
    module = _openai()
    http_client = _transport.sealed_async_http_client(base_url, fingerprint, pad_to=pad_to)
    client: openai.AsyncOpenAI = module.AsyncOpenAI(
        base_url=base_url, api_key=api_key, http_client=http_client, **_options(timeout, max_retries)
    )
    return client


def fetch_fingerprint(base_url: str) -> str:
    """The fingerprint of the key the appliance serves now at ``{base_url}/sealed/keys``.

    This is what the appliance *says*: an operator publishes it after checking
    it against the gate (``sluice-cluster keys list``), and a user compares it
    with the published one; pinning it unchecked would trust the appliance.
    Raises :class:`~sluice_sdk.errors.KeyConfigError` if nothing usable is served.
    """
    configs = _transport.fetch_key_configs(base_url)
    for config in configs:
        if config.usable:
            return config.fingerprint()
    raise KeyConfigError(f"{base_url}/sealed/keys serves no key configuration this SDK can use")
