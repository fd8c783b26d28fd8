"""People through the admin API: the directory's rules, ETags, pagination, strict bodies."""

from __future__ import annotations

from tests.admin.conftest import Admin, assert_problem
from tests.conftest import Env


def test_users_create_read_patch_delete_roundtrip(admin: Admin) -> None:
    created = admin.call("POST", "users", json={"username": "Alice", "email": "alice@example.com", "given_name": "A"})
    assert created.status_code == 201, created.text
    user = created.json()
    assert user["username"] == "Alice" and user["email"] == "alice@example.com" and user["active"] is True
    assert created.headers["etag"] == 'W/"1"'
    assert created.headers["location"].endswith(f"/users/{user['id']}")
    read = admin.call("GET", f"users/{user['id']}")
    assert read.status_code == 200 and read.json()["given_name"] == "A" and read.json()["groups"] == []
    patched = admin.call("PATCH", f"users/{user['id']}", json={"given_name": None, "email": "a2@example.com"})
    assert patched.status_code == 200, patched.text
    assert patched.json()["given_name"] is None and patched.json()["email"] == "a2@example.com"
    assert patched.headers["etag"] != created.headers["etag"]
    assert admin.call("DELETE", f"users/{user['id']}").status_code == 204
    assert_problem(admin.call("GET", f"users/{user['id']}"), 404)


def test_users_patch_with_stale_if_match_is_412_and_changes_nothing(admin: Admin) -> None:
    user = admin.call("POST", "users", json={"username": "bob"}).json()
    assert admin.call("PATCH", f"users/{user['id']}", json={"title": "x"}, headers={"if-match": 'W/"1"'}).is_success
    stale = admin.call("PATCH", f"users/{user['id']}", json={"title": "y"}, headers={"if-match": 'W/"1"'})
    assert_problem(stale, 412)
    assert admin.call("GET", f"users/{user['id']}").json()["title"] == "x"
    assert_problem(admin.call("DELETE", f"users/{user['id']}", headers={"if-match": 'W/"1"'}), 412)


def test_users_duplicate_username_is_409(admin: Admin) -> None:
    assert admin.call("POST", "users", json={"username": "carol"}).status_code == 201
    assert_problem(admin.call("POST", "users", json={"username": "CAROL"}), 409)


def test_users_bad_bodies_are_422_problems(admin: Admin) -> None:
    body = assert_problem(admin.call("POST", "users", json={"username": "dave", "shoe_size": 44}), 422)
    assert body["errors"][0]["location"][-1] == "shoe_size"
    assert_problem(admin.call("POST", "users", json={"username": ""}), 422)
    assert_problem(admin.call("POST", "users", json=["not", "an", "object"]), 422)
    assert_problem(admin.call("POST", "users", content=b"{not json", headers={"content-type": "application/json"}), 422)
    assert_problem(admin.call("POST", "users", json={"username": "eve", "email": "not-an-address"}), 422)
    assert_problem(admin.call("POST", "users", json={"username": "eve", "password": "short"}), 422)


def test_users_caller_supplied_id_is_ignored(admin: Admin) -> None:
    wanted = "00000000-0000-0000-0000-000000000001"
    user = admin.call("POST", "users", json={"username": "frank", "id": wanted, "version": 9}).json()
    assert user["id"] != wanted and user["version"] == 1


def test_users_malformed_or_foreign_id_is_404(env: Env, admin: Admin) -> None:
    assert_problem(admin.call("GET", "users/not-a-uuid"), 404)
    other = env.tenant()
    foreign = env.user(other, "grace")
    assert_problem(admin.call("GET", f"users/{foreign}"), 404)
    assert_problem(admin.call("PATCH", f"users/{foreign}", json={"active": False}), 404)


def test_users_list_pages_through_everyone_once_with_cursor_and_link(admin: Admin) -> None:
    names = [f"user{i:02d}" for i in range(7)]
    for name in names:
        assert admin.call("POST", "users", json={"username": name}).status_code == 201
    seen: list[str] = []
    url = "users?limit=3"
    while url:
        answer = admin.call("GET", url)
        assert answer.status_code == 200
        page = answer.json()
        seen += [item["username"] for item in page["items"]]
        if page["next_cursor"] is None:
            assert "link" not in answer.headers
            url = ""
        else:
            assert 'rel="next"' in answer.headers["link"]
            url = f"users?limit=3&cursor={page['next_cursor']}"
    assert seen == names


