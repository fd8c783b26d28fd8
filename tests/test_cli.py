"""The ``idhub`` command as operators and scripts use it: JSON out, one-line errors, non-zero exits."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
import uuid
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner, Result
from fastapi.testclient import TestClient

from idhub.app import create_app
from idhub.cli import main
from idhub.context import build_context
from idhub.openapi import export_openapi, render_openapi
from idhub.sessions.login import authenticate_password
from idhub.settings import Settings
from idhub.tenants.service import require_tenant
from tests.conftest import TEST_MASTER_KEY
from tests.redis_support import redis_url_or_skip


@pytest.fixture(scope="module")
def cli_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment for CLI runs: a temporary SQLite database and a fixed master key."""
    root = tmp_path_factory.mktemp("idhub-cli")
    return {
        "IDHUB_DATABASE_URL": f"sqlite+aiosqlite:///{root / 'cli.db'}",
        "IDHUB_DATA_DIR": str(root / "data"),
        "IDHUB_MASTER_KEY": TEST_MASTER_KEY,
        "IDHUB_PUBLIC_URL": "http://testserver",
        "IDHUB_ENVIRONMENT": "test",
    }


def _invoke(env: dict[str, str], *args: str, stdin: str | None = None) -> Result:
    return CliRunner().invoke(main, list(args), env=env, input=stdin, catch_exceptions=False)


def _ok_json(result: Result) -> dict[str, Any]:
    assert result.exit_code == 0, result.output + result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1, f"expected one JSON line, got {result.stdout!r}"
    value = json.loads(lines[0])
    assert isinstance(value, dict)
    return value


def _assert_one_line_error(result: Result) -> None:
    assert result.exit_code != 0
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr


def _slug() -> str:
    return f"acme-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def tenant(cli_env: dict[str, str]) -> dict[str, Any]:
    """Run ``idhub init`` for a fresh tenant and return its JSON."""
    return _ok_json(_invoke(cli_env, "init", "--tenant", _slug()))


def test_cli_init_prints_exactly_bootstrap_contract(cli_env: dict[str, str]) -> None:
    slug = _slug()
    result = _ok_json(_invoke(cli_env, "init", "--tenant", slug))
    assert set(result) == {"tenant", "issuer", "admin_client_id", "admin_client_secret"}
    assert result["tenant"] == slug
    assert result["issuer"] == f"http://testserver/tenants/{slug}"
    assert len(result["admin_client_secret"]) >= 43  # >= 256 bits


def test_cli_init_existing_tenant_new_admin_client(cli_env: dict[str, str], tenant: dict[str, Any]) -> None:
    again = _ok_json(_invoke(cli_env, "init", "--tenant", tenant["tenant"]))
    assert again["tenant"] == tenant["tenant"]
    assert again["admin_client_id"] != tenant["admin_client_id"]


@pytest.mark.parametrize("slug", ["Bad_Slug", "-lead", "trail-", "a" * 64, "with space", "ünï"])
def test_cli_init_bad_slug_one_line_error(cli_env: dict[str, str], slug: str) -> None:
    _assert_one_line_error(_invoke(cli_env, "init", "--tenant", slug))


def test_cli_client_create_json_id_and_secret(cli_env: dict[str, str], tenant: dict[str, Any]) -> None:
    result = _ok_json(
        _invoke(
            cli_env,
            "client",
            "create",
            "--tenant",
            tenant["tenant"],
            "--name",
            "web app",
            "--redirect-uri",
            "https://app.example/cb",
            "--grant-type",
            "authorization_code",
            "--grant-type",
            "refresh_token",
            "--scope",
            "openid profile",
            "--json",
        )
    )
    assert set(result) == {"client_id", "client_secret"}
    assert result["client_id"] and result["client_secret"]


def test_cli_client_create_private_key_jwt_with_jwks_uri(cli_env: dict[str, str], tenant: dict[str, Any]) -> None:
    args = ["client", "create", "--tenant", tenant["tenant"], "--name", "signer", "--grant-type", "client_credentials"]
    result = _ok_json(
        _invoke(cli_env, *args, "--auth-method", "private_key_jwt", "--jwks-uri", "https://keys.example/jwks", "--json")
    )
    assert result["client_id"] and result["client_secret"] is None
    loopback = ["--auth-method", "private_key_jwt", "--jwks-uri", "http://127.0.0.1:9/jwks", "--internal-jwks-uri"]
    assert _ok_json(_invoke(cli_env, *args, *loopback, "--json"))["client_id"]


