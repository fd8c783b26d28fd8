"""Errors in each surface's own format, chosen by the route a request matched, never by its URL.

An unexpected exception behind a SCIM route is a SCIM error body, behind an OAuth endpoint an RFC 6749
§5.2 ``server_error``, behind a page an HTML error page; none of them carries the exception's text, and
the log line that does carries the request id the caller got back. Domain errors map to the same
status on every surface (NotFound 404, Conflict 409, Invalid 400, Unavailable 503 with Retry-After), except
that the OAuth endpoints answer a Conflict with 400 ``invalid_request`` as RFC 6749 §5.2 asks.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, FastAPI, Response
from fastapi.testclient import TestClient

from idhub.errors import Conflict, DomainError, Invalid, NotFound, Unavailable
from idhub.oidc.routing import OAuthRoute
from idhub.scim.routing import ScimRoute
from idhub.scim.service import ScimService
from idhub.tenants.service import TenantInfo
from idhub.web.routing import PageRoute
from tests.conftest import Env
from tests.flows import authorize_params, pkce_pair
from tests.oidc.grants.helpers import REDIRECT_URI, basic, post
from tests.scim.conftest import USER_URN, Scim, provisioning_token

SCIM_ERROR = "urn:ietf:params:scim:api:messages:2.0:Error"
LEAK = "kaboom-internal-state-7f3a"  # the exception's text: in the log, never in an answer


def _boom(*_args: Any, **_kwargs: Any) -> Any:
    raise RuntimeError(LEAK)


def _raiser(exc: Exception) -> Callable[..., Any]:
    async def raise_it(*_args: Any, **_kwargs: Any) -> Any:
        raise exc

    return raise_it


def _rid() -> str:
    return f"err-{uuid.uuid4().hex[:16]}"


def _assert_logged_with_request_id(caplog: pytest.LogCaptureFixture, rid: str, surface: str) -> None:
    """The unexpected error is logged once, with its traceback and the caller's request id."""
    records = [r for r in caplog.records if r.name == "idhub.errors" and r.levelno >= logging.ERROR]
    assert len(records) == 1, [r.getMessage() for r in caplog.records]
    record = records[0]
    assert getattr(record, "request_id", None) == rid
    assert surface in record.getMessage()
    assert record.exc_info is not None and LEAK in str(record.exc_info[1])


def _assert_not_leaked(response: httpx.Response) -> None:
    assert LEAK not in response.text
    assert "RuntimeError" not in response.text and "Traceback" not in response.text


# --- per surface: SCIM ---------------------------------------------------------------------------------
def _scim(env: Env) -> Scim:
    tenant = env.tenant()
    return Scim(env=env, tenant=tenant, token=provisioning_token(env, tenant))


