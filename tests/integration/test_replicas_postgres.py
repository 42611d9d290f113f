"""Two appliance replicas behind a real HAProxy, sharing one PostgreSQL and one Redis.

Everything is the real thing: PostgreSQL 15 (``initdb``, ``pg_ctl``), Redis,
HAProxy with the operator guide's configuration (:mod:`tests.services.haproxy`),
an OpenID provider process, two ``sluice serve`` replicas, and the gate over
pipes.  What an operator relies on (docs/operator-scale.md, "Consistency"):

* a key made on one replica works on all; revoked on another, it is refused
  on the first at once (nothing is cached); a group taken away likewise;
* a sign-in started on one replica completes on another, and the session
  is valid on every replica;
* quotas are exact through the load balancer;
* ``kill -9`` of a replica under load fails only what was in flight on it,
  and every answered request has exactly one accounting row;
* PostgreSQL away for 10 s under load: authentication fails closed (503),
  requests answered meanwhile keep their rows (the replicas' journals), and
  no row is written twice.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import httpx2
import pytest

from tests.conftest import ROOT, Cluster, free_port
from tests.services.haproxy import HAProxy
from tests.services.oidc import OidcProvider, start_oidc_provider
from tests.services.postgres import PostgresServer
from tests.services.redis import RedisServer
from tests.services.serve import Served, local_cluster_toml, start_serve

pytestmark = pytest.mark.integration

WEB_CLIENT = "sluice-web"
ALICE = {"sub": "alice", "email": "alice@example.org", "name": "Alice Example", "groups": ["staff"]}
ACCESS = '[groups.staff]\nmodels = ["standin-*"]\n'
QUOTAS = '[users."rpm-user"]\nrequests_per_minute = 10\n'
# The stated bound for a revocation or a group change to hold on every replica (seconds).
CONSISTENCY_BOUND = 1.0


@dataclass
class Site:
    directory: Path
    cluster: Cluster
    postgres: PostgresServer
    redis: RedisServer
    provider: OidcProvider
    proxy_port: int
    replicas: dict[str, Served] = field(default_factory=dict)
    proxy: HAProxy | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.proxy_port}"

    def body(self, name: str) -> str:
        return "\n".join(
            [
                local_cluster_toml(self.cluster.gate_argv()),
                "[auth]",
                'database_dsn_file = "db.dsn"',
                f'public_url = "{self.url}"',
                'session_secret_file = "session.key"',
                "cookie_secure = false",
                "",
                "[oidc]",
                f'issuer = "{self.provider.issuer}"',
                f'client_id = "{WEB_CLIENT}"',
                'client_secret_file = "oidc-secret"',
                "leeway = 0",
                "",
                "[access]",
                'policy = "access.toml"',
                "",
                "[quotas]",
                'policy = "quotas.toml"',
                f'storage = "{self.redis.url}"',
                "storage_timeout = 2",
                "",
                "[accounting]",
                'backend = "postgresql"',
                'dsn_file = "db.dsn"',
                f'journal = "{name}-usage.journal"',
                "",
            ]
        )

    def start(self, name: str, port: int | None = None) -> Served:
        served = start_serve(self.directory, name, port or free_port(), self.body(name))
        self.replicas[name] = served
        return served

    def cli(self, *argv: str) -> subprocess.CompletedProcess[str]:
        config = self.directory / "setup.toml"
        if not config.exists():
            config.write_text(self.body("setup"))
        return subprocess.run(
            [sys.executable, "-m", "appliance.cli", *argv, "--config", str(config)],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=60,
            check=False,
        )

    def service_key(self, user: str) -> str:
        made = self.cli("keys", "create", "--user", user, "--name", "load", "--groups", "staff")
        assert made.returncode == 0, made.stderr
        return made.stdout.strip()

    def journals_empty(self) -> bool:
        return not any(p.name.endswith((".journal", ".replaying")) for p in self.directory.iterdir())

    def rows(self) -> dict[str, int]:
        async def read() -> dict[str, int]:
            connection = await asyncpg.connect(self.postgres.dsn())
            try:
                records = await connection.fetch("SELECT request_id, COUNT(*) FROM usage GROUP BY request_id")
                return {r[0]: int(r[1]) for r in records}
            finally:
                await connection.close()

        return asyncio.run(read())


@pytest.fixture(scope="module")
def site(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    directory = tmp_path_factory.mktemp("replicas-pg")
    postgres = PostgresServer()
    redis = RedisServer()
    provider = start_oidc_provider(ALICE)
    setup = Site(directory, cluster, postgres, redis, provider, free_port())
    try:
        for name, text in (
            ("db.dsn", postgres.dsn()),
            ("session.key", base64.b64encode(bytes(range(48))).decode()),
            ("oidc-secret", "client-secret-for-the-test-provider"),
            ("access.toml", ACCESS),
            ("quotas.toml", QUOTAS),
        ):
            (directory / name).write_text(text)
            (directory / name).chmod(0o600)
        upgraded = setup.cli("db", "upgrade")
        assert upgraded.returncode == 0, upgraded.stderr
        a, b = setup.start("a"), setup.start("b")
        setup.proxy = HAProxy(setup.proxy_port, [("a", f"127.0.0.1:{a.port}"), ("b", f"127.0.0.1:{b.port}")])
        setup.proxy.wait_ready()
        yield setup
    finally:
        if setup.proxy is not None:
            setup.proxy.close()
        for served in setup.replicas.values():
            served.stop()
        provider.stop()
        redis.close()
        postgres.close()


def _chat(max_tokens: int, stream: bool = False) -> dict[str, object]:
    return {
        "model": "standin-chat",
        "messages": [{"role": "user", "content": "count the sheep"}],
        "max_tokens": max_tokens,
        "stream": stream,
    }


def _csrf(page: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', page)
    assert match, page
    return match.group(1)


def _sign_in(site: Site, browser: httpx2.Client, start: Served, finish: Served) -> None:
    """Start a sign-in on ``start``; the provider's redirect comes back to ``finish``."""
    response = browser.get(f"{start.url}/account/login")
    assert response.status_code == 302
    with httpx2.Client(timeout=30) as at_provider:
        callback = site.provider.authorize(at_provider, response.headers["location"], "alice")
    parts = urlsplit(callback)
    assert f"{parts.scheme}://{parts.netloc}" == site.url and parts.path == "/account/callback"
    response = browser.get(f"{finish.url}/account/callback?{parts.query}")
    assert response.status_code == 303 and response.headers["location"] == "/account/", response.text