def test_cli_client_create_public_no_secret(cli_env: dict[str, str], tenant: dict[str, Any]) -> None:
    args = ["client", "create", "--tenant", tenant["tenant"], "--name", "spa", "--public", "--json"]
    result = _ok_json(_invoke(cli_env, *args, "--redirect-uri", "https://spa.example/cb"))
    assert result["client_secret"] is None


@pytest.mark.parametrize(
    "extra",
    [
        ["--grant-type", "password"],
        ["--grant-type", "authorization_code"],  # no redirect URI
        ["--redirect-uri", "not a uri", "--grant-type", "authorization_code"],
        ["--access-token-alg", "HS256"],
        ["--auth-method", "private_key_jwt", "--grant-type", "client_credentials"],  # no keys
        ["--auth-method", "private_key_jwt", "--grant-type", "client_credentials", "--jwks-uri", "http://k.example/j"],
        ["--auth-method", "private_key_jwt", "--grant-type", "client_credentials", "--jwks-uri", "https://10.0.0.1/"],
    ],
)
def test_cli_client_create_bad_input_one_line_error(
    cli_env: dict[str, str], tenant: dict[str, Any], extra: list[str]
) -> None:
    result = _invoke(cli_env, "client", "create", "--tenant", tenant["tenant"], "--name", "x", *extra, "--json")
    assert result.exit_code != 0
    assert result.stdout == ""
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "extra",
    [
        ["--redirect-uri", "http://app.example/cb"],
        ["--redirect-uri", "https://app.example/cb#"],
        ["--redirect-uri", "https://*.example.com/cb"],
        ["--redirect-uri", "https://user@app.example/cb"],
        ["--redirect-uri", "https://app.example\\cb"],
        ["--redirect-uri", "https://app.example/cb\nX-Injected: 1"],
        ["--redirect-uri", "javascript:alert(1)"],
        ["--redirect-uri", "blob:https://app.example/1"],
        ["--redirect-uri", "about:blank"],
        ["--redirect-uri", "ftp://app.example/cb"],
        ["--redirect-uri", "http://localhost:8080/cb", "--public"],
        ["--redirect-uri", "https://app.example/cb", "--post-logout-redirect-uri", "http://app.example/bye"],
        ["--redirect-uri", "https://app.example/cb", "--backchannel-logout-uri", "http://rp.example/logout"],
        ["--redirect-uri", "https://app.example/cb", "--backchannel-logout-uri", "https://192.168.0.10/logout"],
        ["--redirect-uri", "https://app.example/cb", "--backchannel-logout-uri", "https://127.0.0.1/logout"],
    ],
)
def test_cli_client_create_bad_uri_one_line_error(
    cli_env: dict[str, str], tenant: dict[str, Any], extra: list[str]
) -> None:
    result = _invoke(cli_env, "client", "create", "--tenant", tenant["tenant"], "--name", "x", *extra, "--json")
    _assert_one_line_error(result)
    assert "URI" in result.stderr


def test_cli_client_create_native_and_internal_backchannel_accepted(
    cli_env: dict[str, str], tenant: dict[str, Any]
) -> None:
    base = ["client", "create", "--tenant", tenant["tenant"], "--json"]
    native = ["--name", "cli app", "--public", "--redirect-uri", "http://127.0.0.1:8400/cb"]
    assert _ok_json(_invoke(cli_env, *base, *native, "--redirect-uri", "com.example.app:/callback"))["client_id"]
    peer = ["--name", "test peer", "--redirect-uri", "https://app.example/cb"]
    backchannel = ["--backchannel-logout-uri", "http://127.0.0.1:9/logout"]
    _assert_one_line_error(_invoke(cli_env, *base, *peer, *backchannel))
    assert _ok_json(_invoke(cli_env, *base, *peer, *backchannel, "--internal-backchannel"))["client_secret"]