def test_unexpected_error_on_scim_route_is_scim_500(
    env: Env, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    scim = _scim(env)
    user = scim.create_user("ann")
    monkeypatch.setattr(ScimService, "get_user", _raiser(RuntimeError(LEAK)))
    rid = _rid()
    with caplog.at_level(logging.INFO):
        response = scim.request("GET", f"/Users/{user['id']}", headers={"x-request-id": rid})
    assert response.status_code == 500
    assert response.headers["content-type"].startswith("application/scim+json")
    assert response.json() == {"schemas": [SCIM_ERROR], "status": "500"}
    assert response.headers["x-request-id"] == rid
    _assert_not_leaked(response)
    _assert_logged_with_request_id(caplog, rid, "scim")


def test_unexpected_error_in_scim_write_rolls_back(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    scim = _scim(env)
    original = ScimService.user_resource

    async def fail_after_writing(self: ScimService, user: Any) -> Any:
        await original(self, user)
        raise RuntimeError(LEAK)

    monkeypatch.setattr(ScimService, "user_resource", fail_after_writing)
    response = scim.request("POST", "/Users", {"schemas": [USER_URN], "userName": "rolled-back"})
    assert response.status_code == 500 and response.json()["status"] == "500"
    monkeypatch.undo()
    listed = scim.request("GET", "/Users", params={"filter": 'userName eq "rolled-back"'})
    assert listed.json()["totalResults"] == 0


@pytest.mark.parametrize(
    ("error", "status", "scim_type"),
    [
        (NotFound("no such thing"), 404, None),
        (Conflict("already taken"), 409, "uniqueness"),
        (Invalid("not acceptable"), 400, "invalidValue"),
        (Unavailable("database away", retry_after=7), 503, None),
    ],
)
def test_domain_errors_on_scim(
    env: Env, monkeypatch: pytest.MonkeyPatch, error: DomainError, status: int, scim_type: str | None
) -> None:
    scim = _scim(env)
    monkeypatch.setattr(ScimService, "get_user", _raiser(error))
    response = scim.request("GET", f"/Users/{uuid.uuid4()}")
    assert response.status_code == status
    assert response.headers["content-type"].startswith("application/scim+json")
    body = response.json()
    assert body["schemas"] == [SCIM_ERROR] and body["status"] == str(status)
    assert body.get("scimType") == scim_type
    assert body["detail"] == error.detail
    assert (response.headers.get("retry-after") == "7") is (status == 503)


# --- per surface: OAuth endpoints ------------------------------------------------------------------------
def _cc(env: Env) -> tuple[TenantInfo, dict[str, str]]:
    tenant = env.tenant()
    client_id, secret = env.oauth_client(tenant, grant_types=["client_credentials"], scope="api")
    return tenant, basic(client_id, secret or "")


def test_unexpected_error_on_token_endpoint_is_oauth_server_error(
    env: Env, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    tenant, auth = _cc(env)
    monkeypatch.setattr(env.ctx.tokens, "issue_access_token", _raiser(RuntimeError(LEAK)))
    rid = _rid()
    with caplog.at_level(logging.INFO):
        response = post(env, tenant, "token", {"grant_type": "client_credentials"}, {**auth, "x-request-id": rid})
    assert response.status_code == 500
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == {"error": "server_error"}  # RFC 6749 §5.2
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["x-request-id"] == rid
    _assert_not_leaked(response)
    _assert_logged_with_request_id(caplog, rid, "oidc")


def test_unexpected_error_on_routed_oauth_endpoint_is_oauth_server_error(
    env: Env, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """``/revoke`` goes through the router (not the token endpoint's fast path): the same answer."""
    tenant, auth = _cc(env)
    token = post(env, tenant, "token", {"grant_type": "client_credentials"}, auth).json()["access_token"]
    monkeypatch.setattr(env.ctx.tokens, "validate_access_token", _raiser(RuntimeError(LEAK)))
    rid = _rid()
    with caplog.at_level(logging.INFO):
        response = post(
            env, tenant, "revoke", {"token": token, "token_type_hint": "access_token"}, {**auth, "x-request-id": rid}
        )
    assert response.status_code == 500
    assert response.json() == {"error": "server_error"}
    assert response.headers["x-request-id"] == rid
    _assert_not_leaked(response)
    _assert_logged_with_request_id(caplog, rid, "oidc")


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (NotFound("no such thing"), 404, "invalid_request"),
        # RFC 6749 §5.2: protocol errors are 400 unless a rule says otherwise; a 404 only for a tenant or
        # endpoint that does not exist.
        (Conflict("already taken"), 400, "invalid_request"),
        (Invalid("not acceptable"), 400, "invalid_request"),
        (Unavailable("keys away", retry_after=7), 503, "temporarily_unavailable"),
    ],
)
def test_domain_errors_on_token_endpoint(
    env: Env, monkeypatch: pytest.MonkeyPatch, error: DomainError, status: int, code: str
) -> None:
    tenant, auth = _cc(env)
    monkeypatch.setattr(env.ctx.tokens, "issue_access_token", _raiser(error))
    response = post(env, tenant, "token", {"grant_type": "client_credentials"}, auth)
    assert response.status_code == status
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == {"error": code, "error_description": error.detail}
    assert response.headers["cache-control"] == "no-store"
    assert (response.headers.get("retry-after") == "7") is (status == 503)


# --- per surface: pages ----------------------------------------------------------------------------------
def _login_page_url(env: Env) -> str:
    """Start an authorization request and return the login page it leads to."""
    tenant = env.tenant()
    client_id, _ = env.oauth_client(tenant, redirect_uris=[REDIRECT_URI])
    params = authorize_params(client_id=client_id, redirect_uri=REDIRECT_URI, code_challenge=pkce_pair()[1])
    start = env.client.get(f"/tenants/{tenant.slug}/authorize", params=params, follow_redirects=False)
    assert start.status_code == 303, start.text
    location: str = start.headers["location"]
    assert env.client.get(location).status_code == 200
    return location


def test_unexpected_error_on_login_page_is_html_error_page(
    env: Env, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    page = _login_page_url(env)
    monkeypatch.setattr(env.ctx.clients, "get", _raiser(RuntimeError(LEAK)))
    rid = _rid()
    with caplog.at_level(logging.INFO):
        response = env.client.get(page, headers={"x-request-id": rid}, follow_redirects=False)
    assert response.status_code == 500
    assert response.headers["content-type"].startswith("text/html")
    assert "Something went wrong" in response.text
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["x-request-id"] == rid
    _assert_not_leaked(response)
    _assert_logged_with_request_id(caplog, rid, "web")


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (NotFound("no such thing"), 404),
        (Conflict("already taken"), 409),
        (Invalid("not acceptable"), 400),
        (Unavailable("database away", retry_after=7), 503),
    ],
)
def test_domain_errors_on_pages(env: Env, monkeypatch: pytest.MonkeyPatch, error: DomainError, status: int) -> None:
    page = _login_page_url(env)
    monkeypatch.setattr(env.ctx.clients, "get", _raiser(error))
    response = env.client.get(page, follow_redirects=False)
    assert response.status_code == status
    assert response.headers["content-type"].startswith("text/html")
    assert (response.headers.get("retry-after") == "7") is (status == 503)


def test_unknown_tenant_is_404_in_each_surfaces_format(env: Env) -> None:
    """The tenant dependency raises NotFound; each surface renders it its own way."""
    scim = env.client.get("/tenants/no-such-tenant/scim/v2/Users", headers={"authorization": "Bearer x"})
    assert scim.status_code == 404 and scim.json()["schemas"] == [SCIM_ERROR]
    token = env.client.post("/tenants/no-such-tenant/token", data={"grant_type": "client_credentials"})
    assert token.status_code == 404 and token.json()["error"] == "invalid_request"
    page = env.client.get("/tenants/no-such-tenant/authorize", params={"client_id": "x"})
    assert page.status_code == 404 and page.headers["content-type"].startswith("text/html")


# --- the route decides, not the URL ------------------------------------------------------------------------
def test_route_class_not_url_decides_the_format(env: Env) -> None:
    """Routes at misleading paths: a page at a SCIM-looking URL, SCIM at a token-looking one, OAuth at a page's."""
    app = FastAPI()
    app.state.ctx = env.ctx
    for route_class, path in (
        (PageRoute, "/tenants/x/scim/v2/Users"),
        (ScimRoute, "/tenants/x/token"),
        (OAuthRoute, "/tenants/x/interaction/abc"),
    ):
        router = APIRouter(route_class=route_class)

        async def fail() -> Response:
            raise RuntimeError(LEAK)

        router.add_api_route(path, fail, methods=["POST"])
        app.include_router(router)
    client = TestClient(app)
    page = client.post("/tenants/x/scim/v2/Users")
    assert page.status_code == 500 and page.headers["content-type"].startswith("text/html")
    scim = client.post("/tenants/x/token")
    assert scim.status_code == 500 and scim.json() == {"schemas": [SCIM_ERROR], "status": "500"}
    oauth = client.post("/tenants/x/interaction/abc")
    assert oauth.status_code == 500 and oauth.json() == {"error": "server_error"}
    for response in (page, scim, oauth):
        assert LEAK not in response.text
