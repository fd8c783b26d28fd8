"""Access policies and the entitlement report through the admin API (the directory's entitlement service)."""

from __future__ import annotations

import base64

from tests.admin.conftest import Admin, assert_problem
from tests.conftest import Env


def _token_scope(env: Env, slug: str, client_id: str, secret: str, scope: str) -> tuple[int, str]:
    basic = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    answer = env.client.post(
        f"/tenants/{slug}/token",
        data={"grant_type": "client_credentials", "scope": scope},
        headers={"authorization": f"Basic {basic}"},
    )
    return answer.status_code, answer.json().get("scope", "") if answer.status_code == 200 else ""


def test_policies_govern_a_machine_client_and_show_in_the_report(env: Env, admin: Admin) -> None:
    created = admin.call(
        "POST", "clients", json={"name": "sync", "grant_types": ["client_credentials"], "scope": "read write"}
    ).json()
    client_id, secret = created["client_id"], created["client_secret"]
    assert _token_scope(env, admin.tenant.slug, client_id, secret, "read write") == (200, "read write")
    policy = admin.call("POST", "policies", json={"client_id": client_id, "machine": True, "scope": "read"})
    assert policy.status_code == 201, policy.text
    assert policy.json()["subject"] == "machine" and policy.json()["scope"] == "read"
    assert _token_scope(env, admin.tenant.slug, client_id, secret, "read write") == (200, "read")
    changed = admin.call("PATCH", f"policies/{policy.json()['id']}", json={"scope": "read write"})
    assert changed.status_code == 200 and changed.json()["scope"] == "read write"
    listed = admin.call("GET", f"policies?client_id={client_id}").json()["items"]
    assert [p["id"] for p in listed] == [policy.json()["id"]]
    report = admin.call("GET", f"reports/entitlements?client_id={client_id}", role="auditor")
    assert report.status_code == 200, report.text
    assert "write" in report.text
    assert admin.call("DELETE", f"policies/{policy.json()['id']}").status_code == 204
    assert_problem(admin.call("GET", f"policies/{policy.json()['id']}"), 404)
    assert admin.call("GET", "audit?action=policy.delete", role="auditor").json()["items"]


def test_policies_for_groups_list_people_in_the_report(admin: Admin) -> None:
    web = admin.call(
        "POST",
        "clients",
        json={"name": "social", "redirect_uris": ["https://social.example/cb"], "scope": "openid feed"},
    ).json()
    group = admin.call("POST", "groups", json={"name": "Marketing"}).json()
    user = admin.call("POST", "users", json={"username": "mia"}).json()
    admin.call("POST", f"groups/{group['id']}/members", json={"users": [user["id"]]})
    body = {"client_id": web["client_id"], "group_id": group["id"], "scope": "feed"}
    assert admin.call("POST", "policies", json=body).status_code == 201
    report = admin.call("GET", f"reports/entitlements?client_id={web['client_id']}&people=true", role="auditor")
    assert report.status_code == 200 and "mia" in report.text and "Marketing" in report.text


def test_policies_bad_input_is_a_problem(admin: Admin) -> None:
    client = admin.call("POST", "clients", json={"name": "c", "grant_types": ["client_credentials"], "scope": "a"})
    client_id = client.json()["client_id"]
    both = {"client_id": client_id, "machine": True, "group_id": "00000000-0000-0000-0000-000000000000", "scope": "a"}
    assert_problem(admin.call("POST", "policies", json=both), 422)
    assert_problem(admin.call("POST", "policies", json={"client_id": client_id, "scope": "a"}), 422)
    outside = {"client_id": client_id, "machine": True, "scope": "not-allowed"}
    assert_problem(admin.call("POST", "policies", json=outside), 422)
    unknown = {"client_id": "nobody", "machine": True, "scope": "a"}
    assert_problem(admin.call("POST", "policies", json=unknown), 404)
    assert_problem(admin.call("GET", "policies?group_id=not-a-uuid"), 404)
