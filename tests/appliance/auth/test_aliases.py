"""Model aliases and deprecations in the access policy: resolved before access, quotas and the gate."""

from __future__ import annotations

import datetime
import json
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

from appliance.api.openai import OpenAIApi
from appliance.auth.access import AccessPolicyError, parse_access_policy
from appliance.auth.aliases import parse_model_names
from appliance.auth.base import Principal
from appliance.catalog import ClusterSet
from policy.bodies import load_routes
from policy.grammar import Call, Models

POLICY = {
    "groups": {"staff": {"models": ["llama", "whisper"]}, "guests": {"models": ["other"]}},
    "aliases": {"default": "llama", "ears": "whisper", "secret": "hidden"},
    "deprecated": {"llama": {"deprecation": datetime.date(2026, 12, 1), "sunset": datetime.date(2027, 3, 1)}},
}


class _Reply:
    def __init__(self, data: bytes) -> None:
        self.media, self.status, self.usage, self._data = "json", 200, {"prompt_tokens": 1}, data
        self.produced_by = {"revision": "abc123", "backend_version": "0.11.0"}

    async def read(self) -> bytes:
        return self._data

    def cancel(self) -> None: ...


class _Transport:
    def __init__(self) -> None:
        self.calls: list[tuple[Call, bytes]] = []

    async def start(self) -> None: ...

    async def aclose(self) -> None: ...

    def stats(self) -> dict[str, int]:
        return {}

    async def request(self, command: object, body: bytes) -> _Reply:
        if isinstance(command, Models):
            listing = [
                {"id": m, "ready": True, "routes": r, "revision": "abc123"}
                for m, r in (("llama", ["chat", "responses"]), ("whisper", ["transcriptions"]), ("hidden", ["chat"]))
            ]
            return _Reply(json.dumps({"data": listing}).encode())
        assert isinstance(command, Call)
        self.calls.append((command, body))
        return _Reply(json.dumps({"model": command.model, "usage": {"prompt_tokens": 1}}).encode())


class _Auth:
    def __init__(self, groups: set[str]) -> None:
        self.groups = frozenset(groups)

    async def authenticate(self, request: object) -> Principal:
        return Principal("ada", groups=self.groups)


class _Ticket:
    headers: dict[str, str] = {}

    async def settle(self, outcome: object) -> None: ...


class _Metering:
    def __init__(self) -> None:
        self.admitted: list[str] = []

    async def admit(self, principal: object, route: str, model: str, max_tokens: object, sealed: bool) -> _Ticket:
        self.admitted.append(model)
        return _Ticket()


def _client(groups: set[str]) -> tuple[TestClient, _Transport, _Metering]:
    transport, metering = _Transport(), _Metering()
    api = OpenAIApi(
        ClusterSet.single(transport),
        _Auth(groups),
        parse_access_policy(POLICY),
        metering,  # type: ignore[arg-type]
        load_routes(),
        30.0,
    )
    return TestClient(Starlette(routes=api.routes())), transport, metering


def test_alias_resolves_to_the_real_model_everywhere() -> None:
    client, transport, metering = _client({"staff"})
    answer = client.post("/v1/chat/completions", json={"model": "default", "messages": [{"role": "user", "content": "x"}]})
    assert answer.status_code == 200 and answer.json()["model"] == "llama"
    call, body = transport.calls[-1]
    assert call.model == "llama" and json.loads(body)["model"] == "llama" and metering.admitted == ["llama"]
    assert answer.headers["deprecation"] == "@1796083200"
    assert answer.headers["sunset"] == "Mon, 01 Mar 2027 00:00:00 GMT"
    assert answer.headers["sluice-model-revision"] == "abc123"
    assert answer.headers["sluice-backend-version"] == "0.11.0"


def test_alias_of_a_form_route() -> None:
    from tests.audio_files import wav

    client, transport, _ = _client({"staff"})
    answer = client.post("/v1/audio/transcriptions", data={"model": "ears"}, files={"file": ("a.wav", wav(0.1))})
    assert answer.status_code == 200 and "deprecation" not in answer.headers
    call, body = transport.calls[-1]
    assert call.model == "whisper" and b'name="model"\r\n\r\nwhisper\r\n' in body


def test_models_lists_aliases_of_visible_models_only() -> None:
    client, _, _ = _client({"staff"})
    listing = {m["id"]: m.get("alias_of") for m in client.get("/v1/models").json()["data"]}
    assert listing == {"llama": None, "whisper": None, "default": "llama", "ears": "whisper"}


@pytest.mark.parametrize("model", ["default", "secret", "llama"])
def test_reject_alias_without_access_to_its_target(model: str) -> None:
    client, transport, metering = _client({"guests"})
    answer = client.post("/v1/chat/completions", json={"model": model, "messages": [{"role": "user", "content": "x"}]})
    assert answer.status_code == 404 and answer.json()["error"]["code"] == "model_not_found"
    assert transport.calls == [] and metering.admitted == []


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"aliases": {"a": "b", "b": "c"}}, "points at another alias"),
        ({"aliases": {"a b": "c"}}, "must map a model name"),
        ({"aliases": {"a": 1}}, "must map a model name"),
        ({"deprecated": {"m": {"sunset": "2027-01-01"}}}, "TOML date"),
        ({"deprecated": {"m": {}}}, "needs a deprecation or a sunset"),
        ({"deprecated": {"m": {"when": datetime.date(2027, 1, 1)}}}, "must be a table"),
        ({"aliases": {"a": "m"}, "deprecated": {"a": {"sunset": datetime.date(2027, 1, 1)}}}, "is an alias"),
    ],
)
def test_reject_bad_alias_policy(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_model_names(data, "access.toml")
    with pytest.raises(AccessPolicyError, match=message):
        parse_access_policy(data)
