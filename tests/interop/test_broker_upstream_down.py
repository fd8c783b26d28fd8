"""An upstream that hangs: the person gets an error page within the outbound deadline, nobody else waits.

The stand-in OpenID provider's token endpoint stalls for 30 s. The broker callback must answer with its
503 error page (``Retry-After``) well within 10 s (#14), audit the refusal, start no session, and other
requests to the same idhub process (health, discovery, another tenant's pages) must keep answering fast
while the callback waits.
"""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from idhub.broker.providers import NewProvider
from tests.audit.test_audit import audit_rows, with_action
from tests.broker.standin import StandInProvider, serve
from tests.conftest import TEST_ACTOR, Env
from tests.flows import authorize_params, pkce_pair, query_of

APP_REDIRECT = "https://app.example/cb"


@pytest.fixture
def upstream() -> Iterator[StandInProvider]:
    yield from serve(StandInProvider(token_delay=30.0))


def test_broker_upstream_hanging_gives_an_error_page_in_time_and_starves_nobody(
    live: Env, upstream: StandInProvider
) -> None:
    tenant = live.tenant()
    client_id, _secret = live.oauth_client(
        tenant, redirect_uris=[APP_REDIRECT], grant_types=["authorization_code"], first_party=True
    )
    new = NewProvider(
        alias="slow", type="oidc", issuer=upstream.issuer, client_id=upstream.client_id,
        client_secret=upstream.client_secret, internal=True,
    )  # fmt: skip

    async def create() -> None:
        async with live.ctx.uow(actor=TEST_ACTOR, surface="test") as uow:
            await live.ctx.broker.providers(uow).create(tenant.id, new)

    live.run(create)
    with httpx.Client(base_url=live.base_url, follow_redirects=False, timeout=30) as browser:
        _verifier, challenge = pkce_pair()
        params = authorize_params(
            client_id=client_id, redirect_uri=APP_REDIRECT, code_challenge=challenge, extra_params={"idp_hint": "slow"}
        )
        start = browser.get(f"/tenants/{tenant.slug}/authorize", params=params)  # idp_hint: straight upstream
        sent = query_of(start.headers["location"])  # the authorization request idhub sent upstream
        answer = {"code": upstream.issue_code(sent["nonce"]), "state": sent["state"], "iss": upstream.issuer}

        def callback() -> tuple[float, httpx.Response]:
            began = time.monotonic()
            response = browser.get(f"/tenants/{tenant.slug}/broker/slow/callback", params=answer)
            return time.monotonic() - began, response

        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pending = pool.submit(callback)
            time.sleep(0.5)  # the callback is now waiting on the upstream
            others: list[float] = []
            with httpx.Client(base_url=live.base_url, timeout=5) as other:
                for path in ("/healthz", f"/tenants/{tenant.slug}/.well-known/openid-configuration"):
                    began = time.monotonic()
                    assert other.get(path).status_code == 200
                    others.append(time.monotonic() - began)
            assert not pending.done()
            elapsed, response = pending.result(timeout=15)
    assert max(others) < 1.0, others  # nobody else waited for the upstream
    assert response.status_code == 503 and "text/html" in response.headers["content-type"]
    assert int(response.headers["retry-after"]) > 0
    assert 4.0 < elapsed < 10.0, elapsed  # the 5 s outbound deadline, well inside the 10 s promise
    assert not any(c.name == live.ctx.settings.sessions.cookie_name for c in browser.cookies.jar)
    rows: list[dict[str, Any]] = audit_rows(live, tenant, with_action("signin.broker"))
    assert [row["outcome"] for row in rows if row["action"] == "signin.broker"] == ["failure"]
