"""The appliance's side of model status: /v1/models fields and a 503's Retry-After from the estimate."""

from __future__ import annotations

import json

import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

from appliance.api.openai import OpenAIApi
from appliance.auth.access import parse_access_policy
from appliance.catalog import MAX_WAIT, ClusterSet, model_info
from policy.bodies import load_routes
from policy.errors import NoBackend
from policy.grammar import Models
from tests.appliance.auth.test_aliases import _Auth, _Metering, _Reply
from tests.appliance.auth.test_aliases import _Transport as _AliasTransport

LISTING = [
    {"id": "warm", "ready": True, "routes": ["chat"], "status": "ready", "instances": {"ready": 2, "starting": 0}},
    {
        "id": "cold",
        "ready": False,
        "routes": ["chat"],
        "status": "starting",
        "instances": {"ready": 0, "starting": 1},
        "estimated_wait": 42,
    },
    {"id": "zero", "ready": False, "routes": ["chat"], "status": "scaled_to_zero", "estimated_wait": 300},
    {"id": "old-gate", "ready": False, "routes": ["chat"]},
    {"id": "liar", "ready": True, "routes": ["chat"], "status": "ready", "instances": {"ready": -3}, "estimated_wait": "soon"},
]


class _Transport(_AliasTransport):
    async def request(self, command: object, body: bytes) -> _Reply:
        if isinstance(command, Models):
            return _Reply(json.dumps({"data": LISTING}).encode())
        raise NoBackend()  # the gate could not hold it: the model is starting


def _client() -> TestClient:
    policy = parse_access_policy({"groups": {"staff": {"models": ["*"]}}})
    api = OpenAIApi(
        ClusterSet.single(_Transport()),
        _Auth({"staff"}),
        policy,
        _Metering(),  # type: ignore[arg-type]
        load_routes(),
        30.0,
    )
    return TestClient(Starlette(routes=api.routes()))


def test_models_carry_status_ready_instances_and_estimate() -> None:
    listing = {m["id"]: m for m in _client().get("/v1/models").json()["data"]}
    assert (listing["warm"]["status"], listing["warm"]["ready_instances"]) == ("ready", 2)
    assert "estimated_wait" not in listing["warm"]
    assert (listing["cold"]["status"], listing["cold"]["estimated_wait"]) == ("starting", 42)
    assert (listing["zero"]["status"], listing["zero"]["estimated_wait"]) == ("scaled_to_zero", 300)
    assert listing["old-gate"]["status"] == "unavailable"  # a gate that says only ready: false


def test_reject_garbled_counts_and_estimate_from_a_gate() -> None:
    liar = {m["id"]: m for m in _client().get("/v1/models").json()["data"]}["liar"]
    assert liar["status"] == "ready" and liar["ready_instances"] == 0 and "estimated_wait" not in liar


@pytest.mark.parametrize("wait", [-1, True, 1.5, MAX_WAIT + 1])
def test_reject_implausible_estimates(wait: object) -> None:
    entry = {"id": "m", "ready": False, "routes": ["chat"], "status": "starting", "estimated_wait": wait}
    assert model_info(entry, "c").estimated_wait is None


def test_reject_garbled_status_from_a_gate() -> None:
    """A state this appliance does not know makes the gate's listing a bad one (appliance/catalog.py)."""
    with pytest.raises(ValueError):
        model_info({"id": "m", "ready": True, "routes": ["chat"], "status": "on fire"}, "c")


def test_503_says_retry_after_from_the_estimate() -> None:
    answer = _client().post("/v1/chat/completions", json={"model": "cold", "messages": [{"role": "user", "content": "x"}]})
    assert answer.status_code == 503 and answer.headers["retry-after"] == "42"
    assert answer.json()["error"]["code"] == "no_backend"
