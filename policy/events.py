"""One structured log line: ``{"event":"...", field: value, ...}`` as compact JSON.

Every log line of the gate, the scheduler and the appliance that says what
happened is built here, never by hand with ``%s`` in a JSON template: values
are escaped (an error text with a quote in it cannot break the line or add a
field), and every line has the same shape -- ``event`` first, then the fields
in the order given, no spaces.  The line carries codes, names, ids and
numbers; never request content.
"""

from __future__ import annotations

import json

__all__ = ["event_line"]


def event_line(event: str, **fields: object) -> str:
    """``event`` and ``fields`` as one JSON object on one line."""
    return json.dumps({"event": event, **fields}, separators=(",", ":"))
