"""The demo's identity: web sessions for the chat, and a one-click sign-in on loopback only.

``sluice demo`` has no identity provider.  It keeps users, keys and web sessions
in a SQLite file in its runtime directory (gone when the demo stops), and
offers a demo sign-in button, but only when it binds a loopback address: on
any other address the route is not registered at all, so nobody on the
network can sign in without a credential.  The cookie is not ``Secure`` only
because the demo is plain http on loopback (logged as unsafe at start).
"""

from __future__ import annotations

import ipaddress
import logging
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Final

from policy.events import event_line

from .auth._db import open_database
from .auth.api_keys import ApiKeyStore
from .auth.base import Principal, UnsafeAllowAll
from .auth.browser import BrowserSessionAuthenticator
from .auth.build import IdentityServices
from .auth.chain import ChainAuthenticator
from .auth.identity import Identity
from .auth.keystore import KeyStore
from .auth.secret import Secret
from .auth.session_cookie import SessionCookieReader
from .auth.sessions import SessionStore
from .auth.users import UserDirectory
from .auth.web import AccountPages

__all__ = ["DEMO_USER", "demo_identity", "demo_url", "is_loopback"]

log = logging.getLogger("sluice.auth")

DEMO_USER: Final = Identity("demo#demo", "demo@localhost", "Demo user", frozenset({"demo"}))
SESSION_LIFETIME: Final = 8 * 3600.0
# The demo's keys never outlive the demo; a month is plenty.
KEY_MAX_DAYS: Final = 30


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) is on this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def demo_url(host: str, port: int) -> str:
    """The demo's public URL (what browsers send as Origin)."""
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def demo_identity(runtime: Path, public_url: str, host: str, operator_keys: ApiKeyStore) -> IdentityServices:
    """Sessions and account pages for the demo; the one-click sign-in only on a loopback ``host``."""
    db = open_database(runtime / "identity.db")
    users = UserDirectory(db, groups_max_age=SESSION_LIFETIME)
    keys = KeyStore(db, users)
    sessions = SessionStore(db, SESSION_LIFETIME)
    secret = Secret(secrets.token_urlsafe(32))
    secure = False
    log.warning(event_line("unsafe_insecure_cookies", reason="sluice demo serves plain http"))
    cookie = SessionCookieReader(secret, secure=secure, max_age=int(SESSION_LIFETIME))
    authenticator = BrowserSessionAuthenticator(ChainAuthenticator(operator_keys, keys), cookie, sessions, users, public_url)
    access = UnsafeAllowAll()
    log.warning(event_line("unsafe_allow_all", reason="sluice demo: every signed-in user may use every model"))
    demo_user = DEMO_USER if is_loopback(host) else None

    def pages(models: Callable[[Principal], Awaitable[list[str] | None]]) -> AccountPages:
        return AccountPages(
            public_url=public_url,
            session_secret=secret,
            cookie_secure=secure,
            cookie_samesite="strict",
            sessions=sessions,
            users=users,
            keys=keys,
            access=access,
            models=models,
            key_max_days=KEY_MAX_DAYS,
            demo_user=demo_user,
        )

    return IdentityServices(authenticator, access, keys, users, pages=pages, _db=db)