def _call(url: str, key: str) -> httpx2.Response:
    return httpx2.post(f"{url}/v1/chat/completions", json=_chat(2), headers={"Authorization": f"Bearer {key}"}, timeout=30)


def _refused_within(url: str, key: str, status: int) -> float:
    """Seconds from now to the sending of the first request that ``url`` answers ``status`` for ``key``
    (polled; fails past the bound).  Sending times, not answer times: a slow machine is not a stale cache."""
    started = time.monotonic()
    while True:
        sent = time.monotonic() - started
        answer = _call(url, key)
        if answer.status_code == status:
            return sent
        assert sent < CONSISTENCY_BOUND, (answer.status_code, answer.text)
        time.sleep(0.05)


def test_key_login_and_session_hold_on_every_replica(site: Site) -> None:
    a, b = site.replicas["a"], site.replicas["b"]
    with httpx2.Client(timeout=30) as browser:
        _sign_in(site, browser, start=a, finish=b)  # the pending sign-in travels in the signed cookie
        for served in (a, b):
            assert browser.get(f"{served.url}/account/").status_code == 200
        assert browser.get(f"{site.url}/account/").status_code == 200
        page = browser.get(f"{a.url}/account/")
        made = browser.post(f"{a.url}/account/keys", data={"csrf": _csrf(page.text), "name": "laptop", "expires_days": "30"})
        assert made.status_code == 200, made.text
        key = re.search(r'<code id="new-key">(sk-sluice-[a-z2-7]{12}-[A-Za-z0-9_-]{43})</code>', made.text)
        assert key is not None
        key_text = key.group(1)
        for url in (site.url, site.url, site.url, site.url, a.url, b.url):
            assert _call(url, key_text).status_code == 200
        # Revoked on B: refused on A within the bound (at once: nothing is cached).
        page = browser.get(f"{b.url}/account/")
        key_id = key_text.split("-")[2]
        revoked = browser.post(f"{b.url}/account/keys/{key_id}/revoke", data={"csrf": _csrf(page.text)})
        assert revoked.status_code == 303
        assert _refused_within(a.url, key_text, 401) < CONSISTENCY_BOUND
        assert _call(site.url, key_text).status_code == 401
        # A group taken away at the provider: the next sign-in (on B) ends the user's keys' access on A.
        page = browser.get(f"{a.url}/account/")
        made = browser.post(f"{a.url}/account/keys", data={"csrf": _csrf(page.text), "name": "second", "expires_days": "30"})
        second = re.search(r'<code id="new-key">(sk-sluice-[^<]+)</code>', made.text)
        assert second is not None and _call(a.url, second.group(1)).status_code == 200
        site.provider.set_user("alice", {**ALICE, "groups": []})
        try:
            _sign_in(site, browser, start=b, finish=b)
            assert _refused_within(a.url, second.group(1), 404) < CONSISTENCY_BOUND
        finally:
            site.provider.set_user("alice", ALICE)
        # Signed out on A: the session is gone on B too.
        page = browser.get(f"{a.url}/account/")
        assert browser.post(f"{a.url}/account/logout", data={"csrf": _csrf(page.text)}).status_code == 303
        assert browser.get(f"{b.url}/account/").status_code == 302


