"""Two appliance replicas (`sluice serve` processes) share one real Redis: each limit holds across them.

A well-known peer gateway lets every replica keep its own copy of a limit,
so that the real limit is the limit times the number of replicas.  Here two
replicas take concurrent bursts, and the numbers admitted are exactly the
limits: requests per minute, tokens per minute, and concurrent requests.
Also: refused requests cost the cluster nothing; token reservations are
reconciled with the gate's usage reports (plain and streamed); a replica that
dies does not hold its concurrency slots for longer than the lease; and
while Redis is unreachable the replicas fail closed (the default) or, if
configured, open.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx2
import pytest

from tests.conftest import Cluster, free_port
from tests.services.redis import RedisServer
from tests.services.serve import Served, api_keys_toml, local_cluster_toml, start_serve

pytestmark = pytest.mark.integration

LEASE_TTL = 3

# One user (and API key) per scenario, so that scenarios do not share budgets.
KEYS = {
    "sk-quota-rpm-" + "a" * 20: ("rpm-user", "rpm-key"),
    "sk-quota-tok-" + "b" * 20: ("tok-user", "tok-key"),
    "sk-quota-conc-" + "c" * 20: ("conc-user", "conc-key"),
    "sk-quota-rec-" + "d" * 20: ("rec-user", "rec-key"),
    "sk-quota-crash-" + "e" * 20: ("crash-user", "crash-key"),
    "sk-quota-down-" + "f" * 20: ("down-user", "down-key"),
}
RPM, TOK, CONC, REC, CRASH, DOWN = list(KEYS)

POLICY = """
reserve_tokens = 50

[users."rpm-user"]
requests_per_minute = 10

[users."tok-user"]
tokens_per_minute = 1000

[users."conc-user"]
concurrent_requests = 3

[users."rec-user"]
tokens_per_minute = 100000
tokens_per_day = 1000000

[users."crash-user"]
concurrent_requests = 2

[users."down-user"]
requests_per_minute = 1000
"""


@dataclass
class Replicas:
    redis: RedisServer
    cluster: Cluster
    a: Served
    b: Served
    directory: Path

    def start(self, name: str, extra: str = "") -> Served:
        return start_serve(self.directory, name, free_port(), self.config(name, extra), server="max_output_tokens = 50\n")

    def config(self, name: str, extra: str = "") -> str:
        return "\n".join(
            [
                local_cluster_toml(self.cluster.gate_argv()),
                api_keys_toml(KEYS),
                "[quotas]",
                'policy = "quotas.toml"',
                f'storage = "{self.redis.url}"',
                f"lease_ttl = {LEASE_TTL}",
                "storage_timeout = 2",
                extra,
                "[accounting]",
                f'path = "{name}-usage.db"',
                "",
            ]
        )


@pytest.fixture(scope="module")
def replicas(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replicas]:
    redis = RedisServer()
    directory = tmp_path_factory.mktemp("replicas")
    (directory / "quotas.toml").write_text(POLICY)
    started: list[Served] = []
    try:
        setup = Replicas(redis, cluster, None, None, directory)  # type: ignore[arg-type]
        setup.a = setup.start("a")
        started.append(setup.a)
        setup.b = setup.start("b")
        started.append(setup.b)
        yield setup
    finally:
        for served in started:
            served.stop()
        redis.close()


@pytest.fixture(autouse=True)
def redis_up(replicas: Replicas) -> None:
    if replicas.redis.cli("PING") != "PONG":
        replicas.redis.start()


def _chat(max_tokens: int, stream: bool = False) -> dict[str, object]:
    return {
        "model": "standin-chat",
        "messages": [{"role": "user", "content": "count the sheep"}],
        "max_tokens": max_tokens,
        "stream": stream,
    }


async def _burst(replicas: Replicas, key: str, count: int, body: dict[str, object]) -> list[httpx2.Response]:
    """``count`` requests at once, alternating between the two replicas."""
    targets = [replicas.a.url, replicas.b.url]
    async with httpx2.AsyncClient(timeout=60, limits=httpx2.Limits(max_connections=count)) as client:
        return await asyncio.gather(
            *(
                client.post(f"{targets[i % 2]}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"})
                for i in range(count)
            )
        )


def _explain(responses: list[httpx2.Response]) -> list[tuple[int, str]]:
    """What each answer was, for a failing assertion's message."""
    return [(r.status_code, r.json().get("error", {}).get("code", "") if r.status_code != 200 else "") for r in responses]


def _statuses(responses: list[httpx2.Response]) -> dict[int, int]:
    counts: dict[int, int] = {}
    for response in responses:
        counts[response.status_code] = counts.get(response.status_code, 0) + 1
    return counts


