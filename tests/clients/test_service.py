"""create_client runs the one URI validator on every URI it registers, and derives the application type."""

from __future__ import annotations

from typing import Any

import pytest

from idhub.errors import Invalid
from tests.conftest import Env


def _client_row(env: Env, tenant: Any, client_id: str) -> Any:
    async def work() -> Any:
        return await env.ctx.clients.get(tenant.id, client_id)

    return env.run(work)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"redirect_uris": ["http://app.example/cb"]},
        {"redirect_uris": ["https://app.example/cb#"]},
        {"redirect_uris": ["https://*.app.example/cb"]},
        {"redirect_uris": ["https://user@app.example/cb"]},
        {"redirect_uris": ["https://app.example\\cb"]},
        {"redirect_uris": ["https://app.example/cb\r\nx"]},
        {"redirect_uris": ["blob:https://app.example/x"]},
        {"redirect_uris": ["about:blank"]},
        {"redirect_uris": ["ftp://app.example/cb"]},
        {"redirect_uris": ["http://localhost:3000/cb"], "public": True},
        {"redirect_uris": ["http://127.0.0.1/cb"], "application_type": "web"},
        {"redirect_uris": ["https://app.example/cb"], "post_logout_redirect_uris": ["http://app.example/bye"]},
        {"redirect_uris": ["https://app.example/cb"], "post_logout_redirect_uris": ["https://app.example/bye#"]},
        {"redirect_uris": ["https://app.example/cb"], "backchannel_logout_uri": "http://app.example/logout"},
        {"redirect_uris": ["https://app.example/cb"], "backchannel_logout_uri": "https://10.0.0.5/logout"},
        {"redirect_uris": ["https://app.example/cb"], "backchannel_logout_uri": "https://localhost/logout"},
    ],
)
def test_create_client_bad_uri_invalid(env: Env, kwargs: dict[str, Any]) -> None:
    tenant = env.tenant()
    with pytest.raises(Invalid):
        env.oauth_client(tenant, **kwargs)


def test_create_client_native_redirects_make_native_app(env: Env) -> None:
    tenant = env.tenant()
    loopback, _ = env.oauth_client(tenant, redirect_uris=["http://127.0.0.1/cb"], public=True)
    scheme, _ = env.oauth_client(tenant, redirect_uris=["com.example.app:/callback"], public=True)
    web, _ = env.oauth_client(tenant, redirect_uris=["https://app.example/cb"], public=True)
    assert _client_row(env, tenant, loopback).application_type == "native"
    assert _client_row(env, tenant, scheme).application_type == "native"
    assert _client_row(env, tenant, web).application_type == "web"


def test_create_client_backchannel_private_only_when_allowed(env: Env) -> None:
    tenant = env.tenant()
    uri = "http://127.0.0.1:9/backchannel"
    with pytest.raises(Invalid, match="back-channel logout URI"):
        env.oauth_client(tenant, redirect_uris=["https://app.example/cb"], backchannel_logout_uri=uri)
    client_id, _ = env.oauth_client(
        tenant, redirect_uris=["https://app.example/cb"], backchannel_logout_uri=uri, allow_private_backchannel=True
    )
    assert _client_row(env, tenant, client_id).backchannel_logout_uri == uri


def test_create_client_good_uris_stored_exactly(env: Env) -> None:
    tenant = env.tenant()
    client_id, _ = env.oauth_client(
        tenant,
        redirect_uris=["https://app.example/cb?x=1", "https://app.example:8443/cb"],
        post_logout_redirect_uris=["https://app.example/bye"],
        backchannel_logout_uri="https://app.example/backchannel",
    )
    info = _client_row(env, tenant, client_id)
    assert info.redirect_uris == ("https://app.example/cb?x=1", "https://app.example:8443/cb")
    assert info.post_logout_redirect_uris == ("https://app.example/bye",)
