"""The web session cookie: signed (HMAC-SHA256, itsdangerous), expiring, HttpOnly, Secure, SameSite.

One ASGI middleware, mounted only on the account pages.  The API reads the
cookie only for the web chat's calls, and only with the CSRF header beside it
(:mod:`.browser`).  The cookie holds a small JSON object:
the pending sign-in (state, nonce, PKCE verifier) or, once signed in, the
random session id (its row on the server is the real session) and the CSRF
token of the forms.  The signature's timestamp bounds the cookie's age
(``max_age``); a cookie that is too old, too large, or not ours is ignored.

With ``secure`` (the default) the cookie is named ``__Host-sluice-session``:
browsers then insist on Secure, Path=/ and no Domain, so a sibling host
cannot plant one.  ``secure = False`` exists only for local http testing.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Final

import itsdangerous
from starlette.datastructures import MutableHeaders
from starlette.middleware.sessions import Session
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .secret import Secret

__all__ = ["SessionCookieMiddleware", "SessionCookieReader", "cookie_name"]

# Browsers keep cookies up to 4096 bytes; a larger one is not ours.
MAX_COOKIE_CHARS: Final = 4096
_SALT: Final = "sluice.web-session"


def cookie_name(secure: bool) -> str:
    return "__Host-sluice-session" if secure else "sluice-session"


class SessionCookieReader:
    """Reads (and signs) the session cookie; also used by the API for the web chat's calls."""

    def __init__(self, secret: Secret, *, secure: bool, max_age: int) -> None:
        self._signer = itsdangerous.TimestampSigner(
            secret.reveal(), salt=_SALT, key_derivation="hmac", digest_method=hashlib.sha256
        )
        self.name = cookie_name(secure)
        self.max_age = max_age

    def load(self, connection: HTTPConnection) -> dict[str, object] | None:
        """The cookie's data if it is ours, fresh and well formed; None otherwise."""
        raw = connection.cookies.get(self.name)
        if raw is None or len(raw) > MAX_COOKIE_CHARS:
            return None
        try:
            data = json.loads(base64.urlsafe_b64decode(self._signer.unsign(raw, max_age=self.max_age)))
        except (itsdangerous.BadSignature, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def sign(self, data: dict[str, object]) -> str:
        payload = base64.urlsafe_b64encode(json.dumps(data, separators=(",", ":")).encode())
        return self._signer.sign(payload).decode("ascii")


class SessionCookieMiddleware:
    def __init__(self, app: ASGIApp, secret: Secret, *, secure: bool, samesite: str, max_age: int) -> None:
        self.app = app
        self._reader = SessionCookieReader(secret, secure=secure, max_age=max_age)
        self._name = self._reader.name
        self._max_age = max_age
        self._flags = f"Path=/; HttpOnly; SameSite={samesite.capitalize()}" + ("; Secure" if secure else "")

    def _load(self, connection: HTTPConnection) -> dict[str, object] | None:
        return self._reader.load(connection)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        loaded = self._load(HTTPConnection(scope))
        scope["session"] = Session(loaded or {})

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                session: Session = scope["session"]
                headers = MutableHeaders(scope=message)
                if session.modified and session:
                    value = self._reader.sign(dict(session))
                    headers.append("Set-Cookie", f"{self._name}={value}; Max-Age={self._max_age}; {self._flags}")
                elif session.modified and loaded is not None:
                    headers.append("Set-Cookie", f"{self._name}=; Max-Age=0; {self._flags}")
            await send(message)

        await self.app(scope, receive, send_wrapper)
