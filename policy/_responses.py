"""The Responses dialect: what ``POST /v1/responses`` needs beyond the route's schema.

OpenAI's Responses API can keep state on the server: a stored response
(``store``), a chain of them (``previous_response_id``), a conversation
object, a background job, a stored prompt template.  Sluice keeps none of
that (nothing of a request or its answer is ever stored), so a stateless
gateway must say so instead of silently forgetting:

* ``store`` passes only as ``false`` or ``null`` or left out
  (``store_not_supported`` otherwise); the forwarded body always says
  ``"store": false``, so a backend that would keep responses (vLLM does by
  default) keeps nothing.
* ``previous_response_id``, ``conversation``, ``background`` and ``prompt``
  pass only as ``null`` (or ``false``); any other value is refused with
  ``server_state_not_supported``: the client sends the whole conversation in
  ``input`` instead.

Input items without a ``type`` are messages (OpenAI's documented default for
``{"role": ..., "content": ...}`` items); they get ``"type": "message"`` so
that the schema can tell items apart by a required discriminator.
"""

from __future__ import annotations

from typing import Any, Final

from ._limits import _POLICY
from .errors import BodyRejected

__all__ = ["DIALECTS", "RESPONSES", "SERVER_STATE_FIELDS", "prepare_responses", "forward_responses"]

# The route dialects routes.toml may name (`dialect = "..."`).
RESPONSES: Final = "responses"
DIALECTS: Final = frozenset({RESPONSES})

# Fields of the Responses API that ask the server to keep or recall state.
SERVER_STATE_FIELDS: Final = ("store", "previous_response_id", "conversation", "background", "prompt")

# OpenAI's default item type for an input item that has a role and no type.
_MESSAGE: Final = "message"


def prepare_responses(obj: dict[str, Any]) -> dict[str, Any]:
    """Refuse server state, drop the fields that only said "none", default input item types.

    Returns a new top-level object (``obj`` is not changed); raises
    :class:`~policy.errors.BodyRejected` with ``store_not_supported`` or
    ``server_state_not_supported``.
    """
    out = dict(obj)
    for name in SERVER_STATE_FIELDS:
        if name not in out:
            continue
        value = out.pop(name)
        if value is None or value is False:
            continue
        raise BodyRejected("store_not_supported" if name == "store" else "server_state_not_supported", _POLICY)
    items = out.get("input")
    if type(items) is list and any(type(item) is dict and "type" not in item and "role" in item for item in items):
        out["input"] = [
            {"type": _MESSAGE, **item} if type(item) is dict and "type" not in item and "role" in item else item for item in items
        ]
    return out


def forward_responses(obj: dict[str, Any]) -> dict[str, Any]:
    """The checked body as the backend gets it: never stored."""
    return {**obj, "store": False}
