"""The live server fixture serves real HTTP."""

import httpx

from tests.conftest import Env


def test_live_server_discovery_over_http_ok(live: Env, http: httpx.Client) -> None:
    tenant = live.tenant()
    meta = http.get(f"/tenants/{tenant.slug}/.well-known/openid-configuration").json()
    assert meta["issuer"] == f"{live.base_url}/tenants/{tenant.slug}"
