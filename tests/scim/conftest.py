"""A SCIM caller: a fresh tenant with a provisioning token, and helpers to send SCIM requests."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from idhub.credentials.provisioning import create_provisioning_token
from idhub.tenants.service import TenantInfo
from tests.conftest import Env

SCIM_JSON = "application/scim+json"
USER_URN = "urn:ietf:params:scim:schemas:core:2.0:User"
GROUP_URN = "urn:ietf:params:scim:schemas:core:2.0:Group"
ENTERPRISE_URN = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
PATCH_URN = "urn:ietf:params:scim:api:messages:2.0:PatchOp"


@dataclass
class Scim:
    """Send SCIM requests to one tenant with one token."""

    env: Env
    tenant: TenantInfo
    token: str

    @property
    def base(self) -> str:
        return f"/tenants/{self.tenant.slug}/scim/v2"

    def request(
        self, method: str, path: str, body: Any = None, *, headers: dict[str, str] | None = None, **kw: Any
    ) -> httpx.Response:
        sent = {"authorization": f"Bearer {self.token}", **(headers or {})}
        if body is not None:
            sent.setdefault("content-type", SCIM_JSON)
            kw["json"] = body
        return self.env.client.request(method, self.base + path, headers=sent, **kw)

    def create_user(self, user_name: str, **attrs: Any) -> dict[str, Any]:
        response = self.request("POST", "/Users", {"schemas": [USER_URN], "userName": user_name, **attrs})
        assert response.status_code == 201, response.text
        return dict(response.json())

    def create_group(self, name: str, members: list[str] | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"schemas": [GROUP_URN], "displayName": name}
        if members:
            body["members"] = [{"value": m} for m in members]
        response = self.request("POST", "/Groups", body)
        assert response.status_code == 201, response.text
        return dict(response.json())


def provisioning_token(env: Env, tenant: TenantInfo) -> str:
    """Create a provisioning token in ``tenant``."""

    async def work() -> str:
        async with env.uow() as uow:
            _row, token = await create_provisioning_token(
                uow, tenant_id=tenant.id, name="test HR", hasher=env.ctx.secret_hasher
            )
        return token

    result: str = env.run(work)
    return result


@pytest.fixture
def scim(env: Env) -> Scim:
    """A fresh tenant and a provisioning token for it."""
    tenant = env.tenant()
    return Scim(env=env, tenant=tenant, token=provisioning_token(env, tenant))
