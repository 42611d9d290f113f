"""The stand-in's deterministic tool calls, so tests can see tool calls pass unchanged.

When a request offers tools and forces their use (``tool_choice`` is
``"required"`` or names one function), the stand-in "calls" them instead of
answering in words: the named function, or with parallel tool calls allowed
(the default) every offered tool, up to :data:`MAX_PARALLEL_CALLS`.  The
arguments are a pure function of the prompt and the tool's name, and one
argument piece is one token, streamed piece by piece as vLLM does.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from cluster.standin._model import reply_words

__all__ = ["MAX_PARALLEL_CALLS", "ARGUMENT_WORDS", "ToolCall", "tool_calls"]

MAX_PARALLEL_CALLS = 4
"""Most calls in one answer: enough to show parallel calls, bounded like everything else."""

ARGUMENT_WORDS = 3
"""Words of the one string argument (``query``) of each call."""


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One call: its id, the function's name, and the JSON arguments in token-sized pieces."""

    call_id: str
    name: str
    pieces: tuple[str, ...]

    @property
    def arguments(self) -> str:
        return "".join(self.pieces)


def _names(tools: object) -> list[str]:
    """The function names of the offered tools (chat nests them under "function")."""
    names = []
    if isinstance(tools, list):
        for tool in tools:
            if not isinstance(tool, dict) or tool.get("type") != "function":
                continue
            function = tool.get("function", tool)
            name = function.get("name") if isinstance(function, dict) else None
            if isinstance(name, str):
                names.append(name)
    return names


def _forced(tool_choice: object) -> str | bool:
    """The one function the caller forces, True for "required", False otherwise."""
    if tool_choice == "required":
        return True
    if isinstance(tool_choice, dict):
        function = tool_choice.get("function", tool_choice)
        name = function.get("name") if isinstance(function, dict) else None
        if isinstance(name, str):
            return name
    return False


def tool_calls(obj: dict[str, Any], prompt: str) -> list[ToolCall]:
    """The calls the stand-in makes for request ``obj`` (empty: answer in words)."""
    names = _names(obj.get("tools"))
    forced = _forced(obj.get("tool_choice"))
    if not names or forced is False:
        return []
    if isinstance(forced, str):
        chosen = [forced] if forced in names else []
    elif obj.get("parallel_tool_calls") is False:
        chosen = names[:1]
    else:
        chosen = names[:MAX_PARALLEL_CALLS]
    calls = []
    for index, name in enumerate(chosen):
        words, _ = reply_words(f"{prompt}\n{name}", ARGUMENT_WORDS)
        text = json.dumps({"query": " ".join(words)}, separators=(",", ":"))
        # Pieces: the opening up to the value, each word, the closing.
        head, _, _ = text.partition(words[0])
        pieces = [head, *(w if i == 0 else " " + w for i, w in enumerate(words)), '"}']
        digest = hashlib.sha256(f"{index}\n{name}\n{prompt}".encode("utf-8", "surrogatepass")).hexdigest()
        calls.append(ToolCall("call_" + digest[:24], name, tuple(pieces)))
    return calls
