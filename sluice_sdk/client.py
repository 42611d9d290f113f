"""The client's recipe for one sealed request: date it, encode it, seal it to a pinned key.

The transport (httpx2, for the official ``openai`` client) builds on these
two functions; they do no I/O.  The gateway refuses requests without a
``date`` within its window (see :mod:`sluice_sdk.replay`), so one is added
here when the request has none.  ``config`` must be a pinned configuration
from :func:`~sluice_sdk.keyconfig.select_key_config`.
"""

from __future__ import annotations

import dataclasses

from .bhttp import Request, encode_request
from .keyconfig import KeyConfig
from .ohttp import ChunkedResponseOpener, ResponseOpener, encapsulate_chunked_request, encapsulate_request
from .replay import http_date

__all__ = ["with_date", "seal_request", "seal_streaming_request"]


def with_date(request: Request, now: float | None = None) -> Request:
    """``request`` with a ``date`` header (IMF-fixdate of ``now``) unless it has one."""
    if request.header_values(b"date"):
        return request
    return dataclasses.replace(request, headers=(*request.headers, (b"date", http_date(now))))


def seal_request(config: KeyConfig, request: Request) -> tuple[bytes, ResponseOpener]:
    """``(message/ohttp-req body, opener of the message/ohttp-res answer)``."""
    return encapsulate_request(config, encode_request(with_date(request)))


def seal_streaming_request(config: KeyConfig, request: Request) -> tuple[bytes, ChunkedResponseOpener]:
    """``(message/ohttp-chunked-req body, opener of the streamed message/ohttp-chunked-res)``."""
    return encapsulate_chunked_request(config, encode_request(with_date(request)))
