"""Security events: one JSON object per line on the ``sluice.security`` logger.

Events carry who and what (addresses, user ids, key ids, reason codes), never
credentials, tokens, header values we refused, or request content.
"""

from __future__ import annotations

import logging

from policy.events import event_line

__all__ = ["security_event"]

log = logging.getLogger("sluice.security")


def security_event(event: str, **fields: str | int | None) -> None:
    """Log ``event`` with ``fields`` as one JSON line at WARNING."""
    log.warning(event_line(event, **fields))
