"""The SCIM endpoints end to end (RFC 7644), on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
from sqlalchemy import select

from idhub.storage.models import AuditEvent, User
from tests.conftest import Env
from tests.oidc.grants.helpers import basic, code_setup, exchange_code, introspect, post
from tests.scim.conftest import ENTERPRISE_URN, GROUP_URN, PATCH_URN, SCIM_JSON, USER_URN, Scim, provisioning_token


def _error(response: httpx.Response, status: int, scim_type: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(SCIM_JSON)
    body = dict(response.json())
    assert body["schemas"] == ["urn:ietf:params:scim:api:messages:2.0:Error"]
    assert body["status"] == str(status)
    if scim_type is not None:
        assert body.get("scimType") == scim_type, body
    return body


# --- authentication ----------------------------------------------------------------------------------
def test_auth_missing_token_401_scim_error_with_challenge(scim: Scim) -> None:
    response = scim.env.client.get(scim.base + "/Users")
    _error(response, 401)
    assert response.headers["www-authenticate"].startswith("Bearer")


def test_auth_wrong_token_401(scim: Scim) -> None:
    for token in ("idhub_pt_nope", "garbage", "a.b.c"):
        response = scim.env.client.get(scim.base + "/Users", headers={"authorization": f"Bearer {token}"})
        _error(response, 401)


def test_auth_other_tenants_token_sees_nothing(scim: Scim, env: Env) -> None:
    scim.create_user("secret-person")
    other = env.tenant()
    other_token = provisioning_token(env, other)
    response = env.client.get(scim.base + "/Users", headers={"authorization": f"Bearer {other_token}"})
    _error(response, 401)
    own = env.client.get(f"/tenants/{other.slug}/scim/v2/Users", headers={"authorization": f"Bearer {other_token}"})
    assert own.status_code == 200 and own.json()["totalResults"] == 0


def test_auth_client_credentials_token_with_scim_scope_accepted(env: Env) -> None:
    tenant = env.tenant()
    client_id, secret = env.oauth_client(tenant, grant_types=["client_credentials"], scope="scim")
    token = post(
        env, tenant, "token", {"grant_type": "client_credentials", "scope": "scim"}, basic(client_id, secret or "")
    )
    access = token.json()["access_token"]
    response = env.client.get(f"/tenants/{tenant.slug}/scim/v2/Users", headers={"authorization": f"Bearer {access}"})
    assert response.status_code == 200


def test_auth_access_token_without_scim_scope_403(env: Env) -> None:
    tenant = env.tenant()
    client_id, secret = env.oauth_client(tenant, grant_types=["client_credentials"], scope="api")
    token = post(env, tenant, "token", {"grant_type": "client_credentials"}, basic(client_id, secret or ""))
    access = token.json()["access_token"]
    response = env.client.get(f"/tenants/{tenant.slug}/scim/v2/Users", headers={"authorization": f"Bearer {access}"})
    _error(response, 403)


# --- discovery ---------------------------------------------------------------------------------------
def test_discovery_service_provider_config_advertises_what_works(scim: Scim) -> None:
    config = scim.env.client.get(scim.base + "/ServiceProviderConfig").json()
    assert config["patch"]["supported"] and config["filter"]["supported"] and config["etag"]["supported"]
    assert config["bulk"] == {"supported": True, "maxOperations": 1000, "maxPayloadSize": 4 * 1024 * 1024}
    types = scim.env.client.get(scim.base + "/ResourceTypes").json()
    assert {r["name"] for r in types["Resources"]} == {"User", "Group"}
    found = scim.env.client.get(scim.base + "/Schemas").json()
    ids = {s["id"] for s in found["Resources"]}
    assert {USER_URN, GROUP_URN, ENTERPRISE_URN} <= ids
    one = scim.env.client.get(scim.base + f"/Schemas/{ENTERPRISE_URN}").json()
    assert "employeeNumber" in {a["name"] for a in one["attributes"]}
    _error(scim.env.client.get(scim.base + "/Schemas/urn:nope"), 404)


# --- Users CRUD --------------------------------------------------------------------------------------
def test_users_create_returns_201_location_etag_and_full_resource(scim: Scim) -> None:
    body = {
        "schemas": [USER_URN, ENTERPRISE_URN],
        "userName": "Bjensen@Example.com",
        "externalId": "hr-42",
        "name": {"givenName": "Barbara", "familyName": "Jensen"},
        "emails": [{"value": "bjensen@example.com", "type": "work", "primary": True}],
        "password": "t1meMa$heen-long",
        ENTERPRISE_URN: {"employeeNumber": "701984", "department": "Tour Operations"},
    }
    response = scim.request("POST", "/Users", body)
    assert response.status_code == 201, response.text
    user = response.json()
    assert response.headers["location"] == user["meta"]["location"]
    assert response.headers["etag"] == user["meta"]["version"]
    assert user["userName"] == "Bjensen@Example.com" and user["externalId"] == "hr-42"
    assert user[ENTERPRISE_URN]["employeeNumber"] == "701984"
    assert "password" not in user
    again = scim.request("GET", f"/Users/{user['id']}").json()
    assert again["emails"] == [{"value": "bjensen@example.com", "type": "work", "primary": True}]


def test_users_create_duplicate_username_case_insensitive_409_uniqueness(scim: Scim) -> None:
    scim.create_user("alice")
    _error(scim.request("POST", "/Users", {"schemas": [USER_URN], "userName": "ALICE"}), 409, "uniqueness")


def test_users_create_invalid_json_400_invalid_syntax(scim: Scim) -> None:
    response = scim.request("POST", "/Users", headers={"content-type": SCIM_JSON}, content=b"{nope")
    _error(response, 400, "invalidSyntax")


def test_users_get_unknown_404(scim: Scim) -> None:
    _error(scim.request("GET", f"/Users/{uuid.uuid4()}"), 404)
    _error(scim.request("GET", "/Users/not-a-uuid"), 404)


def test_users_put_replaces_and_ignores_read_only_id(scim: Scim) -> None:
    user = scim.create_user("carol", title="Engineer", nickName="caz")
    body = {"schemas": [USER_URN], "id": "forged", "userName": "carol", "displayName": "Carol C"}
    response = scim.request("PUT", f"/Users/{user['id']}", body)
    assert response.status_code == 200, response.text
    replaced = response.json()
    assert replaced["id"] == user["id"] and replaced["displayName"] == "Carol C"
    assert "title" not in replaced and "nickName" not in replaced
    assert replaced["meta"]["version"] != user["meta"]["version"]


def test_users_patch_entra_style_updates_and_is_atomic(scim: Scim) -> None:
    user = scim.create_user("dave", emails=[{"value": "dave@work.example", "type": "work", "primary": True}])
    body = {
        "schemas": [PATCH_URN],
        "Operations": [
            {"op": "Replace", "path": 'emails[type eq "work"].value', "value": "dave@new.example"},
            {"op": "Add", "value": {"displayName": "Dave D", "name.givenName": "Dave"}},
            {"op": "Replace", "path": f"{ENTERPRISE_URN}:department", "value": "Sales"},
        ],
    }
    response = scim.request("PATCH", f"/Users/{user['id']}", body)
    assert response.status_code == 200, response.text
    patched = response.json()
    assert patched["emails"][0]["value"] == "dave@new.example"
    assert patched["displayName"] == "Dave D" and patched["name"]["givenName"] == "Dave"
    assert patched[ENTERPRISE_URN]["department"] == "Sales"
    bad = {
        "schemas": [PATCH_URN],
        "Operations": [
            {"op": "replace", "path": "displayName", "value": "Changed"},
            {"op": "replace", "path": 'emails[type eq "home"].value', "value": "x@y.example"},
        ],
    }
    _error(scim.request("PATCH", f"/Users/{user['id']}", bad), 400, "noTarget")
    assert scim.request("GET", f"/Users/{user['id']}").json()["displayName"] == "Dave D"


def test_users_patch_read_only_id_400_mutability(scim: Scim) -> None:
    user = scim.create_user("erin")
    body = {"schemas": [PATCH_URN], "Operations": [{"op": "replace", "path": "id", "value": "x"}]}
    _error(scim.request("PATCH", f"/Users/{user['id']}", body), 400, "mutability")


def test_users_delete_archives_and_frees_username(scim: Scim, env: Env) -> None:
    user = scim.create_user("frank")
    assert scim.request("DELETE", f"/Users/{user['id']}").status_code == 204
    _error(scim.request("GET", f"/Users/{user['id']}"), 404)
    assert scim.request("GET", "/Users", params={"filter": 'userName eq "frank"'}).json()["totalResults"] == 0

    async def archived() -> User | None:
        async with env.ctx.sessionmaker() as session:
            return await session.scalar(select(User).where(User.id == uuid.UUID(user["id"])))

    row = env.run(archived)
    assert row is not None and row.deleted_at is not None and row.enabled is False
    assert row.deleted_by is not None and row.deleted_by.startswith("provisioning_token:")
    assert row.archive is not None and row.archive["userName"] == "frank"
    scim.create_user("frank")  # a re-hire gets a new account


def test_users_writes_are_audited_with_the_hr_client_as_actor(scim: Scim, env: Env) -> None:
    user = scim.create_user("gina")
    scim.request(
        "PATCH",
        f"/Users/{user['id']}",
        {"schemas": [PATCH_URN], "Operations": [{"op": "replace", "path": "title", "value": "Boss"}]},
    )
    scim.request("DELETE", f"/Users/{user['id']}")

    async def events() -> list[tuple[str, str, str | None, str, str | None, dict[str, object]]]:
        async with env.ctx.sessionmaker() as session:
            rows = await session.execute(
                select(
                    AuditEvent.action,
                    AuditEvent.actor_type,
                    AuditEvent.surface,
                    AuditEvent.outcome,
                    AuditEvent.request_id,
                    AuditEvent.details,
                ).where(AuditEvent.target_id == user["id"])
            )
            return [tuple(r) for r in rows.all()]  # type: ignore[misc]

    found = env.run(events)
    assert sorted(row[0] for row in found) == ["user.create", "user.delete", "user.update"]
    assert {(row[1], row[2], row[3]) for row in found} == {("provisioning_token", "scim", "success")}
    assert all(row[4] for row in found)  # each entry names the request it came from
    assert next(row[5] for row in found if row[0] == "user.update") == {"changed": ["title"]}


# --- ETags -------------------------------------------------------------------------------------------
def test_etag_if_match_stale_412_and_if_none_match_304(scim: Scim) -> None:
    user = scim.create_user("hank")
    first = user["meta"]["version"]
    body = {"schemas": [PATCH_URN], "Operations": [{"op": "replace", "path": "title", "value": "A"}]}
    assert scim.request("PATCH", f"/Users/{user['id']}", body, headers={"if-match": first}).status_code == 200
    _error(scim.request("PATCH", f"/Users/{user['id']}", body, headers={"if-match": first}), 412)
    current = scim.request("GET", f"/Users/{user['id']}")
    assert current.status_code == 200
    unchanged = scim.request("GET", f"/Users/{user['id']}", headers={"if-none-match": current.headers["etag"]})
    assert unchanged.status_code == 304


def test_etag_concurrent_writes_same_if_match_exactly_one_wins(scim: Scim, env: Env) -> None:
    user = scim.create_user("ivy")
    version = user["meta"]["version"]
    transport = httpx.ASGITransport(app=env.client.app)  # type: ignore[arg-type]

    async def write(title: str) -> int:
        async with httpx.AsyncClient(transport=transport, base_url=env.base_url) as http:
            response = await http.patch(
                scim.base + f"/Users/{user['id']}",
                json={"schemas": [PATCH_URN], "Operations": [{"op": "replace", "path": "title", "value": title}]},
                headers={"authorization": f"Bearer {scim.token}", "if-match": version, "content-type": SCIM_JSON},
            )
            return response.status_code

    async def race() -> list[int]:
        return list(await asyncio.gather(*(write(f"t{i}") for i in range(4))))

    statuses = env.run(race)
    assert sorted(statuses).count(200) == 1, statuses
    assert all(s in (200, 412) for s in statuses)


# --- lifecycle ---------------------------------------------------------------------------------------
def test_lifecycle_active_false_string_revokes_tokens_at_once(env: Env) -> None:
    setup = code_setup(env)
    tokens = exchange_code(env, setup).json()
    scim = Scim(env=env, tenant=setup.tenant, token=provisioning_token(env, setup.tenant))
    assert introspect(env, setup.tenant, tokens["access_token"], setup.client_id, setup.secret)["active"] is True
    body = {"schemas": [PATCH_URN], "Operations": [{"op": "Replace", "path": "active", "value": "False"}]}
    response = scim.request("PATCH", f"/Users/{setup.user_id}", body)
    assert response.status_code == 200, response.text
    assert response.json()["active"] is False
    assert introspect(env, setup.tenant, tokens["access_token"], setup.client_id, setup.secret) == {"active": False}
    assert introspect(env, setup.tenant, tokens["refresh_token"], setup.client_id, setup.secret) == {"active": False}


def test_lifecycle_delete_revokes_tokens_at_once(env: Env) -> None:
    setup = code_setup(env)
    tokens = exchange_code(env, setup).json()
    scim = Scim(env=env, tenant=setup.tenant, token=provisioning_token(env, setup.tenant))
    assert scim.request("DELETE", f"/Users/{setup.user_id}").status_code == 204
    assert introspect(env, setup.tenant, tokens["access_token"], setup.client_id, setup.secret) == {"active": False}


# --- queries -----------------------------------------------------------------------------------------
def test_list_filter_username_eq_entra_probe(scim: Scim) -> None:
    scim.create_user("probe@example.com")
    found = scim.request("GET", "/Users", params={"filter": 'userName eq "PROBE@example.com"'}).json()
    assert found["totalResults"] == 1 and found["Resources"][0]["userName"] == "probe@example.com"
    none = scim.request("GET", "/Users", params={"filter": 'userName eq "nobody-1234"'}).json()
    assert none == {
        "schemas": ["urn:ietf:params:scim:api:messages:2.0:ListResponse"],
        "totalResults": 0,
        "startIndex": 1,
        "itemsPerPage": 0,
        "Resources": [],
    }


def test_list_filter_external_id_and_complex_email_filter(scim: Scim) -> None:
    scim.create_user("u1", externalId="E1", emails=[{"value": "u1@acme.com", "type": "work"}])
    scim.create_user("u2", externalId="E2", emails=[{"value": "u2@other.com", "type": "work"}])
    by_external = scim.request("GET", "/Users", params={"filter": 'externalId eq "E2"'}).json()
    assert [r["userName"] for r in by_external["Resources"]] == ["u2"]
    complex_ = 'emails[type eq "work" and value co "@acme.com"]'
    assert [r["userName"] for r in scim.request("GET", "/Users", params={"filter": complex_}).json()["Resources"]] == [
        "u1"
    ]


def test_list_paging_sorting_and_projection(scim: Scim) -> None:
    for name in ("cc", "aa", "bb", "dd"):
        scim.create_user(name, title=f"T-{name}")
    page = scim.request(
        "GET",
        "/Users",
        params={
            "sortBy": "userName",
            "sortOrder": "descending",
            "startIndex": "2",
            "count": "2",
            "attributes": "userName",
        },
    ).json()
    assert page["totalResults"] == 4 and page["startIndex"] == 2 and page["itemsPerPage"] == 2
    assert [r["userName"] for r in page["Resources"]] == ["cc", "bb"]
    assert set(page["Resources"][0]) <= {"id", "userName", "schemas"}
    excluded = scim.request("GET", "/Users", params={"excludedAttributes": "title", "count": "1"}).json()
    assert "title" not in excluded["Resources"][0]


def test_list_hostile_filters_400_invalid_filter(scim: Scim) -> None:
    scim.create_user("victim")
    for hostile in (
        'userName eq "x" or 1=1',
        "x" * 10000,
        "(" * 500 + 'userName eq "a"' + ")" * 500,
        'userName eq "a") or (userName pr',
        "password pr",
        "nope eq 1",
    ):
        _error(scim.request("GET", "/Users", params={"filter": hostile}), 400, "invalidFilter")
    injection = scim.request("GET", "/Users", params={"filter": "userName eq \"x' OR '1'='1\""}).json()
    assert injection["totalResults"] == 0


def test_search_post_users_and_root(scim: Scim) -> None:
    scim.create_user("searchme", displayName="Search Me")
    scim.create_group("Search Group")
    body = {"schemas": ["urn:ietf:params:scim:api:messages:2.0:SearchRequest"], "filter": 'displayName sw "Search"'}
    users = scim.request("POST", "/Users/.search", body).json()
    assert [r["userName"] for r in users["Resources"]] == ["searchme"]
    both = scim.request("POST", "/.search", body).json()
    assert both["totalResults"] == 2
    _error(scim.request("POST", "/Users/.search", {"filter": "x"}), 400, "invalidSyntax")


# --- Groups ------------------------------------------------------------------------------------------
def test_groups_members_nested_and_user_groups(scim: Scim) -> None:
    alice = scim.create_user("alice")
    inner = scim.create_group("Inner", [alice["id"]])
    outer = scim.create_group("Outer", [inner["id"]])
    member_types = {m["value"]: m["type"] for m in outer["members"]}
    assert member_types == {inner["id"]: "Group"}
    groups = {g["value"]: g["type"] for g in scim.request("GET", f"/Users/{alice['id']}").json()["groups"]}
    assert groups == {inner["id"]: "direct", outer["id"]: "indirect"}
    scim.create_user("loner")
    listed = {r["userName"]: r for r in scim.request("GET", "/Users").json()["Resources"]}
    assert {g["value"] for g in listed["alice"]["groups"]} == {inner["id"], outer["id"]}
    assert "groups" not in listed["loner"]
    cycle = {
        "schemas": [PATCH_URN],
        "Operations": [{"op": "add", "path": "members", "value": [{"value": outer["id"]}]}],
    }
    _error(scim.request("PATCH", f"/Groups/{inner['id']}", cycle), 400, "invalidValue")


def test_groups_patch_member_add_remove_okta_and_entra(scim: Scim) -> None:
    a = scim.create_user("ga")
    b = scim.create_user("gb")
    group = scim.create_group("Team")
    add = {
        "schemas": [PATCH_URN],
        "Operations": [{"op": "Add", "path": "members", "value": [{"value": a["id"]}, {"value": b["id"]}]}],
    }
    assert scim.request("PATCH", f"/Groups/{group['id']}", add).status_code == 200
    remove = {"schemas": [PATCH_URN], "Operations": [{"op": "Remove", "path": f'members[value eq "{a["id"]}"]'}]}
    after = scim.request("PATCH", f"/Groups/{group['id']}", remove).json()
    assert [m["value"] for m in after["members"]] == [b["id"]]
    rename = {
        "schemas": [PATCH_URN],
        "Operations": [{"op": "replace", "value": {"id": group["id"], "displayName": "Team 2"}}],
    }
    assert scim.request("PATCH", f"/Groups/{group['id']}", rename).json()["displayName"] == "Team 2"
    no_members = scim.request("GET", f"/Groups/{group['id']}", params={"excludedAttributes": "members"}).json()
    assert "members" not in no_members


def test_groups_unknown_member_400_and_duplicate_name_409(scim: Scim) -> None:
    body = {"schemas": [GROUP_URN], "displayName": "G", "members": [{"value": str(uuid.uuid4())}]}
    _error(scim.request("POST", "/Groups", body), 400, "invalidValue")
    scim.create_group("Dup")
    _error(scim.request("POST", "/Groups", {"schemas": [GROUP_URN], "displayName": "dup"}), 409, "uniqueness")


def test_groups_put_okta_style_replaces_members(scim: Scim) -> None:
    a = scim.create_user("pa")
    group = scim.create_group("PutTeam", [a["id"]])
    body = {"schemas": [GROUP_URN], "id": group["id"], "displayName": "PutTeam", "members": []}
    replaced = scim.request("PUT", f"/Groups/{group['id']}", body).json()
    assert "members" not in replaced or replaced["members"] == []
    assert scim.request("DELETE", f"/Groups/{group['id']}").status_code == 204
    _error(scim.request("GET", f"/Groups/{group['id']}"), 404)


# --- Bulk --------------------------------------------------------------------------------------------
BULK = "urn:ietf:params:scim:api:messages:2.0:BulkRequest"


def test_bulk_bulk_id_references_resolve_in_any_order(scim: Scim) -> None:
    body = {
        "schemas": [BULK],
        "Operations": [
            {
                "method": "POST",
                "path": "/Groups",
                "bulkId": "g1",
                "data": {
                    "schemas": [GROUP_URN],
                    "displayName": "BG",
                    "members": [{"type": "User", "value": "bulkId:u1"}],
                },
            },
            {
                "method": "POST",
                "path": "/Users",
                "bulkId": "u1",
                "data": {"schemas": [USER_URN], "userName": "bulk-user"},
            },
            {
                "method": "POST",
                "path": "/Users",
                "bulkId": "u2",
                "data": {"schemas": [USER_URN], "userName": "bulk-user-2"},
            },
        ],
    }
    response = scim.request("POST", "/Bulk", body)
    assert response.status_code == 200, response.text
    results = {op["bulkId"]: op for op in response.json()["Operations"]}
    assert {op["status"] for op in results.values()} == {"201"}
    group = scim.request("GET", "/Groups/" + results["g1"]["location"].rsplit("/", 1)[1]).json()
    assert [m["value"] for m in group["members"]] == [results["u1"]["location"].rsplit("/", 1)[1]]


def test_bulk_fail_on_errors_stops_and_each_op_reports(scim: Scim) -> None:
    scim.create_user("taken")
    ops = [
        {"method": "POST", "path": "/Users", "bulkId": f"b{i}", "data": {"schemas": [USER_URN], "userName": name}}
        for i, name in enumerate(["taken", "new-1", "taken", "new-2"])
    ]
    ops.insert(1, {"method": "DELETE", "path": f"/Users/{uuid.uuid4()}"})
    response = scim.request("POST", "/Bulk", {"schemas": [BULK], "failOnErrors": 2, "Operations": ops})
    statuses = [op["status"] for op in response.json()["Operations"]]
    assert statuses[:2] == ["409", "404"]
    assert len(statuses) == 2
    assert response.json()["Operations"][0]["response"]["scimType"] == "uniqueness"


def test_bulk_over_max_operations_413_and_nothing_runs(scim: Scim) -> None:
    ops = [
        {"method": "POST", "path": "/Users", "bulkId": f"b{i}", "data": {"schemas": [USER_URN], "userName": f"m{i}"}}
        for i in range(1001)
    ]
    _error(scim.request("POST", "/Bulk", {"schemas": [BULK], "Operations": ops}), 413)
    assert scim.request("GET", "/Users", params={"count": "0"}).json()["totalResults"] == 0


def test_bulk_over_max_payload_413(scim: Scim) -> None:
    big = {
        "schemas": [BULK],
        "Operations": [
            {
                "method": "POST",
                "path": "/Users",
                "bulkId": "x",
                "data": {"schemas": [USER_URN], "userName": "a" * 5_000_000},
            }
        ],
    }
    _error(scim.request("POST", "/Bulk", big), 413)


def test_bulk_user_batch_many_created_with_values(scim: Scim) -> None:
    ops = [
        {
            "method": "POST",
            "path": "/Users",
            "bulkId": f"b{i}",
            "data": {
                "schemas": [USER_URN],
                "userName": f"batch{i}",
                "emails": [{"value": f"b{i}@acme.com", "type": "work"}],
            },
        }
        for i in range(50)
    ]
    ops.append(
        {"method": "POST", "path": "/Users", "bulkId": "dup", "data": {"schemas": [USER_URN], "userName": "BATCH3"}}
    )
    result = scim.request("POST", "/Bulk", {"schemas": [BULK], "Operations": ops}).json()["Operations"]
    assert [op["status"] for op in result].count("201") == 50
    assert result[-1]["status"] == "409"
    found = scim.request("GET", "/Users", params={"filter": 'emails.value eq "b7@acme.com"'}).json()
    assert [r["userName"] for r in found["Resources"]] == ["batch7"]


def test_unknown_scim_path_404_scim_error(scim: Scim) -> None:
    _error(scim.request("GET", "/Nope"), 404)
    _error(scim.env.client.get("/tenants/no-such-tenant/scim/v2/Users"), 404)


def test_me_endpoint_501_not_implemented(scim: Scim) -> None:
    # RFC 7644 §3.11: a provider without /Me SHOULD answer 501.
    _error(scim.request("GET", "/Me"), 501)


def test_other_methods_on_endpoints_405_with_allow(scim: Scim) -> None:
    # RFC 7644 §4: discovery endpoints are read-only; RFC 9110 §15.5.6: 405 names the allowed methods.
    for method, path, allowed in (
        ("POST", "/ServiceProviderConfig", "GET"),
        ("PUT", "/ResourceTypes", "GET"),
        ("PATCH", "/Schemas", "GET"),
        ("DELETE", "/Schemas/urn:ietf:params:scim:schemas:core:2.0:User", "GET"),
        ("GET", "/Bulk", "POST"),
        ("DELETE", "/Users", "GET, POST"),
        ("GET", "/Users/.search", "POST"),
    ):
        response = scim.request(method, path, {} if method in ("POST", "PUT", "PATCH") else None)
        _error(response, 405)
        assert response.headers["allow"] == allowed, (method, path)


def test_other_protocol_versions_400_invalid_vers(scim: Scim) -> None:
    # RFC 7644 §3.13: a version segment names the protocol version; one we do not speak is rejected.
    root = scim.base.removesuffix("/v2")
    auth = {"authorization": f"Bearer {scim.token}"}
    for method, path in (("GET", "/v1/Users"), ("POST", "/v3/Users"), ("GET", "/v1"), ("DELETE", "/v10/Groups/x")):
        response = scim.env.client.request(method, root + path, headers=auth)
        assert response.headers["content-type"].startswith(SCIM_JSON)
        _error(response, 400, "invalidVers")
    _error(scim.env.client.get(root + "/v2", headers=auth), 404)
    _error(scim.env.client.get(root + "/nope/Users", headers=auth), 404)


def test_default_projection_shortcut_is_taken_only_without_request_only_attributes() -> None:
    from idhub.scim import schemas

    # The router returns stored resources unprojected when no attributes are asked for; that is only
    # right for a type with no ``returned: request`` attribute (and ``password`` never enters a resource).
    for rt in (schemas.USER_TYPE, schemas.GROUP_TYPE):
        request_only = [
            f"{attribute.name}.{sub.name}" if sub else attribute.name
            for schema in rt.schemas
            for attribute in schema.attributes
            for sub in (None, *attribute.sub_attributes)
            if (sub or attribute).returned == "request"
        ]
        assert rt.has_request_only == bool(request_only)
    assert not schemas.USER_TYPE.has_request_only
    assert schemas.GROUP_TYPE.has_request_only


def test_group_members_display_is_returned_only_when_requested(scim: Scim) -> None:
    """``members.display`` is derived by idhub: a client reads back the members it wrote, as it wrote them,
    and gets the names when it asks for them (RFC 7643 §2.2 ``returned: request``)."""
    user = scim.create_user("display.me", displayName="Display Me")
    created = scim.create_group("named", [user["id"]])
    assert [set(m) for m in created["members"]] == [{"value", "$ref", "type"}]
    plain = scim.request("GET", f"/Groups/{created['id']}").json()
    assert "display" not in plain["members"][0]
    asked = scim.request("GET", f"/Groups/{created['id']}", params={"attributes": "members.value,members.display"})
    assert asked.json()["members"] == [{"value": user["id"], "display": "Display Me"}]
    query = {"filter": 'displayName eq "named"', "attributes": "members.display"}
    listed = scim.request("GET", "/Groups", params=query)
    assert listed.json()["Resources"][0]["members"] == [{"display": "Display Me"}]
