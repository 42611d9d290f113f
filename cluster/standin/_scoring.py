"""The stand-in's ``/v1/rerank`` and ``/v1/score``, as vLLM serves them for cross-encoders.

A pair's score is a pure function of its two texts: the cosine of their
stand-in embeddings, mapped to [0, 1].  A pair's tokens are the words of both
texts.  Nothing here looks at time or randomness beyond the answer's id, so
tests can predict every score.
"""

from __future__ import annotations

from typing import Any

from cluster.standin._model import count_words, embed
from policy.errors import PeerError

__all__ = ["SCORE_DIMENSIONS", "pair_score", "rerank_reply", "score_reply", "ScoringError"]

SCORE_DIMENSIONS = 32
"""Dimensions of the embeddings a score is drawn from (any fixed number would do)."""


class ScoringError(PeerError):
    """A request the stand-in refuses; its one argument is a fixed code."""


def _key(text: str) -> bytes:
    return b"text:" + text.encode("utf-8", "surrogatepass")


def pair_score(first: str, second: str) -> float:
    """The relevance of ``second`` to ``first``: (1 + cosine) / 2, rounded to 6 places."""
    a, b = embed(_key(first), SCORE_DIMENSIONS), embed(_key(second), SCORE_DIMENSIONS)
    return round((1.0 + sum(x * y for x, y in zip(a, b, strict=True))) / 2.0, 6)


def _texts(value: object, code: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(item, str) for item in value):
        return value
    raise ScoringError(code)


def rerank_reply(obj: dict[str, Any], model: str, ident: str) -> dict[str, Any]:
    """The answer to a rerank request: documents by falling relevance, ``top_n`` of them."""
    query = obj.get("query")
    if not isinstance(query, str):
        raise ScoringError("invalid_query")
    documents = _texts(obj.get("documents"), "invalid_documents")
    if isinstance(obj.get("documents"), str):
        raise ScoringError("invalid_documents")
    top_n = obj.get("top_n") or 0
    if type(top_n) is not int or top_n < 0:
        raise ScoringError("invalid_top_n")
    scored = sorted(((pair_score(query, doc), index) for index, doc in enumerate(documents)), key=lambda s: (-s[0], s[1]))
    if top_n:
        scored = scored[:top_n]
    results = [{"index": index, "document": {"text": documents[index]}, "relevance_score": score} for score, index in scored]
    tokens = sum(count_words(query) + count_words(doc) for doc in documents)
    return {"id": ident, "model": model, "usage": {"total_tokens": tokens}, "results": results}


def score_reply(obj: dict[str, Any], model: str, ident: str, created: int) -> dict[str, Any]:
    """The answer to a score request: one score per (text_1, text_2) pair."""
    first = _texts(obj.get("text_1"), "invalid_text_1")
    second = _texts(obj.get("text_2"), "invalid_text_2")
    if len(first) == 1:
        first = first * len(second)
    if len(first) != len(second):
        raise ScoringError("text_lengths_differ")
    data = [
        {"index": index, "object": "score", "score": pair_score(a, b)}
        for index, (a, b) in enumerate(zip(first, second, strict=True))
    ]
    tokens = sum(count_words(a) + count_words(b) for a, b in zip(first, second, strict=True))
    return {
        "id": ident,
        "object": "list",
        "created": created,
        "model": model,
        "data": data,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
