"""Fixtures of the admin API tests: a fresh tenant with one token per role."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from idhub.tenants.service import TenantInfo
from tests.conftest import Env

ROLE_SCOPES = {
    "admin": "idhub:admin",
    "helpdesk": "idhub:helpdesk",
    "auditor": "idhub:audit",
    "none": "api:read",
}


def client_token(env: Env, tenant: TenantInfo, scope: str) -> str:
    """Register a machine client with ``scope`` in ``tenant`` and return a client_credentials token."""
    client_id, secret = env.oauth_client(tenant, grant_types=["client_credentials"], scope=scope)
    assert secret is not None
    basic = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    answer = env.client.post(
        f"/tenants/{tenant.slug}/token",
        data={"grant_type": "client_credentials", "scope": scope},
        headers={"authorization": f"Basic {basic}"},
    )
    assert answer.status_code == 200, answer.text
    token: str = answer.json()["access_token"]
    return token


@dataclass
class Admin:
    """A tenant under the admin API, with a token per role (``admin``, ``helpdesk``, ``auditor``, ``none``)."""

    env: Env
    tenant: TenantInfo
    tokens: dict[str, str] = field(default_factory=dict)

    @property
    def base(self) -> str:
        """Return the tenant's admin API prefix."""
        return f"/admin/v1/tenants/{self.tenant.slug}"

    def token(self, role: str) -> str:
        """Return (and remember) a token of ``role``."""
        if role not in self.tokens:
            self.tokens[role] = client_token(self.env, self.tenant, ROLE_SCOPES[role])
        return self.tokens[role]

    def call(
        self, method: str, path: str, *, role: str | None = "admin", token: str | None = None, **kwargs: Any
    ) -> httpx.Response:
        """Send a request under the tenant's prefix as ``role`` (or with ``token``; ``role=None``: none)."""
        headers = dict(kwargs.pop("headers", {}))
        bearer = token or (self.token(role) if role else None)
        if bearer:
            headers["authorization"] = f"Bearer {bearer}"
        url = path if path.startswith("/") else f"{self.base}/{path}"
        return self.env.client.request(method, url, headers=headers, **kwargs)


@pytest.fixture
def admin(env: Env) -> Admin:
    """A fresh tenant with role tokens."""
    return Admin(env=env, tenant=env.tenant())


def assert_problem(answer: httpx.Response, status: int) -> dict[str, Any]:
    """Assert an RFC 9457 problem with ``status``; return its body."""
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json"), answer.headers
    body: dict[str, Any] = answer.json()
    assert body["status"] == status
    assert body["type"] and body["title"]
    return body
