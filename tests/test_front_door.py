"""The front door: every answer carries a request id; the hot back-channel POSTs skip the framework.

The token and introspection endpoints are served by :class:`idhub.routing.FrontDoor` directly, so what
the framework's middleware would add (the id, ``nosniff``, the metrics label) is checked on them here,
beside an answer the framework serves.
"""

from __future__ import annotations

import re

from idhub.routing import new_request_id
from tests.conftest import Env
from tests.oidc.grants.helpers import basic, post

ID = re.compile(r"[0-9a-f]{16}")


def test_request_ids_are_made_fresh_when_missing_or_malformed(env: Env) -> None:
    tenant = env.tenant()
    client_id, secret = env.oauth_client(tenant, grant_types=["client_credentials"], scope="api")
    auth = basic(client_id, secret or "")
    made = [post(env, tenant, "token", {"grant_type": "client_credentials"}, auth) for _ in range(3)]
    malformed = post(env, tenant, "token", {"grant_type": "client_credentials"}, {**auth, "x-request-id": "bad id!"})
    ids = [response.headers["x-request-id"] for response in (*made, malformed)]
    assert all(response.status_code == 200 for response in (*made, malformed))
    assert all(ID.fullmatch(rid) for rid in ids) and len(set(ids)) == 4
    assert all(response.headers["x-content-type-options"] == "nosniff" for response in made)
    assert len({new_request_id() for _ in range(10_000)}) == 10_000


def test_fast_path_and_framework_answers_alike_carry_the_callers_id(env: Env) -> None:
    tenant = env.tenant()
    rid = "front-door-0001"
    fast = post(env, tenant, "token", {"grant_type": "client_credentials"}, {"x-request-id": rid})  # no client
    routed = env.client.get(f"/tenants/{tenant.slug}/.well-known/openid-configuration", headers={"x-request-id": rid})
    unrouted = env.client.get("/no/such/path", headers={"x-request-id": rid})
    assert (fast.status_code, routed.status_code, unrouted.status_code) == (401, 200, 404)
    assert fast.json()["error"] == "invalid_client" and fast.headers["cache-control"] == "no-store"
    assert [r.headers["x-request-id"] for r in (fast, routed, unrouted)] == [rid] * 3
    assert fast.headers["x-content-type-options"] == "nosniff"


def test_fast_path_requests_are_counted_under_their_documented_route(env: Env) -> None:
    tenant = env.tenant()
    post(env, tenant, "introspect", {"token": "x"})  # unauthenticated: 401, still counted
    metrics = env.client.get("/metrics").text
    assert re.search(r'route="/tenants/\{tenant\}/introspect".*status="401"', metrics), metrics[:2000]
