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

from starlette.types import Scope

from policy.errors import PeerError

__all__ = ["ApiGuard", "FORM_TYPES", "JSON_TYPES", "Refused", "SEALED_TYPES"]

JSON_TYPES: Final = frozenset({"application/json"})
# The form routes' media type (audio files).
FORM_TYPES: Final = frozenset({"multipart/form-data"})
# RFC 9458 and chunked-OHTTP request media types (the sealed routes).
SEALED_TYPES: Final = frozenset({"message/ohttp-req", "message/ohttp-chunked-req"})

_API: Final = "/v1/"
_SEALED: Final = "/v1/sealed/"


def media_type(content_type: str) -> str:
    """The media type of a ``Content-Type`` value, lower-case, without parameters."""
    return content_type.split(";", 1)[0].strip().lower()


class Refused(PeerError):
    """A ``POST /v1/...`` turned away before any route reads it."""

    status = 403


class ApiGuard:
    """The two checks, run by :class:`~.front.FrontMiddleware` before a request reaches its route."""

    __slots__ = ("public_origin", "form_paths")

    def __init__(self, public_url: str | None = None, form_paths: Iterable[str] = ()) -> None:
        """``form_paths``: the clear paths of the form routes (``/v1/audio/transcriptions``)."""
        self.public_origin = _origin(public_url) if public_url else None
        self.form_paths = frozenset(form_paths)

    def check(self, scope: Scope) -> None:
        """Raise :class:`Refused` unless this request may go on to its route."""
        path: str = scope["path"]
        if scope["method"] != "POST" or not path.startswith(_API):
            return
        # One pass over the head, the first of each name counting (as Starlette's Headers.get);
        # names arrive lower-case (h11, and the ASGI spec).
        content_type = origin = host = authorization = None
        for name, value in scope["headers"]:
            if name == b"content-type":
                content_type = content_type if content_type is not None else value
            elif name == b"origin":
                origin = origin if origin is not None else value
            elif name == b"host":
                host = host if host is not None else value
            elif name == b"authorization":
                authorization = value
        if origin is not None and not self._same_origin(origin.decode("latin-1"), (host or b"").decode("latin-1")):
            raise Refused("foreign_origin")
        form = path in self.form_paths
        allowed = SEALED_TYPES if path.startswith(_SEALED) else FORM_TYPES if form else JSON_TYPES
        if media_type((content_type or b"").decode("latin-1")) not in allowed:
            raise Refused("unsupported_media_type", 415)
        if form and authorization is None:
            raise Refused("form_needs_api_key")

    def _same_origin(self, origin: str, host: str) -> bool:
        if self.public_origin is not None:
            return _origin(origin) == self.public_origin
        parts = urlsplit(origin)
        return parts.scheme in ("http", "https") and bool(host) and parts.netloc.lower() == host.lower()


def _origin(url: str) -> str:
    parts = urlsplit(url.strip())
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}"