def test_cli_client_create_unknown_tenant_one_line_error(cli_env: dict[str, str]) -> None:
    _assert_one_line_error(_invoke(cli_env, "client", "create", "--tenant", "no-such-tenant", "--name", "x", "--json"))


def test_cli_user_create_password_stdin_json_id(cli_env: dict[str, str], tenant: dict[str, Any]) -> None:
    args = ["user", "create", "--tenant", tenant["tenant"], "--username", "alice", "--email", "alice@example.com"]
    result = _ok_json(_invoke(cli_env, *args, "--password-stdin", "--json", stdin="correct horse battery\n"))
    assert set(result) == {"id"}
    uuid.UUID(result["id"])


def test_cli_user_create_duplicate_one_line_error(cli_env: dict[str, str], tenant: dict[str, Any]) -> None:
    args = ["user", "create", "--tenant", tenant["tenant"], "--username", "bob", "--json"]
    _ok_json(_invoke(cli_env, *args))
    duplicate = _invoke(cli_env, "user", "create", "--tenant", tenant["tenant"], "--username", "BOB", "--json")
    _assert_one_line_error(duplicate)
    assert "taken" in duplicate.stderr


def test_cli_user_create_short_password_one_line_error(cli_env: dict[str, str], tenant: dict[str, Any]) -> None:
    args = ["user", "create", "--tenant", tenant["tenant"], "--username", "carol", "--password-stdin", "--json"]
    _assert_one_line_error(_invoke(cli_env, *args, stdin="short\n"))


def test_cli_keys_rotate_json_new_active_kids(cli_env: dict[str, str], tenant: dict[str, Any]) -> None:
    result = _ok_json(_invoke(cli_env, "keys", "rotate", "--tenant", tenant["tenant"], "--json"))
    assert result["tenant"] == tenant["tenant"]
    assert len(result["active_kids"]) == 2
    second = _ok_json(_invoke(cli_env, "keys", "rotate", "--tenant", tenant["tenant"], "--json"))
    assert not set(second["active_kids"]) & set(result["active_kids"])


def test_cli_keys_rotate_unknown_tenant_one_line_error(cli_env: dict[str, str]) -> None:
    _assert_one_line_error(_invoke(cli_env, "keys", "rotate", "--tenant", "no-such-tenant", "--json"))


def test_cli_tenant_update_access_token_alg_json(cli_env: dict[str, str], tenant: dict[str, Any]) -> None:
    args = ("tenant", "update", "--tenant", tenant["tenant"], "--access-token-alg", "RS256", "--json")
    result = _ok_json(_invoke(cli_env, *args))
    assert result["settings"]["access_token_alg"] == "RS256"


def test_cli_tenant_update_unknown_tenant_one_line_error(cli_env: dict[str, str]) -> None:
    _assert_one_line_error(_invoke(cli_env, "tenant", "update", "--tenant", "no-such-tenant", "--name", "x"))


def test_cli_bad_master_key_one_line_error(cli_env: dict[str, str]) -> None:
    _assert_one_line_error(_invoke({**cli_env, "IDHUB_MASTER_KEY": "too-short"}, "init", "--tenant", _slug()))


def test_cli_migrate_prints_json(cli_env: dict[str, str]) -> None:
    assert _ok_json(_invoke(cli_env, "migrate")) == {"migrated": True}


def test_cli_openapi_output_file_equals_export(cli_env: dict[str, str], tmp_path: Path) -> None:
    target = tmp_path / "openapi.json"
    result = _invoke(cli_env, "openapi", "--output", str(target))
    assert result.exit_code == 0, result.stderr
    assert target.read_text(encoding="utf-8") == render_openapi(export_openapi())
    assert target.read_text(encoding="utf-8").endswith("}\n")


def test_cli_init_admin_client_gets_token_by_client_credentials(
    cli_env: dict[str, str], tenant: dict[str, Any]
) -> None:
    settings = Settings(
        database_url=cli_env["IDHUB_DATABASE_URL"],
        data_dir=Path(cli_env["IDHUB_DATA_DIR"]),
        master_key=cli_env["IDHUB_MASTER_KEY"],
        public_url="http://testserver",
        environment="test",
    )
    app = create_app(settings)
    with TestClient(app, base_url="http://testserver") as client:
        response = client.post(
            f"/tenants/{tenant['tenant']}/token",
            data={"grant_type": "client_credentials", "scope": "idhub:admin"},
            auth=(tenant["admin_client_id"], tenant["admin_client_secret"]),
        )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["token_type"].lower() == "bearer"
    assert body["scope"] == "idhub:admin"


