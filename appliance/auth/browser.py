"""The web chat's calls to ``/v1``: the web session, never open to cross-site requests.

A browser sends cookies with requests that other sites make it send, so a
session cookie alone is no credential for the API.  The chat page gets the
session's CSRF token from the same-origin ``GET /account/session`` (a page on
another origin cannot read it) and sends it in the ``X-Sluice-CSRF`` header,
which a cross-site form cannot set and a cross-site ``fetch`` cannot set
without a CORS preflight that the appliance never grants.  For every request
that carries our session cookie:

* the CSRF header must equal the session's token (constant-time compare);
* an ``Origin`` must be the public URL (or ``null`` with ``Sec-Fetch-Site:
  same-origin``: what a no-referrer page sends), and ``Sec-Fetch-Site``
  (where the browser sends it) must say ``same-origin``;
* a body must be JSON or a sealed request (``message/ohttp-*``), never the
  form and ``text/plain`` types a cross-site form can send.

Anything else is refused (401) and logged.  A request with an
``Authorization`` header is the API client's business and goes to the inner
authenticator unchanged (Bearer keys work as before).  A request without our
cookie (trusted-header mode, say) is refused only when the browser says it
comes from another site, and otherwise goes to the inner authenticator.
"""

from __future__ import annotations

import hmac
from typing import Final

from starlette.requests import HTTPConnection

from .base import Authenticator, Principal
from .events import security_event
from .session_cookie import SessionCookieReader
from .sessions import SessionStore
from .users import UserDirectory

__all__ = ["CSRF_HEADER", "BrowserSessionAuthenticator", "same_origin"]

CSRF_HEADER: Final = "x-sluice-csrf"
# Body types the chat sends; the ones a cross-site form can send are not among them.
BODY_TYPES: Final = frozenset({"application/json", "message/ohttp-req", "message/ohttp-chunked-req"})
_SAFE_METHODS: Final = frozenset({"GET", "HEAD"})


def same_origin(connection: HTTPConnection, public_url: str, *, required: bool = False) -> bool:
    """Whether the browser's own headers place this request on ``public_url``'s origin.

    A page served with ``Referrer-Policy: no-referrer`` (ours are) makes the
    browser send ``Origin: null`` on its same-origin POSTs; ``Sec-Fetch-Site``
    then says where the request comes from.  Any other ``Origin`` must be ours.
    With ``required``, a request that says nothing either way is refused too.
    """
    origin = connection.headers.get("origin")
    site = connection.headers.get("sec-fetch-site")
    if origin is not None and origin not in (public_url.rstrip("/"), "null"):
        return False
    if site is not None and site not in ("same-origin", "none"):
        return False
    if origin == "null" and site != "same-origin":
        return False
    return not required or origin == public_url.rstrip("/") or site == "same-origin"


def _media_type(connection: HTTPConnection) -> str:
    return connection.headers.get("content-type", "").split(";")[0].strip().lower()


class BrowserSessionAuthenticator:
    """The session cookie plus the CSRF header, in front of ``inner``."""

    def __init__(
        self,
        inner: Authenticator,
        cookie: SessionCookieReader,
        sessions: SessionStore,
        users: UserDirectory | None,
        public_url: str,
    ) -> None:
        self._inner = inner
        self._cookie = cookie
        self._sessions = sessions
        self._users = users
        self._origin = public_url.rstrip("/")

    def _refuse(self, connection: HTTPConnection, reason: str) -> None:
        security_event(
            "api_csrf_rejected",
            reason=reason,
            path=connection.url.path,
            peer=connection.client.host if connection.client else None,
        )

    async def authenticate(self, connection: HTTPConnection) -> Principal | None:
        if "authorization" in connection.headers:
            return await self._inner.authenticate(connection)
        data = self._cookie.load(connection)
        if not same_origin(connection, self._origin):
            self._refuse(connection, "origin")
            return None
        if data is None or not isinstance(data.get("csrf"), str):
            return await self._inner.authenticate(connection)
        expected = str(data["csrf"])
        sent = connection.headers.get(CSRF_HEADER)
        if sent is None or not hmac.compare_digest(sent.encode(), expected.encode()):
            self._refuse(connection, "token")
            return None
        if connection.scope.get("method", "GET") not in _SAFE_METHODS and _media_type(connection) not in BODY_TYPES:
            self._refuse(connection, "content_type")
            return None
        session = await self._sessions.get(data.get("sid"))
        if session is None:
            return await self._inner.authenticate(connection)  # trusted-header mode keeps only the token here
        record = await self._users.get(session.user) if self._users is not None else None
        return Principal(session.user, groups=record.groups if record else frozenset())
