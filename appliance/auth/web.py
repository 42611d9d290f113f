"""The account pages: sign in (OIDC), sign out, and self-service API keys.

Mounted at ``/account`` with :class:`.session_cookie.SessionCookieMiddleware`.
Plain HTML forms, no scripts.  Every state-changing request is a POST that
carries the session's CSRF token (and, where the browser sends one, an
``Origin`` equal to the public URL); the cookie is SameSite as well.  Pages
are never cached (a new key is on one), never framed, and allow no scripts.
"""

from __future__ import annotations

import hmac
import html
import logging
import secrets
import string
import time
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, Final
from urllib.parse import parse_qsl, urlsplit

from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from policy.events import event_line

from ..audit import audit_event
from .base import AccessPolicy, Principal
from .browser import same_origin
from .events import security_event
from .identity import Identity
from .keystore import KeyRequestError, KeyStore
from .oidc import LoginFailed, OidcClient, PendingLogin
from .provider import ProviderError
from .secret import Secret
from .session_cookie import SessionCookieMiddleware
from .sessions import SessionStore
from .trusted_header import HeaderSpoofed, TrustedHeaderAuthenticator
from .users import UserDirectory

__all__ = ["AccountPages"]

log = logging.getLogger("sluice.auth")

_TEMPLATES: Final = Path(__file__).resolve().parent.parent / "web"
# Account forms are a few hundred bytes; a model list of 64 names a few KiB.
MAX_FORM_BYTES: Final = 16 * 1024
MAX_FORM_FIELDS: Final = 200
DEFAULT_KEY_DAYS: Final = 90


class _Markup(str):
    """HTML we built ourselves; everything else is escaped when a page is rendered."""


@lru_cache(maxsize=8)
def _template(name: str) -> string.Template:
    return string.Template((_TEMPLATES / name).read_text(encoding="utf-8"))


def _render(template: str, **values: object) -> str:
    escaped = {k: v if isinstance(v, _Markup) else html.escape(str(v)) for k, v in values.items()}
    return _template(template).substitute(escaped)


def _date(timestamp: float | None) -> str:
    if timestamp is None:
        return "never"
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _list(items: Iterable[str], element_id: str, empty: str) -> _Markup:
    items = list(items)
    if not items:
        return _Markup(f'<p id="{element_id}">{html.escape(empty)}</p>')
    return _Markup(f'<ul id="{element_id}">' + "".join(f"<li>{html.escape(i)}</li>" for i in items) + "</ul>")


