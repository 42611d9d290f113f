"""The stand-in's ``POST /v1/responses``: OpenAI's Responses API, as vLLM shapes it.

Stateless, like everything Sluice forwards: the answer is built from the
request alone and kept nowhere.  A plain request gets one response object; a
streamed one gets the Responses event stream (``event:`` and ``data:`` lines,
one ``response.output_text.delta`` or ``response.function_call_arguments.delta``
per token) ending with ``response.completed``, whose response carries the
usage (``input_tokens``, ``output_tokens``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

from cluster.standin._model import count_words, reply_words
from cluster.standin._tools import ToolCall, tool_calls

__all__ = ["input_texts", "response_object", "response_events"]


def _content_text(content: object) -> str | None:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict):
                return None
            text = part.get("text", part.get("refusal", ""))
            if not isinstance(text, str):
                return None
            texts.append(text)
        return "\n".join(texts)
    return None


def input_texts(obj: dict[str, Any]) -> list[str] | None:
    """The texts of ``instructions`` and every input item, or None if the input is malformed."""
    texts = []
    instructions = obj.get("instructions")
    if isinstance(instructions, str):
        texts.append(instructions)
    items = obj.get("input")
    if isinstance(items, str):
        return [*texts, items]
    if not isinstance(items, list) or not items:
        return None
    for item in items:
        if not isinstance(item, dict):
            return None
        kind = item.get("type", "message")
        if kind == "message":
            text = _content_text(item.get("content"))
        elif kind == "function_call":
            text = item.get("arguments")
        elif kind == "function_call_output":
            text = item.get("output")
        else:
            text = ""
        if not isinstance(text, str):
            return None
        texts.append(text)
    return texts


def _usage(prompt_tokens: int, output_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": prompt_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt_tokens + output_tokens,
    }


def _event(kind: str, data: dict[str, Any], sequence: Iterator[int]) -> bytes:
    body = {"type": kind, "sequence_number": next(sequence), **data}
    return b"event: " + kind.encode("ascii") + b"\ndata: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"


def _message_item(item_id: str, text: str, status: str) -> dict[str, Any]:
    content = [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}] if status != "in_progress" else []
    return {"type": "message", "id": item_id, "status": status, "role": "assistant", "content": content}


def _call_item(item_id: str, call: ToolCall, arguments: str, status: str) -> dict[str, Any]:
    return {
        "type": "function_call",
        "id": item_id,
        "call_id": call.call_id,
        "name": call.name,
        "arguments": arguments,
        "status": status,
    }


class _Answer:
    """The words or tool calls of one response, and the response object around them."""

    def __init__(self, obj: dict[str, Any], texts: list[str], max_tokens: int, model: str, new_id: Callable[[str], str]) -> None:
        prompt = "\n".join(texts)
        self.calls = tool_calls(obj, prompt)
        self.words, finish = ([], "stop") if self.calls else reply_words(prompt, max_tokens)
        output_tokens = sum(len(c.pieces) for c in self.calls) + len(self.words)
        self.usage = _usage(sum(count_words(t) for t in texts), output_tokens)
        self.incomplete = finish == "length"
        self.id = new_id("resp")
        self.item_ids = [new_id("fc") for _ in self.calls] or [new_id("msg")]
        self.base = {
            "id": self.id,
            "object": "response",
            "created_at": int(time.time()),
            "model": model,
            "instructions": obj.get("instructions"),
            "max_output_tokens": obj.get("max_output_tokens"),
            "parallel_tool_calls": obj.get("parallel_tool_calls", True) is not False,
            "temperature": obj.get("temperature"),
            "top_p": obj.get("top_p"),
            "tool_choice": obj.get("tool_choice") or "auto",
            "tools": obj.get("tools") or [],
            "text": obj.get("text") or {"format": {"type": "text"}},
            "truncation": obj.get("truncation") or "disabled",
            "store": False,
            "metadata": {},
            "error": None,
        }

    def text(self) -> str:
        return " ".join(self.words)

    def output(self) -> list[dict[str, Any]]:
        if self.calls:
            return [_call_item(i, c, c.arguments, "completed") for i, c in zip(self.item_ids, self.calls, strict=True)]
        return [_message_item(self.item_ids[0], self.text(), "incomplete" if self.incomplete else "completed")]

    def response(self, status: str | None = None) -> dict[str, Any]:
        if status is not None:  # the in-progress snapshot at the start of a stream
            return {**self.base, "status": status, "output": [], "incomplete_details": None, "usage": None}
        details = {"reason": "max_output_tokens"} if self.incomplete else None
        return {
            **self.base,
            "status": "incomplete" if self.incomplete else "completed",
            "output": self.output(),
            "incomplete_details": details,
            "usage": self.usage,
        }


def response_object(
    obj: dict[str, Any], texts: list[str], max_tokens: int, model: str, new_id: Callable[[str], str]
) -> dict[str, Any]:
    """The whole response of a plain request."""
    return _Answer(obj, texts, max_tokens, model, new_id).response()


def response_events(
    obj: dict[str, Any], texts: list[str], max_tokens: int, model: str, new_id: Callable[[str], str]
) -> Iterator[bytes]:
    """The event stream of a streamed request, one event at a time (the server paces them)."""
    answer = _Answer(obj, texts, max_tokens, model, new_id)
    sequence = iter(range(1 << 62))

    def token_events() -> Iterator[bytes]:
        yield _event("response.created", {"response": answer.response("in_progress")}, sequence)
        yield _event("response.in_progress", {"response": answer.response("in_progress")}, sequence)
        if answer.calls:
            for index, (item_id, call) in enumerate(zip(answer.item_ids, answer.calls, strict=True)):
                yield _event(
                    "response.output_item.added",
                    {"output_index": index, "item": _call_item(item_id, call, "", "in_progress")},
                    sequence,
                )
                for piece in call.pieces:
                    yield _event(
                        "response.function_call_arguments.delta",
                        {"item_id": item_id, "output_index": index, "delta": piece},
                        sequence,
                    )
                yield _event(
                    "response.function_call_arguments.done",
                    {"item_id": item_id, "output_index": index, "name": call.name, "arguments": call.arguments},
                    sequence,
                )
                yield _event(
                    "response.output_item.done",
                    {"output_index": index, "item": _call_item(item_id, call, call.arguments, "completed")},
                    sequence,
                )
        else:
            item_id = answer.item_ids[0]
            where = {"item_id": item_id, "output_index": 0, "content_index": 0}
            yield _event(
                "response.output_item.added", {"output_index": 0, "item": _message_item(item_id, "", "in_progress")}, sequence
            )
            yield _event(
                "response.content_part.added", {**where, "part": {"type": "output_text", "text": "", "annotations": []}}, sequence
            )
            for index, word in enumerate(answer.words):
                yield _event(
                    "response.output_text.delta", {**where, "delta": word if index == 0 else " " + word, "logprobs": []}, sequence
                )
            text = answer.text()
            yield _event("response.output_text.done", {**where, "text": text, "logprobs": []}, sequence)
            yield _event(
                "response.content_part.done",
                {**where, "part": {"type": "output_text", "text": text, "annotations": []}},
                sequence,
            )
            status = "incomplete" if answer.incomplete else "completed"
            yield _event("response.output_item.done", {"output_index": 0, "item": _message_item(item_id, text, status)}, sequence)
        final = "response.incomplete" if answer.incomplete else "response.completed"
        yield _event(final, {"response": answer.response()}, sequence)

    return token_events()
