"""The web chat: static files served at ``/`` and ``/chat/...``, with a published manifest.

The files in ``appliance/web/chat/`` are read once, at start; they are the
allowlist (any other name is a 404, and nothing from the request reaches a
file path).  Each answer carries its SHA-256 as a strong ETag and the same
strict headers: a Content-Security-Policy that allows scripts, styles and
connections to this origin only (no inline script or style, no eval), no
framing, no MIME sniffing, no referrer.  ``/chat/manifest.json`` lists every
file's SHA-256, so that a user or an institution can check that the page they
were served is the published one (threat_model/: the page's code comes from
the appliance).

The page holds no content on the server: conversations live in the browser.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final
from urllib.parse import urlsplit

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from policy.bodies import DEFAULT_ROUTES_PATH

from .api.errors import error_response

if TYPE_CHECKING:
    from .app import Appliance

__all__ = ["CHAT_DIR", "ChatPage", "ChatFile", "MANIFEST_VERSION", "chat_limits", "content_security_policy", "load_chat_files"]

CHAT_DIR: Final = Path(__file__).resolve().parent / "web" / "chat"
MANIFEST_VERSION: Final = 1

# Only these kinds of file are served; anything else in the folder is a packaging mistake.
_TYPES: Final = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".json": "application/json",
    ".txt": "text/plain; charset=utf-8",
}
# The page is small; a file over this is not one of ours.
MAX_FILE_BYTES: Final = 512 * 1024
# Browsers revalidate with the ETag every time: a new appliance version is seen at once.
_CACHE: Final = "no-cache"


@dataclass(frozen=True, slots=True)
class ChatFile:
    name: str
    body: bytes
    media_type: str
    sha256: str


def load_chat_files(directory: Path = CHAT_DIR) -> dict[str, ChatFile]:
    """Every file of the chat, by name; raises ValueError for a file that does not belong."""
    files: dict[str, ChatFile] = {}
    for path in sorted(directory.iterdir()):
        if path.name.startswith(".") or path.is_dir():
            continue
        media = _TYPES.get(path.suffix)
        if media is None:
            raise ValueError(f"{path}: not a kind of file the chat serves")
        body = path.read_bytes()
        if len(body) > MAX_FILE_BYTES:
            raise ValueError(f"{path}: larger than {MAX_FILE_BYTES} bytes")
        files[path.name] = ChatFile(path.name, body, media, hashlib.sha256(body).hexdigest())
    if "index.html" not in files:
        raise ValueError(f"{directory}: no index.html")
    return files


def content_security_policy(form_origins: Iterable[str] = ()) -> str:
    """The chat's CSP.  ``form_origins``: where the sign-out form may lead (the OIDC issuer)."""
    targets = ["'self'", *sorted({_origin(url) for url in form_origins if url})]
    return (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
        "connect-src 'self'; font-src 'self'; manifest-src 'self'; base-uri 'none'; "
        f"form-action {' '.join(targets)}; frame-ancestors 'none'"
    )


def _origin(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.netloc:
        raise ValueError(f"{url!r} is not an http(s) URL")
    return f"{parts.scheme}://{parts.netloc}"


def chat_limits(max_body_bytes: int, routes_file: Path = DEFAULT_ROUTES_PATH) -> dict[str, int]:
    """The route policy's limits the page checks attachments against, before it sends anything."""
    with open(routes_file, "rb") as handle:
        policy = tomllib.load(handle)
    url = policy.get("types", {}).get("image_url", {}).get("fields", {}).get("url", {})
    return {"max_body_bytes": max_body_bytes, "max_image_url_chars": int(url.get("max_length", 0))}


class ChatPage:
    """An appliance extension: the chat's routes."""

    def __init__(self, form_origins: Iterable[str] = (), directory: Path = CHAT_DIR) -> None:
        self._files = load_chat_files(directory)
        self._headers = {
            "Content-Security-Policy": content_security_policy(form_origins),
            "X-Content-Type-Options": "nosniff",
            "X-Frame-Options": "DENY",
            "Referrer-Policy": "no-referrer",
            "Cross-Origin-Opener-Policy": "same-origin",
            "Cross-Origin-Resource-Policy": "same-origin",
            "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=()",
        }
        manifest = {
            "version": MANIFEST_VERSION,
            "files": {f"/chat/{name}": f.sha256 for name, f in self._files.items()},
        }
        body = json.dumps(manifest, indent=2, sort_keys=True).encode() + b"\n"
        self._manifest = ChatFile("manifest.json", body, "application/json", hashlib.sha256(body).hexdigest())

    @property
    def files(self) -> dict[str, ChatFile]:
        return dict(self._files)

    def routes(self, appliance: Appliance) -> list[BaseRoute]:
        limits = chat_limits(appliance.routes.get("chat").max_body_bytes)
        config = orjson.dumps(limits)

        async def chat_config(_: Request) -> Response:
            return Response(config, media_type="application/json", headers={**self._headers, "Cache-Control": "no-store"})

        return [
            Route("/", self.index, methods=["GET", "HEAD"]),
            Route("/chat/config.json", chat_config, methods=["GET"]),
            Route("/chat/manifest.json", self.manifest, methods=["GET", "HEAD"]),
            Route("/chat/{name}", self.asset, methods=["GET", "HEAD"]),
        ]

    async def aclose(self) -> None:
        return None

    def _serve(self, request: Request, item: ChatFile) -> Response:
        etag = f'"{item.sha256}"'
        headers = {**self._headers, "ETag": etag, "Cache-Control": _CACHE}
        if etag in [t.strip() for t in request.headers.get("if-none-match", "").split(",")]:
            return Response(status_code=304, headers=headers)
        return Response(item.body, media_type=item.media_type, headers=headers)

    async def index(self, request: Request) -> Response:
        return self._serve(request, self._files["index.html"])

    async def manifest(self, request: Request) -> Response:
        return self._serve(request, self._manifest)

    async def asset(self, request: Request) -> Response:
        item = self._files.get(request.path_params["name"])
        if item is None:
            return error_response(404, "not_found")
        return self._serve(request, item)
