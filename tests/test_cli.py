"""The ``idhub`` command as operators and scripts use it: JSON out, one-line errors, non-zero exits."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from fastapi.testclient import TestClient

from idhub.app import create_app
from idhub.cli import main
from idhub.openapi import export_openapi, render_openapi
from idhub.settings import Settings
from tests.conftest import TEST_MASTER_KEY


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
    ],
)
def test_cli_client_create_bad_input_one_line_error(
    cli_env: dict[str, str], tenant: dict[str, Any], extra: list[str]
) -> None:
    result = _invoke(cli_env, "client", "create", "--tenant", tenant["tenant"], "--name", "x", *extra, "--json")
    assert result.exit_code != 0
    assert result.stdout == ""
    assert "Traceback" not in result.stderr


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
