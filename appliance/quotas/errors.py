"""The errors a quota check raises: 429 for a limit reached, 503 when the limits cannot be read."""

from __future__ import annotations

from policy.errors import InternalError, LocalError, PeerError

__all__ = ["QuotaExceeded", "QuotaStorageError", "QuotaUnavailable"]


class QuotaExceeded(PeerError):
    """A limit is reached: 429, with ``retry_after`` (seconds) and the limit that refused.

    ``code`` names the limit (``requests_per_minute_exceeded``, ...), or is
    ``max_tokens_over_quota`` for a request that reserves more tokens than
    the limit allows at all (it will not fit later either).
    """

    status = 429

    def __init__(
        self, limit: str, scope: str, retry_after: float, code: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(code or f"{limit}_exceeded", 429)
        self.limit = limit
        self.scope = scope
        self.retry_after = max(1.0, retry_after)
        # OpenAI's x-ratelimit-* headers of the limit that refused, for the 429 answer.
        self.headers: dict[str, str] = headers or {}


class QuotaUnavailable(LocalError):
    """The quota storage cannot be reached and the policy is to fail closed: 503."""

    code = "quota_unavailable"
    status = 503

    def __init__(self) -> None:
        super().__init__()
        self.retry_after = 5.0


class QuotaStorageError(InternalError):
    """Internal: the storage behind the limits failed (unreachable, timed out, refused)."""
