"""What a ``POST /v1/...`` must look like before any handler reads it: JSON (or sealed) and same-origin.

A browser sends a cross-site "simple" request (``text/plain``, a form) with
its cookies and, behind a proxy that authenticates browsers, with their
identity.  Two checks close that door on every ``/v1`` POST:

* ``Content-Type`` must be ``application/json`` (``/v1/sealed/...``: the
  sealed media types), else 415 ``unsupported_media_type``.  A cross-site
  request with that type needs a CORS preflight, which Sluice never grants.
  The form routes (audio: ``body = "multipart"`` in ``policy/routes.toml``)
  take ``multipart/form-data`` instead, which an HTML form can send across
  sites without a preflight: there the request must also carry an
  ``Authorization`` header (an API key), which no cross-site form can set,
  else 403 ``form_needs_api_key``: a browser's cookies or a proxy's identity
  never authorize a form.
* An ``Origin`` header, when present, must be this appliance: the configured
  public URL, or (none configured) the scheme-less host the request was sent
  to.  Anything else is 403 ``foreign_origin``.  API clients send no Origin;
  the web chat sends its own.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from ..api.errors import error_body

__all__ = ["ApiGuardMiddleware", "FORM_TYPES", "JSON_TYPES", "SEALED_TYPES"]

JSON_TYPES: Final = frozenset({"application/json"})
# The form routes' media type (audio files).
FORM_TYPES: Final = frozenset({"multipart/form-data"})
# RFC 9458 and chunked-OHTTP request media types (the sealed routes).
SEALED_TYPES: Final = frozenset({"message/ohttp-req", "message/ohttp-chunked-req"})

_API: Final = "/v1/"
_SEALED: Final = "/v1/sealed/"


def media_type(headers: Headers) -> str:
    """The media type of ``Content-Type``, lower-case, without parameters."""
    return headers.get("content-type", "").split(";", 1)[0].strip().lower()


class ApiGuardMiddleware:
    def __init__(self, app: ASGIApp, public_url: str | None = None, form_paths: Iterable[str] = ()) -> None:
        """``form_paths``: the clear paths of the form routes (``/v1/audio/transcriptions``)."""
        self.app = app
        self.public_origin = _origin(public_url) if public_url else None
        self.form_paths = frozenset(form_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"].startswith(_API):
            headers = Headers(scope=scope)
            origin = headers.get("origin")
            if origin is not None and not self._same_origin(origin, headers.get("host", "")):
                await _refuse(send, 403, "foreign_origin")
                return
            form = scope["path"] in self.form_paths
            allowed = SEALED_TYPES if scope["path"].startswith(_SEALED) else FORM_TYPES if form else JSON_TYPES
            if media_type(headers) not in allowed:
                await _refuse(send, 415, "unsupported_media_type")
                return
            if form and "authorization" not in headers:
                await _refuse(send, 403, "form_needs_api_key")
                return
        await self.app(scope, receive, send)

    def _same_origin(self, origin: str, host: str) -> bool:
        if self.public_origin is not None:
            return _origin(origin) == self.public_origin
        parts = urlsplit(origin)
        return parts.scheme in ("http", "https") and bool(host) and parts.netloc.lower() == host.lower()


def _origin(url: str) -> str:
    parts = urlsplit(url.strip())
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}"


async def _refuse(send: Send, status: int, code: str) -> None:
    body = error_body(status, code)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
