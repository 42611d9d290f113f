"""`sluice status`: the exposition parser, the document, the table, and clear failures."""

from __future__ import annotations

import pytest

from appliance.cli import main
from appliance.status import format_status, parse_exposition, status_document

PAGE = """\
# HELP sluice_cluster_up 1 if the cluster's gate answered.
# TYPE sluice_cluster_up gauge
sluice_cluster_up{cluster="hpc"} 1
sluice_cluster_up{cluster="old"} 0
sluice_gate_sessions{cluster="hpc"} 1
sluice_gate_slots{cluster="hpc"} 2
sluice_gate_reconnects_total{cluster="hpc"} 3
sluice_model_ready{cluster="hpc",model="big"} 0
sluice_model_instances{cluster="hpc",model="big",state="ready"} 0
sluice_model_instances{cluster="hpc",model="big",state="starting"} 1
sluice_gate_held_requests{cluster="hpc",model="big"} 4
sluice_quota_rejections_total{limit="requests_per_minute",scope="user"} 7
sluice_requests_in_flight{model="big"} 4
sluice_requests_total{route="chat",model="big",status="200"} 10
sluice_http_requests_total{path="we\\"ird\\\\",status="200"} 2
not a sample line
"""


def test_parse_exposition() -> None:
    samples = parse_exposition(PAGE)
    assert len(samples) == 13
    weird = next(s for s in samples if s.name == "sluice_http_requests_total")
    assert weird.labels == {"path": 'we"ird\\', "status": "200"} and weird.value == 2


def test_document_and_table() -> None:
    document = status_document(parse_exposition(PAGE))
    assert document["clusters"][0] == {"cluster": "hpc", "up": True, "sessions": 1, "slots": 2, "reconnects": 3}
    assert document["clusters"][1] == {"cluster": "old", "up": False}
    assert document["models"] == [
        {
            "cluster": "hpc",
            "model": "big",
            "ready": False,
            "instances_ready": 0,
            "instances_starting": 1,
            "held": 4,
            "in_flight": 0,
        }
    ]
    assert document["queue"] == {"held": 4, "in_flight": 4}
    assert document["quota_refusals"] == {"requests_per_minute/user": 7}
    text = format_status(document)
    assert "old      DOWN" in text and "hpc      up    1/2" in text
    assert "hpc      big    starting  0      1         4" in text
    assert "requests_per_minute/user: 7" in text


def test_reject_an_unreachable_appliance(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--url", "http://127.0.0.1:9"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("sluice status: cannot reach http://127.0.0.1:9") and "Traceback" not in err


def test_reject_a_url_that_is_not_http(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--url", "file:///etc/passwd"]) == 1
    assert "must start with http://" in capsys.readouterr().err