def test_cli_provisioning_token_create_shown_once_stored_hashed(
    cli_env: dict[str, str], tenant: dict[str, Any]
) -> None:
    result = _ok_json(_invoke(cli_env, "provisioning-token", "create", "--tenant", tenant["tenant"], "--json"))
    assert set(result) == {"tenant", "id", "token"} and result["token"].startswith("idhub_pt_")
    assert len(result["token"]) >= 40


def test_cli_provisioning_token_unknown_tenant_one_line_error(cli_env: dict[str, str]) -> None:
    _assert_one_line_error(_invoke(cli_env, "provisioning-token", "create", "--tenant", "no-such-tenant"))


# --- user disable / enable / delete, groups, provisioning tokens (and their audit entries) -------------
SCIM_USER_URN = "urn:ietf:params:scim:schemas:core:2.0:User"
PASSWORD = "correct horse battery"


def _cli_settings(cli_env: dict[str, str], **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": cli_env["IDHUB_DATABASE_URL"],
        "data_dir": Path(cli_env["IDHUB_DATA_DIR"]),
        "master_key": cli_env["IDHUB_MASTER_KEY"],
        "public_url": "http://testserver",
        "environment": "test",
        "revocation_poll_seconds": 0.1,
    }
    values.update(overrides)
    return Settings(**values)


def _db_path(cli_env: dict[str, str]) -> str:
    return cli_env["IDHUB_DATABASE_URL"].removeprefix("sqlite+aiosqlite:///")


def _query(cli_env: dict[str, str], sql: str, *params: Any) -> list[sqlite3.Row]:
    with closing(sqlite3.connect(_db_path(cli_env), timeout=30)) as db:
        db.row_factory = sqlite3.Row
        return db.execute(sql, params).fetchall()


def _audit_of(cli_env: dict[str, str], target_id: str) -> list[sqlite3.Row]:
    """Return the audit entries about one object, oldest first."""
    return _query(
        cli_env,
        "SELECT action, actor_type, actor_id, surface, outcome, target_type, details FROM audit_event"
        " WHERE target_id = ? ORDER BY occurred_at",
        target_id,
    )


def _assert_cli_audited(cli_env: dict[str, str], target_id: str, action: str) -> sqlite3.Row:
    """Assert one entry ``action`` about ``target_id`` was written by an operator on the CLI surface."""
    rows = [row for row in _audit_of(cli_env, target_id) if row["action"] == action]
    assert len(rows) == 1, [dict(row) for row in _audit_of(cli_env, target_id)]
    row = rows[0]
    assert (row["actor_type"], row["surface"], row["outcome"]) == ("cli", "cli", "success")
    assert row["actor_id"], "the operator's login name is recorded"
    return row


def _signs_in(cli_env: dict[str, str], slug: str, username: str, password: str = PASSWORD) -> bool:
    """Try a password sign-in the way the login page does (the directory's one sign-in function)."""

    async def work() -> bool:
        ctx = build_context(_cli_settings(cli_env))
        try:
            async with ctx.uow(surface="test") as uow:
                found = await require_tenant(uow.session, slug)
                result = await authenticate_password(
                    uow,
                    passwords=ctx.passwords,
                    throttle=ctx.throttle,
                    tenant_id=found.id,
                    username=username,
                    password=password,
                    address="192.0.2.1",
                )
            return result.ok
        finally:
            await ctx.close()

    return asyncio.run(work())


def _create_user(cli_env: dict[str, str], slug: str, username: str) -> str:
    args = ["user", "create", "--tenant", slug, "--username", username, "--password-stdin", "--json"]
    return str(_ok_json(_invoke(cli_env, *args, stdin=PASSWORD + "\n"))["id"])