class AccountPages:
    def __init__(
        self,
        *,
        public_url: str,
        session_secret: Secret,
        cookie_secure: bool,
        cookie_samesite: str,
        sessions: SessionStore,
        users: UserDirectory,
        keys: KeyStore,
        access: AccessPolicy,
        models: Callable[[Principal], Awaitable[list[str] | None]],
        key_max_days: int,
        oidc: OidcClient | None = None,
        header: TrustedHeaderAuthenticator | None = None,
        header_logout_url: str | None = None,
        demo_user: Identity | None = None,
    ) -> None:
        self.public_url = public_url
        self._secret = session_secret
        self._secure = cookie_secure
        self._samesite = cookie_samesite
        self._sessions = sessions
        self._users = users
        self._keys = keys
        self._access = access
        self._models = models
        self._key_max_days = key_max_days
        self._oidc = oidc
        self._header = header
        self._header_logout_url = header_logout_url
        self._demo_user = demo_user  # `sluice demo` on a loopback address only (appliance/demo_identity.py)
        origins = {"'self'"}
        for url in (oidc.settings.issuer if oidc else None, header_logout_url):
            if url and not url.startswith("/"):
                parts = urlsplit(url)
                origins.add(f"{parts.scheme}://{parts.netloc}")
        self._headers = {
            "Cache-Control": "no-store",
            "Content-Security-Policy": "default-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
            f"form-action {' '.join(sorted(origins))}",
            "X-Content-Type-Options": "nosniff",
            "X-Frame-Options": "DENY",
            "Referrer-Policy": "no-referrer",
        }

    def routes(self) -> list[BaseRoute]:
        routes = [
            Route("/", self.account, methods=["GET"]),
            Route("/login", self.login, methods=["GET"]),
            Route("/callback", self.callback, methods=["GET"]),
            Route("/logout", self.logout, methods=["POST"]),
            Route("/signed-out", self.signed_out, methods=["GET"]),
            Route("/keys", self.create_key, methods=["POST"]),
            Route("/keys/{key_id}/revoke", self.revoke_key, methods=["POST"]),
            Route("/session", self.session_info, methods=["GET"]),
        ]
        if self._demo_user is not None:
            routes.append(Route("/demo-sign-in", self.demo_sign_in, methods=["POST"]))
        middleware = Middleware(
            SessionCookieMiddleware,
            secret=self._secret,
            secure=self._secure,
            samesite=self._samesite,
            max_age=int(self._sessions.lifetime),
        )
        return [Mount("/account", routes=routes, middleware=[middleware])]

    # -- responses --------------------------------------------------------------------

    def _page(self, body: str, status: int = 200) -> Response:
        return HTMLResponse(body, status_code=status, headers=self._headers)

    def _message(
        self, status: int, title: str, message: str, link: str = "/account/", link_text: str = "Your account"
    ) -> Response:
        return self._page(_render("message.html", title=title, message=message, link=link, link_text=link_text), status)

    def _redirect(self, url: str, status: int = 303) -> Response:
        return RedirectResponse(url, status_code=status, headers=self._headers)

    # -- who is this ------------------------------------------------------------------

    async def _principal(self, request: Request) -> Principal | None:
        """The signed-in user (trusted proxy header, else web session); raises HeaderSpoofed."""
        if self._header is not None:
            principal = await self._header.principal(request)
            if principal is not None:
                return principal
        session = await self._sessions.get(request.session.get("sid"))
        if session is None:
            return None
        record = await self._users.get(session.user)
        return Principal(session.user, groups=record.groups if record else frozenset())

    def _csrf(self, request: Request) -> str:
        token = request.session.get("csrf")
        if not isinstance(token, str):
            token = secrets.token_urlsafe(32)
            request.session["csrf"] = token
        return token

    async def _form(self, request: Request) -> list[tuple[str, str]] | None:
        """The urlencoded form of a POST whose CSRF token and origin check out; None otherwise."""
        if not same_origin(request, self.public_url):
            security_event("csrf_rejected", reason="origin", path=request.url.path)
            return None
        if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            return None
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_FORM_BYTES:
                return None
        try:
            fields = parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=MAX_FORM_FIELDS)
        except ValueError:
            return None
        sent = [v for k, v in fields if k == "csrf"]
        expected = request.session.get("csrf")
        if len(sent) != 1 or not isinstance(expected, str) or not hmac.compare_digest(sent[0].encode(), expected.encode()):
            security_event("csrf_rejected", reason="token", path=request.url.path)
            return None
        return fields

    def _unauthenticated(self, request: Request) -> Response:
        if self._oidc is not None:
            return self._redirect("/account/login", 302)
        return self._message(401, "Not signed in", "Sign in through your institution's portal first.")

    # -- pages ------------------------------------------------------------------------

    async def account(self, request: Request) -> Response:
        try:
            principal = await self._principal(request)
        except HeaderSpoofed:
            return self._message(401, "Refused", "This request carried an identity header it may not carry.")
        if principal is None:
            return self._unauthenticated(request)
        record = await self._users.get(principal.user)
        models = await self._models(principal)
        now = time.time()
        rows = []
        for key in await self._keys.list_keys(principal.user):
            state = key.state(now)
            revoke = ""
            if state == "active":
                revoke = (
                    f'<form method="post" action="/account/keys/{html.escape(key.id)}/revoke">'
                    f'<input type="hidden" name="csrf" value="{html.escape(self._csrf(request))}">'
                    '<button type="submit">Revoke</button></form>'
                )
            cells = [
                key.name,
                key.id,
                ", ".join(key.scope) if key.scope else "all you may use",
                _date(key.created),
                _date(key.expires),
                state,
            ]
            rows.append(
                f'<tr id="key-{html.escape(key.id)}">'
                + "".join(f"<td>{html.escape(c)}</td>" for c in cells)
                + f"<td>{revoke}</td></tr>"
            )
        keys = _Markup(
            '<table id="keys"><tr><th>Name</th><th>Id</th><th>Models</th><th>Created</th><th>Expires</th>'
            "<th>State</th><th></th></tr>" + "".join(rows) + "</table>"
            if rows
            else '<p id="keys">No keys yet.</p>'
        )
        choices = _Markup(
            "".join(
                f'<label><input type="checkbox" name="model" value="{html.escape(m)}"> {html.escape(m)}</label><br>'
                for m in models or []
            )
            or "<p>No models to choose from.</p>"
        )
        display = (record.name or record.email) if record else None
        return self._page(
            _render(
                "account.html",
                display=display or principal.user,
                user=principal.user,
                groups=", ".join(sorted(principal.groups)) or "none",
                csrf=self._csrf(request),
                models=_list(
                    models or [], "models", "None right now." if models is not None else "The cluster is not reachable."
                ),
                keys=keys,
                model_choices=choices,
                base_url=self.public_url,
                key_max_days=self._key_max_days,
                key_default_days=min(DEFAULT_KEY_DAYS, self._key_max_days),
            )
        )

    # -- the web chat's view of the session (JSON) -------------------------------------

    async def session_info(self, request: Request) -> Response:
        """Who is signed in, and the CSRF token the chat sends with its API calls.

        Same-origin only in effect: no CORS is granted, so another site cannot read it."""
        try:
            principal = await self._principal(request)
        except HeaderSpoofed:
            return JSONResponse({"signed_in": False, "error": "identity_header_refused"}, 401, headers=self._headers)
        if principal is None:
            return JSONResponse(
                {
                    "signed_in": False,
                    "sign_in": "/account/login" if self._oidc is not None else None,
                    "demo_sign_in": "/account/demo-sign-in" if self._demo_user is not None else None,
                },
                headers=self._headers,
            )
        record = await self._users.get(principal.user)
        return JSONResponse(
            {
                "signed_in": True,
                "user": principal.user,
                "display": ((record.name or record.email) if record else None) or principal.user,
                "csrf": self._csrf(request),
                "sign_out": "/account/logout",
                "account": "/account/",
            },
            headers=self._headers,
        )

    async def demo_sign_in(self, request: Request) -> Response:
        """`sluice demo` on loopback: sign in as the demo user with one click (a same-origin POST)."""
        if self._demo_user is None:  # the route exists only with a demo user; belt and braces
            return self._message(404, "Not here", "There is no demo sign-in here.")
        if not same_origin(request, self.public_url, required=True):
            security_event("csrf_rejected", reason="origin", path=request.url.path)
            return self._message(403, "Refused", "The demo sign-in works from the demo's own page only.")
        await self._users.record(self._demo_user, "admin")
        await self._sessions.delete(request.session.get("sid"))
        request.session.clear()
        request.session["sid"] = await self._sessions.create(self._demo_user.user, None)
        request.session["csrf"] = secrets.token_urlsafe(32)
        return self._redirect("/")

    async def login(self, request: Request) -> Response:
        if self._oidc is None:
            return self._message(404, "Not here", "Sign-in goes through your institution's portal.")
        try:
            url, pending = await self._oidc.begin()
        except ProviderError:
            return self._message(503, "Sign-in unavailable", "The identity provider cannot be reached; try again shortly.")
        request.session["login"] = pending.to_dict()
        return self._redirect(url, 302)

    async def callback(self, request: Request) -> Response:
        if self._oidc is None:
            return self._message(404, "Not here", "Sign-in goes through your institution's portal.")
        pending = PendingLogin.from_dict(request.session.pop("login", None))
        items = request.query_params.multi_items()
        params = dict(items)
        try:
            if len(params) != len(items):
                raise LoginFailed("repeated_parameter")
            sign_in = await self._oidc.finish(pending, params)
        except LoginFailed as exc:
            security_event("oidc_login_failed", reason=exc.reason, peer=request.client.host if request.client else None)
            return self._message(
                400, "Sign-in failed", f"The sign-in could not be completed ({exc.reason}).", "/account/login", "Try again"
            )
        except ProviderError:
            return self._message(503, "Sign-in unavailable", "The identity provider cannot be reached; try again shortly.")
        identity = sign_in.identity
        await self._users.record(identity, "oidc")
        await self._sessions.delete(request.session.get("sid"))
        request.session.clear()  # a fresh session: nothing from before the sign-in survives (fixation)
        request.session["sid"] = await self._sessions.create(identity.user, sign_in.id_token)
        request.session["csrf"] = secrets.token_urlsafe(32)
        log.info(event_line("signed_in", user=identity.user))
        audit_event("sign_in", identity.user[:256], identity.user[:256], source="oidc")
        return self._redirect("/account/")

    async def logout(self, request: Request) -> Response:
        # Who it is before any body is read: without a session nobody is signed in, and a
        # stranger's upload is never read (or waited for).
        try:
            principal = await self._principal(request)
        except HeaderSpoofed:
            principal = None
        if principal is None:
            return self._message(401, "Not signed in", "You are not signed in.", "/account/login", "Sign in")
        if await self._form(request) is None:
            return self._message(403, "Refused", "The form was stale or not ours; reload the page and try again.")
        session = await self._sessions.get(request.session.get("sid"))
        await self._sessions.delete(request.session.get("sid"))
        request.session.clear()
        if session is not None:
            audit_event("sign_out", session.user[:256], session.user[:256])
        target = "/account/signed-out"
        if self._oidc is not None and session is not None:
            target = await self._oidc.logout_url(session.id_token, self.public_url + "/account/signed-out") or target
        elif self._header_logout_url:
            target = self._header_logout_url
        return self._redirect(target)

    async def signed_out(self, request: Request) -> Response:
        link = "/account/login" if self._oidc is not None else "/account/"
        return self._message(200, "Signed out", "You are signed out of Sluice.", link, "Sign in again")

    async def create_key(self, request: Request) -> Response:
        try:
            principal = await self._principal(request)
        except HeaderSpoofed:
            return self._message(401, "Refused", "This request carried an identity header it may not carry.")
        if principal is None:
            return self._message(401, "Not signed in", "Your session has ended; sign in again.", "/account/login", "Sign in")
        fields = await self._form(request)
        if fields is None:
            return self._message(403, "Refused", "The form was stale or not ours; reload the page and try again.")
        values: dict[str, Any] = {k: v for k, v in fields if k != "model"}
        scope = [v for k, v in fields if k == "model"]
        try:
            days = int(values.get("expires_days", ""))
        except ValueError:
            days = 0
        if not 1 <= days <= self._key_max_days:
            return self._message(400, "Not created", f"A key expires in 1 to {self._key_max_days} days.")
        if not all(self._access.allows(Principal(principal.user, groups=principal.groups), m) for m in scope):
            return self._message(400, "Not created", "A key can only be limited to models you may use.")
        try:
            key, info = await self._keys.create(
                principal.user, str(values.get("name", "")), scope or None, time.time() + days * 86400, created_by="web"
            )
        except KeyRequestError as exc:
            return self._message(400, "Not created", str(exc))
        log.info(event_line("api_key_created", user=principal.user, key_id=info.id))
        return self._page(
            _render(
                "key_created.html",
                name=info.name,
                key=key,
                key_id=info.id,
                expires=_date(info.expires),
                scope=", ".join(info.scope) if info.scope else "every model you may use",
                base_url=self.public_url,
            )
        )

    async def revoke_key(self, request: Request) -> Response:
        try:
            principal = await self._principal(request)
        except HeaderSpoofed:
            return self._message(401, "Refused", "This request carried an identity header it may not carry.")
        if principal is None:
            return self._message(401, "Not signed in", "Your session has ended; sign in again.", "/account/login", "Sign in")
        if await self._form(request) is None:
            return self._message(403, "Refused", "The form was stale or not ours; reload the page and try again.")
        key_id = request.path_params["key_id"]
        if await self._keys.revoke(key_id, owner=principal.user):
            log.info(event_line("api_key_revoked", user=principal.user, key_id=key_id))
            return self._redirect("/account/")
        return self._message(404, "No such key", "You have no active key with that id.")