def test_requests_per_minute_hold_across_replicas_and_refusals_cost_the_cluster_nothing(replicas: Replicas) -> None:
    served_before = replicas.cluster.chat.stats()["served"]
    responses = asyncio.run(_burst(replicas, RPM, 40, _chat(2)))
    assert _statuses(responses) == {200: 10, 429: 30}, _explain(responses)  # not 20: the limit is not multiplied by the replicas
    refused = next(r for r in responses if r.status_code == 429)
    assert refused.json() == {
        "error": {
            "message": "Rate limit reached for requests per minute.",
            "type": "rate_limit_error",
            "param": None,
            "code": "requests_per_minute_exceeded",
        }
    }
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    admitted = next(r for r in responses if r.status_code == 200)
    assert admitted.headers["x-ratelimit-limit-requests"] == "10"
    assert 0 <= int(admitted.headers["x-ratelimit-remaining-requests"]) < 10
    assert admitted.headers["x-ratelimit-reset-requests"].endswith("s")
    # The 30 refused requests never reached the cluster.
    assert replicas.cluster.chat.stats()["served"] - served_before == 10


def test_tokens_per_minute_hold_across_replicas(replicas: Replicas) -> None:
    # 1000 tokens per minute, 200 reserved per request: 5 fit while none has finished.  One that
    # finishes first is charged its real usage, more than 200 (its prompt counts too), so then
    # only 4 fit.  Never more: a limit multiplied by the two replicas would admit 10.
    responses = asyncio.run(_burst(replicas, TOK, 30, _chat(200)))
    statuses = _statuses(responses)
    assert statuses in ({200: 5, 429: 25}, {200: 4, 429: 26}), _explain(responses)
    codes = {r.json()["error"]["code"] for r in responses if r.status_code == 429}
    assert codes == {"tokens_per_minute_exceeded"}
    admitted = [r for r in responses if r.status_code == 200]
    assert all(r.headers["x-ratelimit-limit-tokens"] == "1000" for r in admitted)


def test_concurrent_requests_hold_across_replicas(replicas: Replicas) -> None:
    async def scenario() -> None:
        # Long streams (about 2 s each) hold their slots while the others arrive.
        responses = await _burst(replicas, CONC, 12, _chat(400, stream=True))
        assert _statuses(responses) == {200: 3, 429: 9}, _explain(responses)
        refused = [r for r in responses if r.status_code == 429]
        assert {r.json()["error"]["code"] for r in refused} == {"concurrent_requests_exceeded"}
        # All finished: the slots are free again, on both replicas.
        again = await _burst(replicas, CONC, 3, _chat(2))
        assert _statuses(again) == {200: 3}

    asyncio.run(scenario())


def _redis_tokens_used(replicas: Replicas, user: str) -> dict[str, int]:
    """Tokens counted against ``user`` right now, read from Redis through the quota code itself."""
    import tomllib

    from appliance.auth.base import Principal
    from appliance.quotas import Quotas, parse_policy
    from appliance.quotas._redis import RedisBackend

    async def read() -> dict[str, int]:
        quotas = Quotas(parse_policy(tomllib.loads(POLICY)), RedisBackend(replicas.redis.url))
        try:
            return {
                str(r["limit"]): int(r["amount"]) - int(r["remaining"])  # type: ignore[call-overload]
                for r in await quotas.snapshot(Principal(user, "rec-key"))
            }
        finally:
            await quotas.aclose()

    return asyncio.run(read())


def test_reservations_are_reconciled_with_the_gates_usage(replicas: Replicas) -> None:
    headers = {"Authorization": f"Bearer {REC}"}
    with httpx2.Client(timeout=60) as client:
        # Plain: 300 reserved, then charged the real usage.
        plain = client.post(f"{replicas.a.url}/v1/chat/completions", json=_chat(300), headers=headers)
        assert plain.status_code == 200
        assert plain.headers["x-ratelimit-remaining-tokens"] == str(100000 - 300)  # the reservation, at admission
        usage = plain.json()["usage"]
        spent = usage["prompt_tokens"] + usage["completion_tokens"]
        assert _redis_tokens_used(replicas, "rec-user") == {"tokens_per_minute": spent, "tokens_per_day": spent}
        # Streamed, on the other replica: the usage travels as the gate's metadata.
        with client.stream(
            "POST", f"{replicas.b.url}/v1/chat/completions", json=_chat(40, stream=True), headers=headers
        ) as stream:
            assert stream.status_code == 200
            assert stream.headers["x-ratelimit-remaining-tokens"] == str(100000 - spent - 40)
            text = "".join(stream.iter_text())
        assert "[DONE]" in text
        streamed = 40 + usage["prompt_tokens"]  # same prompt; the stand-in writes exactly max_tokens
        assert _redis_tokens_used(replicas, "rec-user") == {
            "tokens_per_minute": spent + streamed,
            "tokens_per_day": spent + streamed,
        }
        # Without max_tokens: the output ceiling (50, set on the forwarded body) is reserved, then the real
        # usage charged.
        body = _chat(0)
        del body["max_tokens"]
        implicit = client.post(f"{replicas.a.url}/v1/chat/completions", json=body, headers=headers)
        assert implicit.status_code == 200
        assert implicit.headers["x-ratelimit-remaining-tokens"] == str(100000 - spent - streamed - 50)
        more = implicit.json()["usage"]["total_tokens"]
    total = spent + streamed + more
    assert _redis_tokens_used(replicas, "rec-user") == {"tokens_per_minute": total, "tokens_per_day": total}
    # Accounting: one row per request, with the same numbers.
    import sqlite3

    rows = []
    for name in ("a", "b"):
        with sqlite3.connect(replicas.directory / f"{name}-usage.db") as db:
            rows += db.execute(
                "SELECT route, status, prompt_tokens + completion_tokens, first_token_ms IS NOT NULL "
                "FROM usage WHERE user_id = 'rec-user' ORDER BY time"
            ).fetchall()
    assert sorted(rows) == sorted([("chat", 200, spent, 0), ("chat", 200, streamed, 1), ("chat", 200, more, 0)])


