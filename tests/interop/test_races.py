"""Parallel redemption races over two real server processes on one PostgreSQL (RFC 6749 §4.1.2, §6; RFC 9700 §4.14).

Two ``idhub serve`` processes share a private database. Each round sends ``RACERS`` requests that redeem
the same single-use thing (one refresh token, one authorization code) at once, alternating between the
two processes. Exactly one must win (200) and every other must get ``400 invalid_grant``; no 5xx, ever
(a deadlock or serialization failure is retried, not a ``server_error``).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.flows import follow_to_client, pkce_pair
from tests.interop.live_servers import ServerProcess, idhub_cli, private_database, server_env

ROUNDS = 50
RACERS = 20
TENANT = "races"
REDIRECT_URI = "http://127.0.0.1:9/cb"
PASSWORD = "race-password-0123456789"


@dataclass
class Cluster:
    """Two server processes on one database, a registered client and a signed-in browser."""

    servers: list[ServerProcess]
    client_id: str
    secret: str
    browser: httpx.Client

    def token_url(self, index: int) -> str:
        """Return the token endpoint of the ``index``-th request's server (alternating)."""
        return f"{self.servers[index % len(self.servers)].base_url}/tenants/{TENANT}/token"

    def new_code(self) -> tuple[str, str]:
        """Return a fresh authorization code and its PKCE verifier (the browser's SSO session signs in once)."""
        verifier, challenge = pkce_pair()
        params = {
            "response_type": "code",
            "client_id": self.client_id,
            "redirect_uri": REDIRECT_URI,
            "scope": "openid profile",
            "state": "s",
            "nonce": "n",
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        }
        response = self.browser.get(f"/tenants/{TENANT}/authorize", params=params)
        query = follow_to_client(self.browser, response, tenant_slug=TENANT, username="alice", password=PASSWORD)
        assert "code" in query, query
        return query["code"], verifier


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Set up a tenant, a confidential client and a user through the CLI; run two servers on them."""
    root: Path = tmp_path_factory.mktemp("idhub-races")
    with private_database("races") as database_url:
        servers = [ServerProcess({}, root, f"server-{i}") for i in range(2)]
        env = server_env(database_url, root / "data", servers[0].base_url)
        idhub_cli(env, "migrate")
        idhub_cli(env, "init", "--tenant", TENANT)
        client = idhub_cli(
            env,
            "client", "create", "--tenant", TENANT, "--name", "racer", "--redirect-uri", REDIRECT_URI,
            "--grant-type", "authorization_code", "--grant-type", "refresh_token",
            "--scope", "openid profile offline_access", "--first-party", "--json",
        )  # fmt: skip
        idhub_cli(env, "user", "create", "--tenant", TENANT, "--username", "alice", "--password-stdin", "--json",
                  stdin=PASSWORD)  # fmt: skip
        for server in servers:
            server.env = env
        try:
            for server in servers:
                server.start()
            with httpx.Client(base_url=servers[0].base_url, timeout=30, follow_redirects=False) as browser:
                yield Cluster(servers, client["client_id"], client["client_secret"], browser)
        finally:
            for server in servers:
                server.stop()


async def _race(http: httpx.AsyncClient, cluster: Cluster, form: dict[str, str]) -> list[httpx.Response]:
    auth = (cluster.client_id, cluster.secret)
    return list(await asyncio.gather(*(http.post(cluster.token_url(i), data=form, auth=auth) for i in range(RACERS))))


def _outcome(responses: list[httpx.Response]) -> tuple[int, list[str]]:
    """Return the number of winners and a description of every answer that is neither a win nor invalid_grant."""
    winners = 0
    wrong: list[str] = []
    for response in responses:
        if response.status_code == 200:
            winners += 1
        elif response.status_code != 400 or response.json().get("error") != "invalid_grant":
            wrong.append(f"{response.status_code} {response.text[:120]}")
    return winners, wrong


def _run_rounds(cluster: Cluster, prepare: Any) -> tuple[Counter[str], list[str], float]:
    """Run ``ROUNDS`` races; ``prepare()`` returns the token request form of a round (made before the race)."""
    failures: list[str] = []
    statuses: Counter[str] = Counter()

    async def rounds() -> float:
        limits = httpx.Limits(max_connections=RACERS * 2, max_keepalive_connections=RACERS * 2)
        async with httpx.AsyncClient(timeout=60, limits=limits) as http:
            raced = 0.0
            for round_no in range(ROUNDS):
                form = prepare(http)
                if asyncio.iscoroutine(form):
                    form = await form
                started = time.perf_counter()
                responses = await _race(http, cluster, form)
                raced += time.perf_counter() - started
                statuses.update(str(response.status_code) for response in responses)
                winners, wrong = _outcome(responses)
                if winners != 1 or wrong:
                    failures.append(f"round {round_no}: {winners} winners; unexpected: {wrong[:3]}")
            return raced

    raced = asyncio.run(rounds())
    return statuses, failures, raced


def test_races_parallel_refresh_one_winner_rest_invalid_grant(cluster: Cluster) -> None:
    """RFC 9700 §4.14.2: one rotation wins; every parallel presentation of the rotated token is reuse."""

    async def prepare(http: httpx.AsyncClient) -> dict[str, str]:
        code, verifier = cluster.new_code()
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT_URI,
                "code_verifier": verifier}  # fmt: skip
        response = await http.post(cluster.token_url(0), data=form, auth=(cluster.client_id, cluster.secret))
        assert response.status_code == 200, response.text
        return {"grant_type": "refresh_token", "refresh_token": response.json()["refresh_token"]}

    statuses, failures, raced = _run_rounds(cluster, prepare)
    assert not failures, f"{len(failures)} of {ROUNDS} rounds failed ({dict(statuses)}): {failures[:5]}"
    assert statuses == Counter({"200": ROUNDS, "400": ROUNDS * (RACERS - 1)})
    print(f"\nrefresh races: {ROUNDS} rounds x {RACERS} requests in {raced:.1f} s")


def test_races_parallel_code_redemption_one_winner_rest_invalid_grant(cluster: Cluster) -> None:
    """RFC 6749 §4.1.2: a code is used once; every parallel redemption but one is ``invalid_grant``."""

    def prepare(http: httpx.AsyncClient) -> dict[str, str]:
        code, verifier = cluster.new_code()
        return {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT_URI,
                "code_verifier": verifier}  # fmt: skip

    statuses, failures, raced = _run_rounds(cluster, prepare)
    assert not failures, f"{len(failures)} of {ROUNDS} rounds failed ({dict(statuses)}): {failures[:5]}"
    assert statuses == Counter({"200": ROUNDS, "400": ROUNDS * (RACERS - 1)})
    print(f"\ncode races: {ROUNDS} rounds x {RACERS} requests in {raced:.1f} s")
