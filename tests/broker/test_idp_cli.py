"""``idhub idp create|list|show|update|delete`` as operators use them, against a stand-in upstream."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from typing import Any

import pytest

from tests.broker.standin import StandInProvider, serve
from tests.test_cli import _assert_one_line_error, _invoke, _ok_json, _slug, cli_env

__all__ = ["cli_env"]  # the CLI tests' fixture: a temporary SQLite database and a fixed master key


@pytest.fixture(scope="module")
def upstream() -> Iterator[StandInProvider]:
    yield from serve(StandInProvider())


@pytest.fixture
def tenant(cli_env: dict[str, str]) -> str:
    slug = _slug()
    _ok_json(_invoke(cli_env, "init", "--tenant", slug))
    return slug


def _create(cli_env: dict[str, str], tenant: str, upstream: StandInProvider, *extra: str, alias: str = "corp") -> Any:
    return _invoke(
        cli_env,
        "idp", "create", "--tenant", tenant, "--alias", alias, "--type", "oidc", "--issuer", upstream.issuer,
        "--client-id", upstream.client_id, "--client-secret-stdin", *extra, "--json",
        stdin=upstream.client_secret + "\n",
    )  # fmt: skip


def test_cli_idp_create_prints_callback_and_seals_the_secret(
    cli_env: dict[str, str], tenant: str, upstream: StandInProvider
) -> None:
    created = _ok_json(_create(cli_env, tenant, upstream, "--internal", "--email-domain", "Corp.Example"))
    assert created["callback_url"] == f"http://testserver/tenants/{tenant}/broker/corp/callback"
    assert created["type"] == "oidc" and created["has_secret"] is True and created["jit"] is True
    assert created["config"]["token_endpoint"] == f"{upstream.issuer}/token"
    assert created["config"]["email_domains"] == ["corp.example"]
    assert upstream.client_secret not in json.dumps(created)
    database = cli_env["IDHUB_DATABASE_URL"].removeprefix("sqlite+aiosqlite:///")
    with closing(sqlite3.connect(database)) as db:
        (stored,) = db.execute("SELECT secret_encrypted FROM identity_provider WHERE alias = 'corp'").fetchone()
    assert upstream.client_secret.encode() not in stored  # sealed with the master key

    listed = _ok_json(_invoke(cli_env, "idp", "list", "--tenant", tenant, "--json"))
    assert [p["alias"] for p in listed["identity_providers"]] == ["corp"]
    shown = _ok_json(_invoke(cli_env, "idp", "show", "--tenant", tenant, "--alias", "corp", "--json"))
    assert shown["id"] == created["id"]
    updated = _ok_json(
        _invoke(cli_env, "idp", "update", "--tenant", tenant, "--alias", "corp", "--disable", "--no-jit", "--json")
    )
    assert (updated["enabled"], updated["jit"]) == (False, False)
    deleted = _ok_json(_invoke(cli_env, "idp", "delete", "--tenant", tenant, "--alias", "corp", "--json"))
    assert deleted == {"tenant": tenant, "alias": "corp", "deleted": True}
    _assert_one_line_error(_invoke(cli_env, "idp", "show", "--tenant", tenant, "--alias", "corp", "--json"))


def test_cli_idp_create_refuses_loopback_without_internal(
    cli_env: dict[str, str], tenant: str, upstream: StandInProvider
) -> None:
    _assert_one_line_error(_create(cli_env, tenant, upstream))


@pytest.mark.parametrize(
    ("args", "stdin"),
    [
        (["--alias", "Bad Alias", "--type", "oidc", "--issuer", "https://idp.example", "--client-id", "x"], None),
        (["--alias", "gh", "--type", "github", "--client-id", "x"], None),
        (["--alias", "x", "--type", "oidc", "--client-id", "x"], None),  # no issuer
        (["--alias", "x", "--type", "oidc", "--issuer", "https://idp.example", "--client-secret-stdin"], ""),
    ],
)
def test_cli_idp_create_bad_input_one_line_error(
    cli_env: dict[str, str], tenant: str, args: list[str], stdin: str | None
) -> None:
    _assert_one_line_error(_invoke(cli_env, "idp", "create", "--tenant", tenant, *args, "--json", stdin=stdin))


def test_cli_idp_duplicate_alias_conflict(cli_env: dict[str, str], tenant: str, upstream: StandInProvider) -> None:
    _ok_json(_create(cli_env, tenant, upstream, "--internal", alias="dup"))
    _assert_one_line_error(_create(cli_env, tenant, upstream, "--internal", alias="dup"))


def test_cli_idp_issuer_must_match_discovery(cli_env: dict[str, str], tenant: str, upstream: StandInProvider) -> None:
    result = _invoke(
        cli_env,
        "idp", "create", "--tenant", tenant, "--alias", "slash", "--type", "oidc", "--issuer", upstream.issuer + "/",
        "--client-id", "x", "--internal", "--json",
    )  # fmt: skip
    _assert_one_line_error(result)


def test_cli_idp_userinfo_mode_set_changed_and_refused_where_it_means_nothing(
    cli_env: dict[str, str], tenant: str, upstream: StandInProvider
) -> None:
    created = _ok_json(_create(cli_env, tenant, upstream, "--internal", "--userinfo", "always", alias="ui"))
    assert created["config"]["userinfo"] == "always"
    update = ["idp", "update", "--tenant", tenant, "--alias", "ui", "--json"]
    assert _ok_json(_invoke(cli_env, *update, "--userinfo", "auto"))["config"]["userinfo"] == "auto"
    github = [
        "idp", "create", "--tenant", tenant, "--alias", "gh", "--type", "github", "--client-id", "x",
        "--client-secret-stdin", "--userinfo", "always", "--json",
    ]  # fmt: skip
    _assert_one_line_error(_invoke(cli_env, *github, stdin="s\n"))  # OAuth 2 networks have no UserInfo mode
