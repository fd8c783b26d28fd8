"""Provisioning tokens, sessions, links, keys and the audit log through the admin API."""

from __future__ import annotations

from tests.admin.conftest import Admin, assert_problem
from tests.conftest import Env
from tests.flows import login_and_get_code, pkce_pair


def test_provisioning_tokens_create_use_revoke(env: Env, admin: Admin) -> None:
    created = admin.call("POST", "provisioning-tokens", json={"name": "Workday"})
    assert created.status_code == 201
    token = created.json()["token"]
    scim = f"/tenants/{admin.tenant.slug}/scim/v2/Users"
    assert env.client.get(scim, headers={"authorization": f"Bearer {token}"}).status_code == 200
    listed = admin.call("GET", "provisioning-tokens").json()["items"]
    assert [t["name"] for t in listed] == ["Workday"] and "token" not in listed[0]
    assert admin.call("DELETE", f"provisioning-tokens/{listed[0]['id']}").status_code == 204
    assert env.client.get(scim, headers={"authorization": f"Bearer {token}"}).status_code == 401
    assert_problem(admin.call("DELETE", "provisioning-tokens/nope"), 404)


def test_sessions_listed_and_ended(env: Env, admin: Admin) -> None:
    user_id = env.user(admin.tenant, "kim", "correct horse battery")
    client_id, _ = env.oauth_client(admin.tenant, redirect_uris=["https://rp.example/cb"], first_party=True)
    _verifier, challenge = pkce_pair()
    result = login_and_get_code(
        env.client,
        tenant_slug=admin.tenant.slug,
        client_id=client_id,
        redirect_uri="https://rp.example/cb",
        username="kim",
        password="correct horse battery",
        code_challenge=challenge,
    )
    assert "code" in result
    sessions = admin.call("GET", f"sessions?user_id={user_id}", role="helpdesk").json()["items"]
    assert len(sessions) == 1 and sessions[0]["user_id"] == user_id
    assert admin.call("DELETE", f"sessions/{sessions[0]['id']}", role="helpdesk").status_code == 204
    assert admin.call("GET", f"sessions?user_id={user_id}").json()["items"] == []
    ended = admin.call("GET", f"sessions?user_id={user_id}&include_ended=true").json()["items"]
    assert ended[0]["revoked_at"] is not None
    assert admin.call("GET", "audit?action=session.revoke").json()["items"][0]["target"]["id"] == sessions[0]["id"]
    assert_problem(admin.call("DELETE", "sessions/unknown"), 404)
    env.client.cookies.clear()


def test_links_list_empty_and_unknown_link_404(admin: Admin) -> None:
    assert admin.call("GET", "links", role="helpdesk").json() == {"items": [], "next_cursor": None}
    assert_problem(admin.call("DELETE", "links/00000000-0000-0000-0000-000000000000"), 404)


def test_keys_listed_and_rotated(admin: Admin) -> None:
    before = admin.call("GET", "keys").json()["items"]
    assert all("d" not in key["public_jwk"] for key in before)
    nexts = {k["kid"] for k in before if k["state"] == "next"}
    rotated = admin.call("POST", "keys/rotate").json()["activated"]
    assert set(rotated) == nexts
    after = admin.call("GET", "keys").json()["items"]
    assert {k["kid"] for k in after if k["state"] == "active"} == nexts


def test_audit_log_pages_and_is_read_only_for_auditors(admin: Admin) -> None:
    for name in ("a1", "a2", "a3"):
        admin.call("POST", "users", json={"username": name})
    first = admin.call("GET", "audit?limit=2&action=user.create", role="auditor")
    assert first.status_code == 200
    page = first.json()
    assert len(page["items"]) == 2 and page["next_cursor"]
    rest = admin.call("GET", f"audit?limit=2&action=user.create&cursor={page['next_cursor']}", role="auditor")
    ids = [e["id"] for e in page["items"]] + [e["id"] for e in rest.json()["items"]]
    assert len(ids) == len(set(ids)) == 3
    entry = page["items"][0]
    assert entry["request_id"] and entry["source_address"] and entry["hash"]
    assert_problem(admin.call("GET", "users", role="auditor"), 403)
    assert_problem(admin.call("GET", "audit?since=yesterday", role="auditor"), 422)


def test_tenant_read(admin: Admin) -> None:
    body = admin.call("GET", "").json()
    assert body["slug"] == admin.tenant.slug and body["issuer"] == admin.tenant.issuer