@pytest.fixture(scope="module")
def cli_app(cli_env: dict[str, str]) -> Iterator[TestClient]:
    """An app serving the CLI's database (another process, as far as the CLI is concerned)."""
    with TestClient(create_app(_cli_settings(cli_env)), base_url="http://testserver") as client:
        yield client


def _scim_token(cli_env: dict[str, str], slug: str) -> tuple[str, str]:
    created = _ok_json(_invoke(cli_env, "provisioning-token", "create", "--tenant", slug, "--json"))
    return str(created["id"]), str(created["token"])


def _scim_get(client: TestClient, slug: str, token: str, path: str) -> httpx.Response:
    response: httpx.Response = client.get(
        f"/tenants/{slug}/scim/v2{path}", headers={"authorization": f"Bearer {token}"}
    )
    return response


def test_cli_user_disable_enable_json_and_sign_in(cli_env: dict[str, str], tenant: dict[str, Any]) -> None:
    slug = tenant["tenant"]
    user_id = _create_user(cli_env, slug, "dora")
    assert _signs_in(cli_env, slug, "dora")

    disabled = _ok_json(_invoke(cli_env, "user", "disable", "--tenant", slug, "--username", "dora", "--json"))
    assert disabled == {"id": user_id, "active": False}
    assert not _signs_in(cli_env, slug, "dora")

    enabled = _ok_json(_invoke(cli_env, "user", "enable", "--tenant", slug, "--id", user_id, "--json"))
    assert enabled == {"id": user_id, "active": True}
    assert _signs_in(cli_env, slug, "dora")

    _assert_cli_audited(cli_env, user_id, "user.disable")
    _assert_cli_audited(cli_env, user_id, "user.enable")
    _assert_cli_audited(cli_env, user_id, "user.create")


def test_cli_user_disable_seen_over_scim_and_revoked_at_once(
    cli_env: dict[str, str], tenant: dict[str, Any], cli_app: TestClient
) -> None:
    slug = tenant["tenant"]
    user_id = _create_user(cli_env, slug, "emil")
    _token_id, token = _scim_token(cli_env, slug)
    _ok_json(_invoke(cli_env, "user", "disable", "--tenant", slug, "--id", user_id, "--json"))
    resource = _scim_get(cli_app, slug, token, f"/Users/{user_id}")
    assert resource.status_code == 200, resource.text
    assert resource.json()["active"] is False
    # The disabling committed a subject revocation: every access token of the user is cut off.
    kinds = _query(cli_env, "SELECT kind FROM revocation WHERE value = ?", user_id)
    assert [row["kind"] for row in kinds] == ["subject"]


def test_cli_user_delete_archives_and_frees_username(
    cli_env: dict[str, str], tenant: dict[str, Any], cli_app: TestClient
) -> None:
    slug = tenant["tenant"]
    user_id = _create_user(cli_env, slug, "fay")
    deleted = _ok_json(_invoke(cli_env, "user", "delete", "--tenant", slug, "--username", "FAY", "--json"))
    assert deleted["id"] == user_id and deleted["active"] is False
    assert not _signs_in(cli_env, slug, "fay")

    [archived] = _query(
        cli_env,
        'SELECT deleted_at, deleted_by, archive, password_hash FROM "user" WHERE id = ?',
        uuid.UUID(user_id).hex,  # SQLite keeps UUIDs as 32 hex digits
    )
    assert archived["deleted_at"] is not None and archived["password_hash"] is None
    assert archived["deleted_by"].startswith("cli:")
    assert json.loads(archived["archive"])["userName"] == "fay"

    _id, token = _scim_token(cli_env, slug)
    assert _scim_get(cli_app, slug, token, f"/Users/{user_id}").status_code == 404
    assert _create_user(cli_env, slug, "fay") != user_id  # a re-hire gets the name back
    _assert_cli_audited(cli_env, user_id, "user.delete")
    _assert_one_line_error(_invoke(cli_env, "user", "delete", "--tenant", slug, "--id", user_id, "--json"))


