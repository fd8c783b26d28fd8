"""Authlib's OAuth 2 client (a real RP library) against a live idhub server.

Discovery, code + PKCE through the real login pages, refresh, client credentials with both secret
methods, introspection and revocation, all driven by ``authlib.integrations.httpx_client.OAuth2Client``.
"""

from __future__ import annotations

import warnings
from typing import Any

import httpx
import pytest

from tests.conftest import Env
from tests.flows import follow_to_client, pkce_pair

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from authlib.integrations.httpx_client import OAuth2Client

REDIRECT_URI = "https://rp.example/cb"


def _metadata(live: Env, slug: str) -> dict[str, Any]:
    response = httpx.get(f"{live.base_url}/tenants/{slug}/.well-known/openid-configuration", timeout=10)
    assert response.status_code == 200
    metadata: dict[str, Any] = response.json()
    return metadata


@pytest.fixture
def tenant_meta(live: Env) -> tuple[Any, dict[str, Any]]:
    tenant = live.tenant()
    return tenant, _metadata(live, tenant.slug)


@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post"])
def test_authlib_rp_client_credentials_introspect_revoke(
    live: Env, tenant_meta: tuple[Any, dict[str, Any]], method: str
) -> None:
    tenant, meta = tenant_meta
    assert meta["issuer"] == tenant.issuer and meta["token_endpoint"] == f"{tenant.issuer}/token"
    client_id, secret = live.oauth_client(tenant, scope="api read", token_endpoint_auth_method=method)
    with OAuth2Client(
        client_id,
        secret,
        token_endpoint_auth_method=method,
        revocation_endpoint_auth_method=method,
        scope="api",
        timeout=10,
    ) as rp:
        token = rp.fetch_token(meta["token_endpoint"], grant_type="client_credentials")
        assert token["token_type"] == "Bearer" and token["scope"] == "api"
        info = rp.introspect_token(meta["introspection_endpoint"], token=token["access_token"]).json()
        assert info["active"] is True and info["client_id"] == client_id
        assert rp.revoke_token(meta["revocation_endpoint"], token=token["access_token"]).status_code == 200
        info = rp.introspect_token(meta["introspection_endpoint"], token=token["access_token"]).json()
        assert info == {"active": False}


def test_authlib_rp_wrong_secret_refused(live: Env, tenant_meta: tuple[Any, dict[str, Any]]) -> None:
    tenant, meta = tenant_meta
    client_id, _ = live.oauth_client(tenant, scope="api")
    with OAuth2Client(client_id, "wrong-secret", timeout=10) as rp:
        with pytest.raises(Exception) as excinfo:
            rp.fetch_token(meta["token_endpoint"], grant_type="client_credentials")
    assert "invalid_client" in str(excinfo.value)


def test_authlib_rp_code_pkce_refresh_revoke(
    live: Env, http: httpx.Client, tenant_meta: tuple[Any, dict[str, Any]]
) -> None:
    tenant, meta = tenant_meta
    client_id, secret = live.oauth_client(tenant, redirect_uris=[REDIRECT_URI], first_party=True)
    live.user(tenant, username="carol", password="correct horse battery")
    verifier, _ = pkce_pair()
    with OAuth2Client(
        client_id,
        secret,
        scope="openid profile email",
        redirect_uri=REDIRECT_URI,
        code_challenge_method="S256",
        timeout=10,
    ) as rp:
        uri, state = rp.create_authorization_url(meta["authorization_endpoint"], code_verifier=verifier, nonce="n-42")
        result = follow_to_client(
            http, http.get(uri), tenant_slug=tenant.slug, username="carol", password="correct horse battery"
        )
        assert result["state"] == state and result["iss"] == tenant.issuer
        token = rp.fetch_token(meta["token_endpoint"], code=result["code"], code_verifier=verifier)
        assert token["id_token"] and token["refresh_token"] and token["token_type"] == "Bearer"

        userinfo = rp.get(meta["userinfo_endpoint"]).json()
        assert userinfo["preferred_username"] == "carol"

        refreshed = rp.refresh_token(meta["token_endpoint"], refresh_token=token["refresh_token"])
        assert refreshed["refresh_token"] != token["refresh_token"]
        # The rotated token is dead, and reusing it kills the new one too (RFC 9700 §4.14.2).
        with pytest.raises(Exception) as excinfo:
            rp.refresh_token(meta["token_endpoint"], refresh_token=token["refresh_token"])
        assert "invalid_grant" in str(excinfo.value)
        info = rp.introspect_token(meta["introspection_endpoint"], token=refreshed["refresh_token"]).json()
        assert info == {"active": False}


def test_authlib_rp_refresh_then_revoke_refresh_token(
    live: Env, http: httpx.Client, tenant_meta: tuple[Any, dict[str, Any]]
) -> None:
    tenant, meta = tenant_meta
    client_id, secret = live.oauth_client(tenant, redirect_uris=[REDIRECT_URI], first_party=True)
    live.user(tenant, username="dave", password="correct horse battery")
    verifier, _ = pkce_pair()
    with OAuth2Client(
        client_id, secret, scope="openid", redirect_uri=REDIRECT_URI, code_challenge_method="S256", timeout=10
    ) as rp:
        uri, _state = rp.create_authorization_url(meta["authorization_endpoint"], code_verifier=verifier, nonce="n")
        result = follow_to_client(
            http, http.get(uri), tenant_slug=tenant.slug, username="dave", password="correct horse battery"
        )
        token = rp.fetch_token(meta["token_endpoint"], code=result["code"], code_verifier=verifier)
        refreshed = rp.refresh_token(meta["token_endpoint"], refresh_token=token["refresh_token"])
        revoke = rp.revoke_token(
            meta["revocation_endpoint"], token=refreshed["refresh_token"], token_type_hint="refresh_token"
        )
        assert revoke.status_code == 200
        info = rp.introspect_token(meta["introspection_endpoint"], token=refreshed["access_token"]).json()
        assert info == {"active": False}