def test_keys_rotation_schedule_through_the_tenant(admin: Admin) -> None:
    assert admin.call("GET", "keys").json()["rotation"] == {"every_days": None, "next_at": None}
    changed = admin.call("PATCH", "", json={"key_rotation_days": 90})
    assert changed.status_code == 200 and changed.json()["settings"]["key_rotation_days"] == 90
    rotation = admin.call("GET", "keys").json()["rotation"]
    assert rotation["every_days"] == 90 and rotation["next_at"]
    assert_problem(admin.call("PATCH", "", json={"key_rotation_days": 0}), 422)
    cleared = admin.call("PATCH", "", json={"key_rotation_days": None})
    assert "key_rotation_days" not in cleared.json()["settings"]


def test_audit_retention_through_the_tenant(admin: Admin) -> None:
    kept = admin.call("PATCH", "", json={"audit_retention_days": 365})
    assert kept.status_code == 200 and kept.json()["settings"]["audit_retention_days"] == 365
    forever = admin.call("PATCH", "", json={"audit_retention_days": None})
    assert forever.json()["settings"]["audit_retention_days"] is None
    default = admin.call("PATCH", "", json={"audit_retention_days": "default"})
    assert "audit_retention_days" not in default.json()["settings"]
    assert_problem(admin.call("PATCH", "", json={"audit_retention_days": 0}), 422)
    assert_problem(admin.call("PATCH", "", json={"audit_retention_days": "forever"}), 422)
    assert admin.call("GET", "audit?action=tenant.update", role="auditor").json()["items"]


def test_links_pages_and_unlink(env: Env, admin: Admin) -> None:
    import uuid as _uuid

    from idhub.storage.models import FederatedIdentity

    provider = admin.call(
        "POST", "identity-providers", json={"alias": "gh", "type": "github", "client_id": "c", "client_secret": "s"}
    )
    provider_id = _uuid.UUID(provider.json()["id"])
    people = [_uuid.UUID(env.user(admin.tenant, f"linked{i}", password=None)) for i in range(3)]

    async def link() -> None:
        async with env.uow() as uow:
            for index, person in enumerate(people):
                uow.session.add(
                    FederatedIdentity(
                        tenant_id=admin.tenant.id, provider_id=provider_id, user_id=person, subject=f"gh-{index}"
                    )
                )

    env.run(link)
    first = admin.call("GET", "links?limit=2", role="helpdesk").json()
    assert len(first["items"]) == 2 and first["next_cursor"]
    rest = admin.call("GET", f"links?limit=2&cursor={first['next_cursor']}", role="helpdesk").json()
    seen = [item["subject"] for item in first["items"] + rest["items"]]
    assert sorted(seen) == ["gh-0", "gh-1", "gh-2"] and rest["next_cursor"] is None
    mine = admin.call("GET", f"links?user_id={people[1]}").json()["items"]
    assert [item["subject"] for item in mine] == ["gh-1"]
    assert admin.call("DELETE", f"links/{mine[0]['id']}", role="helpdesk").status_code == 204
    assert admin.call("GET", f"links?user_id={people[1]}").json()["items"] == []


def test_if_match_on_upstreams_and_policies(admin: Admin) -> None:
    admin.call(
        "POST", "identity-providers", json={"alias": "gh", "type": "github", "client_id": "c", "client_secret": "s"}
    )
    tag = admin.call("GET", "identity-providers/gh").headers["etag"]
    assert admin.call("PATCH", "identity-providers/gh", json={"jit": False}, headers={"if-match": tag}).is_success
    stale = admin.call("PATCH", "identity-providers/gh", json={"jit": True}, headers={"if-match": tag})
    assert_problem(stale, 412)
    assert_problem(admin.call("DELETE", "identity-providers/gh", headers={"if-match": tag}), 412)
    client = admin.call("POST", "clients", json={"name": "m", "grant_types": ["client_credentials"], "scope": "a b"})
    body = {"client_id": client.json()["client_id"], "machine": True, "scope": "a"}
    policy = admin.call("POST", "policies", json=body).json()
    tag = admin.call("GET", f"policies/{policy['id']}").headers["etag"]
    assert admin.call("PATCH", f"policies/{policy['id']}", json={"scope": "b"}, headers={"if-match": tag}).is_success
    assert_problem(admin.call("PATCH", f"policies/{policy['id']}", json={"scope": "a"}, headers={"if-match": tag}), 412)
    assert admin.call("GET", f"policies/{policy['id']}").json()["scope"] == "b"
