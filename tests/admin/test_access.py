"""Every admin route: no token 401, wrong role 403, another tenant 404, all as RFC 9457 problems."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from fastapi.routing import APIRoute

from idhub.admin.router import router as admin_router
from tests.admin.conftest import Admin, assert_problem, client_token
from tests.conftest import Env

ID = str(uuid.uuid4())
# (method, path under the tenant prefix, JSON body, a role that lacks the permission)
ROUTES: list[tuple[str, str, dict[str, Any] | None, str]] = [
    ("GET", "", None, "helpdesk"),
    ("GET", "/users", None, "auditor"),
    ("POST", "/users", {"username": "x"}, "auditor"),
    ("GET", f"/users/{ID}", None, "auditor"),
    ("PATCH", f"/users/{ID}", {"active": False}, "auditor"),
    ("DELETE", f"/users/{ID}", None, "auditor"),
    ("GET", f"/users/{ID}/export", None, "auditor"),
    ("GET", "/archived-users", None, "auditor"),
    ("GET", "/groups", None, "auditor"),
    ("POST", "/groups", {"name": "g"}, "helpdesk"),
    ("GET", f"/groups/{ID}", None, "auditor"),
    ("PATCH", f"/groups/{ID}", {"name": "g"}, "helpdesk"),
    ("DELETE", f"/groups/{ID}", None, "helpdesk"),
    ("POST", f"/groups/{ID}/members", {"users": [ID]}, "helpdesk"),
    ("DELETE", f"/groups/{ID}/members/{ID}", None, "helpdesk"),
    ("GET", "/clients", None, "helpdesk"),
    ("POST", "/clients", {"name": "c"}, "helpdesk"),
    ("GET", "/clients/abc", None, "helpdesk"),
    ("PATCH", "/clients/abc", {"name": "c"}, "helpdesk"),
    ("DELETE", "/clients/abc", None, "helpdesk"),
    ("POST", "/clients/abc/secret", None, "helpdesk"),
    ("GET", "/provisioning-tokens", None, "helpdesk"),
    ("POST", "/provisioning-tokens", {"name": "hr"}, "helpdesk"),
    ("DELETE", f"/provisioning-tokens/{ID}", None, "helpdesk"),
    ("GET", "/sessions", None, "auditor"),
    ("DELETE", "/sessions/abc", None, "auditor"),
    ("GET", "/links", None, "auditor"),
    ("DELETE", f"/links/{ID}", None, "auditor"),
    ("GET", "/keys", None, "helpdesk"),
    ("POST", "/keys/rotate", None, "helpdesk"),
    ("GET", "/audit", None, "helpdesk"),
    ("GET", "/policies", None, "helpdesk"),
    ("POST", "/policies", {"client_id": "abc", "machine": True, "scope": "x"}, "auditor"),
    ("GET", f"/policies/{ID}", None, "auditor"),
    ("PATCH", f"/policies/{ID}", {"scope": "x"}, "helpdesk"),
    ("DELETE", f"/policies/{ID}", None, "helpdesk"),
    ("GET", "/reports/entitlements", None, "helpdesk"),
    ("PATCH", "", {"name": "n"}, "helpdesk"),
    ("GET", "/identity-providers", None, "helpdesk"),
    ("POST", "/identity-providers", {"alias": "gh", "type": "github"}, "helpdesk"),
    ("GET", "/identity-providers/abc", None, "helpdesk"),
    ("PATCH", "/identity-providers/abc", {"enabled": False}, "helpdesk"),
    ("DELETE", "/identity-providers/abc", None, "helpdesk"),
    ("POST", "/identity-providers/abc/preview", {"sub": "1"}, "auditor"),
]


def _template(path: str) -> str:
    parts = []
    for part in path.split("/"):
        parts.append("{id}" if part in (ID, "abc") else part)
    return "/".join(parts)


def test_route_table_covers_every_admin_route() -> None:
    served = set()
    for route in admin_router.routes:
        if isinstance(route, APIRoute) and route.path.startswith("/admin/v1/tenants/{tenant}"):
            rest = route.path.removeprefix("/admin/v1/tenants/{tenant}")
            template = "/".join("{id}" if p.startswith("{") else p for p in rest.split("/"))
            served |= {(method, template) for method in route.methods}
    listed = {(method, _template(path)) for method, path, _body, _role in ROUTES}
    assert served == listed


@pytest.mark.parametrize(("method", "path", "body", "_role"), ROUTES)
def test_admin_route_without_token_is_401(
    admin: Admin, method: str, path: str, body: dict[str, Any] | None, _role: str
) -> None:
    answer = admin.call(method, admin.base + path, role=None, json=body)
    assert_problem(answer, 401)
    assert answer.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize(("method", "path", "body", "role"), ROUTES)
def test_admin_route_with_wrong_role_is_403(
    admin: Admin, method: str, path: str, body: dict[str, Any] | None, role: str
) -> None:
    assert_problem(admin.call(method, admin.base + path, role=role, json=body), 403)
    assert_problem(admin.call(method, admin.base + path, role="none", json=body), 403)


@pytest.mark.parametrize(("method", "path", "body", "_role"), ROUTES)
def test_admin_route_of_another_tenant_is_404(
    env: Env, admin: Admin, method: str, path: str, body: dict[str, Any] | None, _role: str
) -> None:
    other = env.tenant()
    token = client_token(env, other, "idhub:admin")
    assert_problem(admin.call(method, admin.base + path, token=token, json=body), 404)


def test_admin_bad_tokens_are_401(admin: Admin) -> None:
    for header in ("Basic abc", "Bearer", "Bearer a b", "Bearer " + "x" * 9000, "Bearer not.a.jwt"):
        answer = admin.env.client.get(admin.base + "/users", headers={"authorization": header})
        assert_problem(answer, 401)


def test_admin_token_of_a_disabled_client_is_401(env: Env, admin: Admin) -> None:
    token = admin.token("admin")
    listed = admin.call("GET", "clients?limit=200").json()["items"]
    me = next(c for c in listed if c["scope"] == "idhub:admin")
    assert admin.call("PATCH", f"clients/{me['client_id']}", json={"enabled": False}).status_code == 200
    assert_problem(admin.call("GET", "users", token=token), 401)


def test_admin_unknown_tenant_is_404_for_a_caller_and_401_without_token(admin: Admin) -> None:
    assert_problem(admin.call("GET", "/admin/v1/tenants/no-such-tenant/users"), 404)
    assert_problem(admin.call("GET", "/admin/v1/tenants/no-such-tenant/users", role=None), 401)


def test_admin_unknown_path_and_method_are_problems(admin: Admin) -> None:
    assert_problem(admin.call("GET", "/admin/v1/nothing-here"), 404)
    assert_problem(admin.call("PUT", f"{admin.base}/users"), 405)


def test_system_admin_reaches_every_tenant(env: Env, admin: Admin) -> None:
    system = _system(env)
    token = client_token(env, system, "idhub:admin idhub:system")
    assert admin.call("GET", "users", token=token).status_code == 200
    assert admin.call("POST", "users", token=token, json={"username": "from-system"}).status_code == 201


def test_idhub_system_scope_outside_the_system_tenant_grants_nothing_more(env: Env, admin: Admin) -> None:
    other = env.tenant()
    token = client_token(env, other, "idhub:admin idhub:system")
    assert_problem(admin.call("GET", "users", token=token), 404)


def test_tenants_routes_are_for_system_admins_only(env: Env, admin: Admin) -> None:
    assert_problem(admin.call("GET", "/admin/v1/tenants"), 403)
    assert_problem(admin.call("POST", "/admin/v1/tenants", json={"slug": "mine"}), 403)
    assert_problem(admin.call("GET", "/admin/v1/tenants", role=None), 401)
    token = client_token(env, _system(env), "idhub:admin idhub:system")
    slug = f"t-{uuid.uuid4().hex[:10]}"
    created = admin.call("POST", "/admin/v1/tenants", token=token, json={"slug": slug, "name": "Acme"})
    assert created.status_code == 201 and created.json()["issuer"].endswith(f"/tenants/{slug}")
    assert_problem(admin.call("POST", "/admin/v1/tenants", token=token, json={"slug": slug}), 409)
    assert_problem(admin.call("POST", "/admin/v1/tenants", token=token, json={"slug": "Not A Slug"}), 422)
    seen, cursor = [], ""
    while True:
        page = admin.call("GET", f"/admin/v1/tenants?limit=5&cursor={cursor}", token=token).json()
        seen += [t["slug"] for t in page["items"]]
        if not page["next_cursor"]:
            break
        cursor = page["next_cursor"]
    assert slug in seen and admin.tenant.slug in seen and seen == sorted(seen)


def test_tenant_admin_cannot_register_a_system_scope(admin: Admin) -> None:
    body = {"name": "escalate", "grant_types": ["client_credentials"], "scope": "idhub:system"}
    assert_problem(admin.call("POST", "clients", json=body), 403)


def _system(env: Env) -> Any:
    slug = env.ctx.settings.system_tenant
    info = env.run(env.ctx.tenants.get, slug)
    return info if info is not None else env.tenant(slug)
