"""How many output tokens a request can cause at most, and the ceiling set on a request that names none.

A reservation must cover the worst case the backend can be made to produce:
``n`` choices for each of the prompts (a completions ``prompt`` may be a list
of prompts), each up to the larger of ``max_tokens`` and
``max_completion_tokens`` (backends differ in which one wins), or a
responses request's ``max_output_tokens``.  A request that names none would
let the backend generate up to the model's context length, so it gets the
model's configured ceiling set (as ``max_tokens``, or ``max_output_tokens``
for responses) in the body sent to the gate (which re-checks it against
``policy/routes.toml``): the reservation and what the backend may produce
are then the same number.

Sealed requests are opaque to the appliance: they keep the quota policy's
``reserve_tokens`` and are reconciled with the gate's usage numbers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from policy.bodies import CheckedBody, Route

__all__ = ["DEFAULT_MAX_OUTPUT_TOKENS", "OutputCeilings", "Reservation", "reserve"]

# Output tokens allowed per choice when a request names no limit and its model has no
# ceiling of its own: long answers fit; a runaway generation does not.
DEFAULT_MAX_OUTPUT_TOKENS: Final = 4096

# Routes whose answers are generated text (embeddings, scores and transcripts produce none
# worth a ceiling): the body fields that bound the output per choice, and the one the
# appliance sets when a request names none.
_LIMIT_FIELDS: Final[Mapping[str, tuple[tuple[str, ...], str]]] = {
    "chat": (("max_tokens", "max_completion_tokens"), "max_tokens"),
    "completions": (("max_tokens", "max_completion_tokens"), "max_tokens"),
    "responses": (("max_output_tokens",), "max_output_tokens"),
}


@dataclass(frozen=True, slots=True)
class OutputCeilings:
    """The per-choice output ceiling of each model (``[server] model_max_output_tokens``), and the default."""

    default: int = DEFAULT_MAX_OUTPUT_TOKENS
    models: Mapping[str, int] = field(default_factory=dict)

    def of(self, model: str) -> int:
        return self.models.get(model, self.default)


@dataclass(frozen=True, slots=True)
class Reservation:
    # Output tokens to reserve; None: the route generates none (the quota policy's default applies).
    tokens: int | None
    # The body to send to the gate: the client's, or (no limit named) the checked body with the ceiling set.
    body: bytes = field(repr=False)


def _prompts(obj: Mapping[str, Any]) -> int:
    """How many prompts a completions body carries (a list of strings or of token lists: one each)."""
    prompt = obj.get("prompt")
    if isinstance(prompt, list) and prompt and all(isinstance(p, (str, list)) for p in prompt):
        return len(prompt)
    return 1


def reserve(route: Route, checked: CheckedBody, sent: bytes, ceilings: OutputCeilings) -> Reservation:
    """The worst-case output of ``checked`` (which passed ``route``'s check as ``sent``), and the body to forward."""
    limits = _LIMIT_FIELDS.get(route.id)
    if limits is None:
        return Reservation(None, sent)
    fields, ceiling_field = limits
    obj = orjson.loads(checked.body)
    named = [v for v in (obj.get(f) for f in fields) if isinstance(v, int)]
    body = sent
    if named:
        per_choice = max(named)
    else:
        per_choice = ceilings.of(checked.model)
        body = route.serialize({**obj, ceiling_field: per_choice})
    choices = obj.get("n", 1) if isinstance(obj.get("n", 1), int) else 1
    prompts = _prompts(obj) if route.id == "completions" else 1
    return Reservation(max(1, choices) * prompts * per_choice, body)