def test_a_crashed_replica_does_not_hold_its_slots(replicas: Replicas) -> None:
    doomed = replicas.start("doomed")
    try:
        with httpx2.Client(timeout=60) as client:
            headers = {"Authorization": f"Bearer {CRASH}"}
            # Two long streams hold both slots, through the replica about to die.
            streams = [
                client.stream("POST", f"{doomed.url}/v1/chat/completions", json=_chat(3000, stream=True), headers=headers)
                for _ in range(2)
            ]
            opened = [s.__enter__() for s in streams]
            assert [r.status_code for r in opened] == [200, 200]
            full = client.post(f"{replicas.a.url}/v1/chat/completions", json=_chat(2), headers=headers)
            assert full.status_code == 429 and full.json()["error"]["code"] == "concurrent_requests_exceeded"
            doomed.kill()  # no goodbye: its leases stay in Redis until they expire
            for stream in streams:
                try:
                    stream.__exit__(None, None, None)
                except httpx2.HTTPError:
                    pass
            started = time.monotonic()
            while True:
                answer = client.post(f"{replicas.a.url}/v1/chat/completions", json=_chat(2), headers=headers)
                if answer.status_code == 200:
                    break
                assert answer.status_code == 429
                assert time.monotonic() - started < LEASE_TTL + 3, "the dead replica's slots were not freed"
                time.sleep(0.2)
            assert time.monotonic() - started >= LEASE_TTL - 1.5  # not before the leases could expire
    finally:
        doomed.stop()


def test_redis_unreachable_fails_closed_by_default(replicas: Replicas) -> None:
    headers = {"Authorization": f"Bearer {DOWN}"}
    with httpx2.Client(timeout=30) as client:
        assert client.post(f"{replicas.a.url}/v1/chat/completions", json=_chat(2), headers=headers).status_code == 200
        served_before = replicas.cluster.chat.stats()["served"]
        replicas.redis.stop()
        for replica in (replicas.a, replicas.b):
            started = time.monotonic()
            refused = client.post(f"{replica.url}/v1/chat/completions", json=_chat(2), headers=headers)
            assert refused.status_code == 503 and refused.json()["error"]["code"] == "quota_unavailable"
            assert refused.headers["retry-after"] == "5"
            assert time.monotonic() - started < 2
        assert replicas.cluster.chat.stats()["served"] == served_before  # nothing reached the cluster
        replicas.redis.start()
        deadline = time.monotonic() + 10
        while client.post(f"{replicas.a.url}/v1/chat/completions", json=_chat(2), headers=headers).status_code != 200:
            assert time.monotonic() < deadline, "no recovery after Redis came back"
            time.sleep(0.2)
    events = [json.loads(line).get("event") for line in replicas.a.log_lines() if line.startswith("{")]
    assert "quota_storage_failed" in events


def test_redis_unreachable_fails_open_when_configured(replicas: Replicas) -> None:
    lenient = replicas.start("lenient", 'on_storage_error = "unsafe-allow"')
    try:
        headers = {"Authorization": f"Bearer {DOWN}"}
        with httpx2.Client(timeout=30) as client:
            replicas.redis.stop()
            for _ in range(3):
                answer = client.post(f"{lenient.url}/v1/chat/completions", json=_chat(2), headers=headers)
                assert answer.status_code == 200
                assert "x-ratelimit-limit-requests" not in answer.headers  # unmetered: nothing to report
            # The strict replica beside it still refuses.
            assert client.post(f"{replicas.a.url}/v1/chat/completions", json=_chat(2), headers=headers).status_code == 503
    finally:
        lenient.stop()
    events = [json.loads(line).get("event") for line in lenient.log_lines() if line.startswith("{")]
    assert events.count("unsafe_unmetered_admission") == 3
