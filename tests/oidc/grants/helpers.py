"""Helpers for back-channel tests: client credentials headers, codes made directly, token requests."""

from __future__ import annotations

import base64
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import quote

import httpx

from idhub.oidc.codes import create_authorization_code
from idhub.storage.base import utcnow
from idhub.tenants.service import TenantInfo
from tests.conftest import Env
from tests.flows import pkce_pair

REDIRECT_URI = "https://rp.example/cb"
FORM = {"content-type": "application/x-www-form-urlencoded"}


def basic(client_id: str, secret: str) -> dict[str, str]:
    """Return an Authorization header for client_secret_basic (parts form-urlencoded, RFC 6749 §2.3.1)."""
    raw = f"{quote(client_id, safe='')}:{quote(secret, safe='')}".encode()
    return {"authorization": "Basic " + base64.b64encode(raw).decode()}


def url(tenant: TenantInfo, endpoint: str) -> str:
    """Return the path of an endpoint of ``tenant``."""
    return f"/tenants/{tenant.slug}/{endpoint}"


def post(
    env: Env, tenant: TenantInfo, endpoint: str, data: Any, headers: dict[str, str] | None = None
) -> httpx.Response:
    """POST a form (a dict, or a pre-encoded string to send repeated fields)."""
    content = data if isinstance(data, str) else str(httpx.QueryParams(data))
    response: httpx.Response = env.client.post(
        url(tenant, endpoint), content=content, headers={**FORM, **(headers or {})}
    )
    return response


def make_code(
    env: Env,
    tenant: TenantInfo,
    client_id: str,
    user_id: str,
    *,
    challenge: str,
    scope: str = "openid profile email",
    nonce: str | None = "n-1",
    redirect_uri: str = REDIRECT_URI,
    resources: list[str] | None = None,
    ttl: int = 60,
    session_id: str | None = "sid-1",
) -> str:
    """Create an authorization code (and its grant) directly in the database."""

    async def work() -> str:
        client = await env.ctx.clients.get(tenant.id, client_id)
        assert client is not None
        async with env.ctx.sessionmaker() as session:
            code = await create_authorization_code(
                session,
                hasher=env.ctx.secret_hasher,
                tenant_id=tenant.id,
                client_pk=client.id,
                user_id=uuid.UUID(user_id),
                session_id=session_id,
                redirect_uri=redirect_uri,
                scope=scope,
                nonce=nonce,
                code_challenge=challenge,
                code_challenge_method="S256",
                resources=resources or [],
                auth_time=utcnow() - timedelta(seconds=5),
                amr=["pwd"],
                ttl=ttl,
            )
            await session.commit()
        return code

    result: str = env.run(work)
    return result


@dataclass
class CodeSetup:
    """A tenant with a confidential code client and a user, plus a fresh code and its verifier."""

    tenant: TenantInfo
    client_id: str
    secret: str
    user_id: str
    code: str
    verifier: str

    def exchange_data(self, **overrides: str) -> dict[str, str]:
        """Return the form of the code exchange."""
        data = {
            "grant_type": "authorization_code",
            "code": self.code,
            "redirect_uri": REDIRECT_URI,
            "code_verifier": self.verifier,
        }
        data.update(overrides)
        return data


def code_setup(env: Env, *, scope: str = "openid profile email", **client_kw: Any) -> CodeSetup:
    """Create a tenant, a confidential code client, a user and a code."""
    tenant = env.tenant()
    client_kw.setdefault("redirect_uris", [REDIRECT_URI])
    client_id, secret = env.oauth_client(tenant, **client_kw)
    user_id = env.user(tenant, email="alice@example.com", name="Alice Liddell", given_name="Alice", password=None)
    verifier, challenge = pkce_pair()
    code = make_code(env, tenant, client_id, user_id, challenge=challenge, scope=scope)
    return CodeSetup(tenant, client_id, secret or "", user_id, code, verifier)


def exchange_code(env: Env, setup: CodeSetup, **overrides: str) -> httpx.Response:
    """Exchange the setup's code with client_secret_basic."""
    return post(env, setup.tenant, "token", setup.exchange_data(**overrides), basic(setup.client_id, setup.secret))


def introspect(env: Env, tenant: TenantInfo, token: str, client_id: str, secret: str, **extra: str) -> dict[str, Any]:
    """Introspect ``token`` as the given client and return the JSON answer."""
    response = post(env, tenant, "introspect", {"token": token, **extra}, basic(client_id, secret))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body