def test_quotas_exact_through_haproxy_under_a_burst(site: Site) -> None:
    key = site.service_key("rpm-user")

    async def burst() -> list[int]:
        async with httpx2.AsyncClient(timeout=60, limits=httpx2.Limits(max_connections=40)) as client:
            answers = await asyncio.gather(
                *(
                    client.post(f"{site.url}/v1/chat/completions", json=_chat(2), headers={"Authorization": f"Bearer {key}"})
                    for _ in range(40)
                )
            )
        return [a.status_code for a in answers]

    statuses = asyncio.run(burst())
    assert statuses.count(200) == 10 and statuses.count(429) == 30, statuses


@dataclass
class Outcome:
    started: float
    status: int | None  # None: the connection failed
    request_id: str | None = None
    answered: bool = False
    code: str | None = None


async def _load(url: str, key: str, seconds: float, workers: int, max_tokens: int) -> list[Outcome]:
    """``workers`` loops of streamed requests for ``seconds``; what became of each."""
    outcomes: list[Outcome] = []
    deadline = time.monotonic() + seconds

    async def worker(client: httpx2.AsyncClient) -> None:
        while time.monotonic() < deadline:
            outcome = Outcome(time.monotonic(), None)
            outcomes.append(outcome)
            try:
                async with client.stream(
                    "POST",
                    f"{url}/v1/chat/completions",
                    json=_chat(max_tokens, stream=True),
                    headers={"Authorization": f"Bearer {key}"},
                ) as response:
                    outcome.status = response.status_code
                    outcome.request_id = response.headers.get("x-request-id")
                    text = "".join([chunk async for chunk in response.aiter_text()])
                    if response.status_code == 200:
                        outcome.answered = text.rstrip().endswith("data: [DONE]")
                    else:
                        outcome.code = json.loads(text).get("error", {}).get("code")
            except httpx2.HTTPError:
                outcome.answered = False
            if not outcome.answered:
                await asyncio.sleep(0.1)

    async with httpx2.AsyncClient(timeout=60, limits=httpx2.Limits(max_connections=workers)) as client:
        await asyncio.gather(*(worker(client) for _ in range(workers)))
    return outcomes


def _one_row_each(site: Site, outcomes: list[Outcome]) -> None:
    assert wait_until(site.journals_empty, 30), "the journals were not written back"
    rows = site.rows()
    answered = [o.request_id for o in outcomes if o.answered]
    assert answered and all(rows.get(r) == 1 for r in answered), [r for r in answered if rows.get(r) != 1]
    assert all(count == 1 for count in rows.values())  # never two rows for one request


def wait_until(predicate, timeout: float) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return bool(predicate())


@pytest.mark.slow
def test_postgres_away_for_10_seconds_under_load(site: Site) -> None:
    key = site.service_key("outage-user")

    async def scenario() -> tuple[list[Outcome], list[int]]:
        load = asyncio.create_task(_load(site.url, key, seconds=16, workers=4, max_tokens=300))
        await asyncio.sleep(2.5)
        await asyncio.to_thread(site.postgres.stop)
        stopped = time.monotonic()
        probes = []
        async with httpx2.AsyncClient(timeout=30) as client:
            while time.monotonic() - stopped < 10:
                for replica in site.replicas.values():
                    answer = await client.post(
                        f"{replica.url}/v1/chat/completions", json=_chat(2), headers={"Authorization": f"Bearer {key}"}
                    )
                    probes.append(answer.status_code)
                    if answer.status_code == 503:
                        assert answer.json()["error"]["code"] == "identity_unavailable"
                await asyncio.sleep(0.5)
        await asyncio.to_thread(site.postgres.start)
        return await load, probes

    outcomes, probes = asyncio.run(scenario())
    # Authentication fails closed while the identity store is away: 503, never 200 or 401.
    assert probes and set(probes) == {503}, probes
    # Streams in flight when the database went away were answered, and their rows went to the journals.
    journaled = [line for replica in site.replicas.values() for line in replica.log_lines() if "accounting_journaling" in line]
    assert journaled, "no row was journaled: the outage did not overlap an answer"
    assert any(o.answered for o in outcomes if o.started > time.monotonic() - 3)  # served again afterwards
    _one_row_each(site, outcomes)


@pytest.mark.slow
def test_kill_9_of_a_replica_under_load(site: Site) -> None:
    key = site.service_key("crash-user")
    workers = 6

    async def scenario() -> tuple[list[Outcome], float]:
        load = asyncio.create_task(_load(site.url, key, seconds=8, workers=workers, max_tokens=150))
        await asyncio.sleep(2.5)
        killed = time.monotonic()
        site.replicas["b"].kill()
        return await load, killed

    outcomes, killed = asyncio.run(scenario())
    port = site.replicas["b"].port
    try:
        failed = [o for o in outcomes if not o.answered]
        # Only what was in flight on B fails: at most one request per worker, all started before the kill.
        assert len(failed) <= workers and all(o.started < killed + 0.1 for o in failed), failed
        after = [o for o in outcomes if o.started > killed + 0.1]
        assert after and all(o.answered for o in after)
        _one_row_each(site, outcomes)
    finally:
        site.start("b", port)
        assert site.proxy is not None
        site.proxy.wait_ready()