@pytest.mark.parametrize("command", ["disable", "enable", "delete"])
@pytest.mark.parametrize(
    "selector",
    [
        ["--username", "nobody"],
        ["--id", "00000000-0000-4000-8000-000000000000"],
        ["--id", "not-a-uuid"],
        [],  # neither --username nor --id
        ["--username", "gus", "--id", "00000000-0000-4000-8000-000000000000"],  # both
    ],
)
def test_cli_user_lifecycle_bad_selector_one_line_error(
    cli_env: dict[str, str], tenant: dict[str, Any], command: str, selector: list[str]
) -> None:
    _assert_one_line_error(_invoke(cli_env, "user", command, "--tenant", tenant["tenant"], *selector, "--json"))


def test_cli_user_disable_unknown_tenant_one_line_error(cli_env: dict[str, str]) -> None:
    _assert_one_line_error(_invoke(cli_env, "user", "disable", "--tenant", "no-such-tenant", "--username", "x"))


def test_cli_group_create_add_remove_member_visible_over_scim(
    cli_env: dict[str, str], tenant: dict[str, Any], cli_app: TestClient
) -> None:
    slug = tenant["tenant"]
    user_id = _create_user(cli_env, slug, "hal")
    created = _ok_json(_invoke(cli_env, "group", "create", "--tenant", slug, "--name", "Engineering", "--json"))
    group_id = str(created["id"])
    uuid.UUID(group_id)
    _id, token = _scim_token(cli_env, slug)
    assert _scim_get(cli_app, slug, token, f"/Groups/{group_id}").json().get("members", []) == []

    added = _ok_json(
        _invoke(
            cli_env, "group", "add-member", "--tenant", slug, "--group", "engineering", "--username", "hal", "--json"
        )
    )
    assert added == {"group": group_id, "user": user_id, "member": True}
    group = _scim_get(cli_app, slug, token, f"/Groups/{group_id}").json()
    assert [m["value"] for m in group["members"]] == [user_id]
    user = _scim_get(cli_app, slug, token, f"/Users/{user_id}").json()
    assert [g["value"] for g in user["groups"]] == [group_id]

    removed = _ok_json(
        _invoke(cli_env, "group", "remove-member", "--tenant", slug, "--group", group_id, "--id", user_id, "--json")
    )
    assert removed == {"group": group_id, "user": user_id, "member": False}
    assert _scim_get(cli_app, slug, token, f"/Groups/{group_id}").json().get("members", []) == []

    _assert_cli_audited(cli_env, group_id, "group.create")
    changes = [row for row in _audit_of(cli_env, group_id) if row["action"] == "group.members"]
    assert [json.loads(row["details"]) for row in changes] == [
        {"added": [user_id], "removed": []},
        {"added": [], "removed": [user_id]},
    ]
    assert {(row["actor_type"], row["surface"]) for row in changes} == {("cli", "cli")}


def test_cli_group_member_change_moves_scim_version(
    cli_env: dict[str, str], tenant: dict[str, Any], cli_app: TestClient
) -> None:
    slug = tenant["tenant"]
    _create_user(cli_env, slug, "ida")
    group_id = str(_ok_json(_invoke(cli_env, "group", "create", "--tenant", slug, "--name", "Ops", "--json"))["id"])
    _id, token = _scim_token(cli_env, slug)
    before = _scim_get(cli_app, slug, token, f"/Groups/{group_id}")
    args = ("group", "add-member", "--tenant", slug, "--group", "Ops", "--username", "ida", "--json")
    _ok_json(_invoke(cli_env, *args))
    after = cli_app.get(
        f"/tenants/{slug}/scim/v2/Groups/{group_id}",
        headers={"authorization": f"Bearer {token}", "if-none-match": before.headers["etag"]},
    )
    assert after.status_code == 200


def test_cli_group_create_duplicate_name_one_line_error(cli_env: dict[str, str], tenant: dict[str, Any]) -> None:
    args = ["group", "create", "--tenant", tenant["tenant"], "--name", "Sales", "--json"]
    _ok_json(_invoke(cli_env, *args))
    _assert_one_line_error(_invoke(cli_env, "group", "create", "--tenant", tenant["tenant"], "--name", "SALES"))


