"""policy.events.event_line: the one way a log line says what happened."""

from __future__ import annotations

import json

from policy.events import event_line


def test_event_first_then_fields_in_order_compact() -> None:
    assert event_line("violation", code="frame_flood") == '{"event":"violation","code":"frame_flood"}'
    assert event_line("health_failed", model="m", job="7", count=2) == (
        '{"event":"health_failed","model":"m","job":"7","count":2}'
    )
    assert event_line("no_services") == '{"event":"no_services"}'


def test_types_are_json_types() -> None:
    line = json.loads(event_line("x", admitted=False, deadline=2.5, user=None, rows=3))
    assert line == {"event": "x", "admitted": False, "deadline": 2.5, "user": None, "rows": 3}


def test_reject_injection_through_a_value() -> None:
    """A value with quotes, braces or a newline stays one field of one line."""
    hostile = 'x","admitted":true,"event":"forged"}\n{"event":"second'
    line = event_line("quota_settle_failed", error=hostile)
    assert "\n" not in line
    assert json.loads(line) == {"event": "quota_settle_failed", "error": hostile}
