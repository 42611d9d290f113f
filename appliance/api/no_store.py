"""Every API answer says ``Cache-Control: no-store``: no browser or proxy keeps a completion.

One ASGI middleware.  The one exception is the public key configuration of
``/v1/sealed/keys``, which is the same for everyone and says how long to keep it.
"""

from __future__ import annotations

from typing import Final

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["NoStoreMiddleware", "no_store"]

_API_PREFIX: Final = "/v1/"
_PUBLIC: Final = frozenset({"/v1/sealed/keys"})


def no_store(path: str) -> bool:
    """Whether an answer on ``path`` says ``Cache-Control: no-store``."""
    return path.startswith(_API_PREFIX) and path not in _PUBLIC


class NoStoreMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not no_store(scope.get("path", "")):
            await self.app(scope, receive, send)
            return

        async def send_no_store(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)["Cache-Control"] = "no-store"
            await send(message)

        await self.app(scope, receive, send_no_store)