@pytest.mark.parametrize("command", ["add-member", "remove-member"])
def test_cli_group_member_unknown_group_or_user_one_line_error(
    cli_env: dict[str, str], tenant: dict[str, Any], command: str
) -> None:
    slug = tenant["tenant"]
    _create_user(cli_env, slug, "jo")
    _ok_json(_invoke(cli_env, "group", "create", "--tenant", slug, "--name", "Known", "--json"))
    for group, who in (("Unknown", ["--username", "jo"]), ("Known", ["--username", "nobody"])):
        _assert_one_line_error(_invoke(cli_env, "group", command, "--tenant", slug, "--group", group, *who, "--json"))


def test_cli_provisioning_token_list_never_shows_secrets(cli_env: dict[str, str], tenant: dict[str, Any]) -> None:
    slug = tenant["tenant"]
    first = _ok_json(_invoke(cli_env, "provisioning-token", "create", "--tenant", slug, "--name", "Workday", "--json"))
    _ok_json(_invoke(cli_env, "provisioning-token", "create", "--tenant", slug, "--name", "BambooHR", "--json"))
    listed = _invoke(cli_env, "provisioning-token", "list", "--tenant", slug, "--json")
    result = _ok_json(listed)
    tokens = result["tokens"]
    assert len(tokens) == 2
    assert {t["name"] for t in tokens} == {"Workday", "BambooHR"}
    assert all(set(t) == {"id", "name", "created_at", "revoked_at"} for t in tokens)
    assert all(t["revoked_at"] is None for t in tokens)
    assert first["id"] in {t["id"] for t in tokens}

    plain = _invoke(cli_env, "provisioning-token", "list", "--tenant", slug)
    assert plain.exit_code == 0 and first["id"] in plain.stdout
    hashes = [
        row["token_hash"] for row in _query(cli_env, "SELECT token_hash FROM provisioning_token WHERE name = 'Workday'")
    ]
    for output in (listed.stdout, plain.stdout):
        assert first["token"] not in output and "idhub_pt_" not in output
        assert not any(token_hash in output for token_hash in hashes)


def test_cli_provisioning_token_revoke_then_scim_401(
    cli_env: dict[str, str], tenant: dict[str, Any], cli_app: TestClient
) -> None:
    slug = tenant["tenant"]
    token_id, token = _scim_token(cli_env, slug)
    _other_id, other = _scim_token(cli_env, slug)
    assert _scim_get(cli_app, slug, token, "/Users").status_code == 200  # warm the app's token cache

    revoked = _ok_json(_invoke(cli_env, "provisioning-token", "revoke", "--tenant", slug, "--id", token_id, "--json"))
    assert revoked["id"] == token_id and revoked["revoked_at"]
    # Another process (the app) hears of it by its revocation poll (0.1 s here), well before its cache expires.
    deadline = time.monotonic() + 3
    while (status := _scim_get(cli_app, slug, token, "/Users").status_code) == 200 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert status == 401
    assert _scim_get(cli_app, slug, other, "/Users").status_code == 200  # only that token

    again = _ok_json(_invoke(cli_env, "provisioning-token", "revoke", "--tenant", slug, "--id", token_id, "--json"))
    assert again["revoked_at"] == revoked["revoked_at"]  # revoking twice changes nothing
    listed = _ok_json(_invoke(cli_env, "provisioning-token", "list", "--tenant", slug, "--json"))["tokens"]
    assert {t["id"]: bool(t["revoked_at"]) for t in listed} == {token_id: True, _other_id: False}
    _assert_cli_audited(cli_env, token_id, "provisioning_token.create")
    _assert_cli_audited(cli_env, token_id, "provisioning_token.revoke")  # once, though revoked twice


@pytest.mark.parametrize("token_id", ["00000000-0000-4000-8000-000000000000", "not-a-uuid"])
def test_cli_provisioning_token_revoke_unknown_one_line_error(
    cli_env: dict[str, str], tenant: dict[str, Any], token_id: str
) -> None:
    _assert_one_line_error(
        _invoke(cli_env, "provisioning-token", "revoke", "--tenant", tenant["tenant"], "--id", token_id, "--json")
    )