def test_users_list_filters(admin: Admin) -> None:
    admin.call("POST", "users", json={"username": "sales-ann", "email": "ann@example.com"})
    admin.call("POST", "users", json={"username": "sales-bo", "active": False})
    admin.call("POST", "users", json={"username": "ops-cy"})
    names = lambda q: [u["username"] for u in admin.call("GET", f"users?{q}").json()["items"]]  # noqa: E731
    assert names("username_prefix=SALES") == ["sales-ann", "sales-bo"]
    assert names("username_prefix=sales&active=true") == ["sales-ann"]
    assert names("active=false") == ["sales-bo"]
    assert names("email=ann@example.com") == ["sales-ann"]
    assert names("username_prefix=%25") == []  # a wildcard is a literal


def test_users_list_bad_parameters_are_problems(admin: Admin) -> None:
    assert_problem(admin.call("GET", "users?cursor=%%%"), 400)
    assert_problem(admin.call("GET", "users?cursor=WyJhIiwiYiJd"), 400)  # ["a","b"]: wrong shape
    assert_problem(admin.call("GET", "users?limit=0"), 422)
    assert_problem(admin.call("GET", "users?limit=100000"), 422)


def test_users_deactivation_cuts_off_their_tokens(env: Env, admin: Admin) -> None:
    user = admin.call("POST", "users", json={"username": "henry"}).json()
    assert admin.call("PATCH", f"users/{user['id']}", json={"active": False}).json()["active"] is False
    listed = admin.call("GET", "audit?action=user.disable").json()["items"]
    assert listed and listed[0]["target"]["id"] == user["id"]
    assert listed[0]["surface"] == "admin" and listed[0]["actor"]["type"] == "client"


def test_helpdesk_manages_people_but_only_reads_groups(admin: Admin) -> None:
    created = admin.call("POST", "users", role="helpdesk", json={"username": "ivy"})
    assert created.status_code == 201
    assert admin.call("GET", "groups", role="helpdesk").status_code == 200
    assert_problem(admin.call("POST", "groups", role="helpdesk", json={"name": "x"}), 403)


def test_users_export_and_archived_records(admin: Admin) -> None:
    user = admin.call("POST", "users", json={"username": "leaver", "email": "leaver@example.com"}).json()
    group = admin.call("POST", "groups", json={"name": "Finance"}).json()
    admin.call("POST", f"groups/{group['id']}/members", json={"users": [user["id"]]})
    exported = admin.call("GET", f"users/{user['id']}/export", role="helpdesk")
    assert exported.status_code == 200 and exported.headers["cache-control"] == "no-store"
    assert "leaver@example.com" in exported.text and "password_hash" not in exported.text
    assert admin.call("DELETE", f"users/{user['id']}").status_code == 204
    others = []
    for name in ("gone1", "gone2"):
        other = admin.call("POST", "users", json={"username": name}).json()
        admin.call("DELETE", f"users/{other['id']}")
        others.append(other["id"])
    first = admin.call("GET", "archived-users?limit=2").json()
    assert [item["id"] for item in first["items"]] == others[::-1] and first["next_cursor"]
    rest = admin.call("GET", f"archived-users?limit=2&cursor={first['next_cursor']}").json()
    assert [item["id"] for item in rest["items"]] == [user["id"]] and rest["next_cursor"] is None
    record = rest["items"][0]
    assert record["deleted_by"] and record["archive"]["groups"][0]["displayName"] == "Finance"
    # A deleted person's data can still be exported on request (GDPR Art. 15), until the record is purged.
    assert admin.call("GET", f"users/{user['id']}/export").status_code == 200
    assert_problem(admin.call("GET", "users/00000000-0000-0000-0000-000000000000/export"), 404)
    assert admin.call("GET", "audit?action=user.export").json()["items"]


def test_users_oversized_body_is_413_problem_declared_or_streamed(admin: Admin) -> None:
    from idhub.admin.problems import MAX_BODY

    big = b'{"username": "' + b"x" * (MAX_BODY + 10) + b'"}'
    declared = admin.call("POST", "users", content=big, headers={"content-type": "application/json"})
    assert_problem(declared, 413)

    def chunks() -> object:
        for start in range(0, len(big), 65536):
            yield big[start : start + 65536]

    streamed = admin.call("POST", "users", content=chunks(), headers={"content-type": "application/json"})
    assert_problem(streamed, 413)
    assert admin.call("GET", "users?username_prefix=xxx").json()["items"] == []
