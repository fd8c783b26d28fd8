"""Groups, memberships and clients through the admin API."""

from __future__ import annotations

import base64

from tests.admin.conftest import Admin, assert_problem
from tests.conftest import Env


def test_groups_and_memberships(admin: Admin) -> None:
    user = admin.call("POST", "users", json={"username": "jo"}).json()
    parent = admin.call("POST", "groups", json={"name": "Engineering"}).json()
    child = admin.call("POST", "groups", json={"name": "Platform"}).json()
    assert_problem(admin.call("POST", "groups", json={"name": "engineering"}), 409)
    added = admin.call("POST", f"groups/{child['id']}/members", json={"users": [user["id"]]})
    assert added.status_code == 204
    assert admin.call("POST", f"groups/{parent['id']}/members", json={"groups": [child["id"]]}).status_code == 204
    groups = admin.call("GET", f"users/{user['id']}").json()["groups"]
    assert {(g["name"], g["direct"]) for g in groups} == {("Platform", True), ("Engineering", False)}
    members = admin.call("GET", f"groups/{child['id']}").json()["members"]
    assert members == [{"type": "User", "id": user["id"], "display": "jo"}]
    assert admin.call("DELETE", f"groups/{child['id']}/members/{user['id']}").status_code == 204
    assert_problem(admin.call("DELETE", f"groups/{child['id']}/members/{user['id']}"), 404)
    renamed = admin.call("PATCH", f"groups/{child['id']}", json={"name": "Platform Team"})
    assert renamed.json()["name"] == "Platform Team"
    names = [g["name"] for g in admin.call("GET", "groups?name_prefix=plat").json()["items"]]
    assert names == ["Platform Team"]
    assert admin.call("DELETE", f"groups/{parent['id']}").status_code == 204


def test_groups_member_of_another_tenant_is_refused(env: Env, admin: Admin) -> None:
    group = admin.call("POST", "groups", json={"name": "G"}).json()
    foreign = env.user(env.tenant(), "zed")
    answer = admin.call("POST", f"groups/{group['id']}/members", json={"users": [foreign]})
    assert answer.status_code in (404, 422), answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")


def _token(env: Env, slug: str, client_id: str, secret: str, scope: str = "api:read") -> int:
    basic = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    answer = env.client.post(
        f"/tenants/{slug}/token",
        data={"grant_type": "client_credentials", "scope": scope},
        headers={"authorization": f"Basic {basic}"},
    )
    return answer.status_code


def test_clients_secret_shown_once_rotated_and_deleted(env: Env, admin: Admin) -> None:
    created = admin.call(
        "POST", "clients", json={"name": "Payroll sync", "grant_types": ["client_credentials"], "scope": "api:read"}
    )
    assert created.status_code == 201, created.text
    body = created.json()
    client_id, secret = body["client_id"], body["client_secret"]
    assert created.headers["cache-control"] == "no-store"
    assert _token(env, admin.tenant.slug, client_id, secret) == 200
    read = admin.call("GET", f"clients/{client_id}").json()
    assert "client_secret" not in read and "secret_hash" not in read
    rotated = admin.call("POST", f"clients/{client_id}/secret").json()["client_secret"]
    assert rotated != secret
    assert _token(env, admin.tenant.slug, client_id, secret) == 401
    assert _token(env, admin.tenant.slug, client_id, rotated) == 200
    assert admin.call("DELETE", f"clients/{client_id}").status_code == 204
    assert _token(env, admin.tenant.slug, client_id, rotated) == 401
    assert_problem(admin.call("GET", f"clients/{client_id}"), 404)


def test_clients_caller_cannot_choose_id_or_secret(admin: Admin) -> None:
    body = {"name": "web", "redirect_uris": ["https://app.example/cb"], "client_id": "mine", "client_secret": "s3cret"}
    created = admin.call("POST", "clients", json=body).json()
    assert created["client_id"] != "mine" and created["client_secret"] != "s3cret"


def test_clients_redirect_uri_rules(admin: Admin) -> None:
    bad = [
        "https://app.example/cb#frag",
        "https://*.example/cb",
        "javascript:alert(1)",
        "data:text/html,hi",
        "http://app.example/cb",
    ]
    for uri in bad:
        assert_problem(admin.call("POST", "clients", json={"name": "w", "redirect_uris": [uri]}), 422)
    native = {"name": "cli", "redirect_uris": ["http://127.0.0.1/cb"], "token_endpoint_auth_method": "none"}
    assert admin.call("POST", "clients", json={**native, "application_type": "native"}).status_code == 201
    web = admin.call("POST", "clients", json={"name": "w", "redirect_uris": ["https://app.example/cb"]}).json()
    patch = admin.call("PATCH", f"clients/{web['client_id']}", json={"redirect_uris": ["https://app.example/#x"]})
    assert_problem(patch, 422)
    assert admin.call("GET", f"clients/{web['client_id']}").json()["redirect_uris"] == ["https://app.example/cb"]


def test_clients_patch_if_match(admin: Admin) -> None:
    web = admin.call("POST", "clients", json={"name": "w", "redirect_uris": ["https://app.example/cb"]})
    client_id, tag = web.json()["client_id"], web.headers["etag"]
    first = admin.call("PATCH", f"clients/{client_id}", json={"name": "w2"}, headers={"if-match": tag})
    assert first.status_code == 200
    assert_problem(admin.call("PATCH", f"clients/{client_id}", json={"name": "w3"}, headers={"if-match": tag}), 412)
    assert_problem(admin.call("PATCH", f"clients/{client_id}", json={"name": None}), 422)
    assert_problem(admin.call("PATCH", f"clients/{client_id}", json={"grant_types": ["implicit"]}), 422)


def test_clients_private_key_jwt_by_reference(admin: Admin) -> None:
    body = {
        "name": "signer",
        "grant_types": ["client_credentials"],
        "token_endpoint_auth_method": "private_key_jwt",
        "jwks_uri": "https://keys.example.com/jwks",
        "scope": "api:read",
    }
    created = admin.call("POST", "clients", json=body)
    assert created.status_code == 201, created.text
    assert created.json()["client_secret"] is None and created.json()["jwks_uri"] == body["jwks_uri"]
    # A loopback or private key host is reachable only from inside: not for a tenant administrator.
    assert_problem(admin.call("POST", "clients", json={**body, "jwks_uri": "https://127.0.0.1/jwks"}), 422)
    client_id = created.json()["client_id"]
    patched = admin.call("PATCH", f"clients/{client_id}", json={"jwks_uri": "https://10.1.2.3/jwks"})
    assert_problem(patched, 422)
    assert_problem(admin.call("PATCH", f"clients/{client_id}", json={"jwks": {"keys": [{"kty": "EC"}]}}), 422)
    assert admin.call("PATCH", f"clients/{client_id}", json={"name": "signer 2"}).status_code == 200