def test_cli_provisioning_token_revoke_other_tenants_token_refused(
    cli_env: dict[str, str], tenant: dict[str, Any]
) -> None:
    other = _ok_json(_invoke(cli_env, "init", "--tenant", _slug()))["tenant"]
    token_id, _token = _scim_token(cli_env, other)
    _assert_one_line_error(
        _invoke(cli_env, "provisioning-token", "revoke", "--tenant", tenant["tenant"], "--id", token_id, "--json")
    )
    listed = _ok_json(_invoke(cli_env, "provisioning-token", "list", "--tenant", other, "--json"))["tokens"]
    assert [(t["id"], t["revoked_at"]) for t in listed] == [(token_id, None)]


def test_cli_every_mutation_audited_as_operator(cli_env: dict[str, str], tenant: dict[str, Any]) -> None:
    slug = tenant["tenant"]
    client = _ok_json(_invoke(cli_env, "client", "create", "--tenant", slug, "--name", "svc", "--json"))
    _assert_cli_audited(cli_env, client["client_id"], "client.create")
    rows = _audit_of(cli_env, client["client_id"])
    assert all(client["client_secret"] not in str(tuple(row)) for row in rows)
    token_id, token = _scim_token(cli_env, slug)
    assert all(token not in str(tuple(row)) for row in _audit_of(cli_env, token_id))


def test_cli_provisioning_token_revoke_broadcast_to_serving_processes_via_redis(
    cli_env: dict[str, str], tenant: dict[str, Any]
) -> None:
    url = redis_url_or_skip()
    slug = tenant["tenant"]
    # The serving process polls once a minute and caches tokens for seconds: only the broadcast is in time.
    settings = _cli_settings(cli_env, redis_url=url, revocation_poll_seconds=60)
    with TestClient(create_app(settings), base_url="http://testserver") as serving:
        token_id, token = _scim_token(cli_env, slug)
        assert _scim_get(serving, slug, token, "/Users").status_code == 200
        time.sleep(0.2)  # let the subscription settle
        args = ("provisioning-token", "revoke", "--tenant", slug, "--id", token_id, "--json")
        _ok_json(_invoke({**cli_env, "IDHUB_REDIS_URL": url}, *args))
        deadline = time.monotonic() + 1.5
        while (status := _scim_get(serving, slug, token, "/Users").status_code) == 200:
            if time.monotonic() > deadline:
                break
            time.sleep(0.02)
        assert status == 401


def test_cli_every_command_that_defines_its_work_runs_it() -> None:
    """A command whose ``work`` is never run prints nothing and exits 0 (as a merge once left one)."""
    import ast
    import inspect

    import idhub.cli

    tree = ast.parse(inspect.getsource(idhub.cli))
    for node in tree.body:
        if not isinstance(node, ast.FunctionDef):
            continue
        defines = any(isinstance(n, ast.AsyncFunctionDef) and n.name == "work" for n in node.body)
        runs = any(
            isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "_run" for n in ast.walk(node)
        )
        assert runs or not defines, f"{node.name} defines work() but never runs it"


def test_cli_version_and_short_help() -> None:
    from idhub import __version__
    from idhub.cli import main

    runner = CliRunner()
    for flag in ("--version", "-V"):
        answer = runner.invoke(main, [flag])
        assert answer.exit_code == 0 and answer.output.strip() == f"idhub {__version__}"
    for args in (["-h"], ["client", "create", "-h"], ["backup", "-h"]):
        answer = runner.invoke(main, args)
        assert answer.exit_code == 0 and "Usage:" in answer.output


def test_cli_every_option_has_help() -> None:
    import click

    from idhub.cli import main

    missing: list[str] = []

    def walk(command: click.Command, path: str) -> None:
        for param in command.params:
            if isinstance(param, click.Option) and not param.help and param.name not in ("help", "version"):
                missing.append(f"{path} --{param.name}")
        if isinstance(command, click.Group):
            for name, sub in command.commands.items():
                walk(sub, f"{path} {name}")

    walk(main, "idhub")
    assert not missing, missing


def test_cli_client_create_auth_method_none_is_a_public_client(cli_env: dict[str, str], tenant: dict[str, Any]) -> None:
    args = ["client", "create", "--tenant", tenant["tenant"], "--name", "spa", "--auth-method", "none", "--json"]
    result = _ok_json(_invoke(cli_env, *args, "--redirect-uri", "https://spa.example/cb"))
    assert result["client_secret"] is None
