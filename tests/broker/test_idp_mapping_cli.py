"""``idhub idp create|update --mapping-file`` and ``idhub idp preview`` as operators use them."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from tests.broker.standin import StandInProvider, serve
from tests.test_cli import _assert_one_line_error, _invoke, _ok_json, _slug, cli_env

__all__ = ["cli_env"]

MAPPING = {
    "rules": [
        {"kind": "attribute", "target": "department", "claim": "department"},
        {"kind": "attribute", "target": "userName", "template": "{given_name}.{family_name}"},
        {"kind": "group", "claim": "groups", "match": "sales-([a-z]+)", "replace": "Sales \\1"},
    ]
}
SAMPLE = {
    "sub": "sample-1",
    "email": "pat@corp.example",
    "email_verified": True,
    "given_name": "Pat",
    "family_name": "Quinn",
    "department": "Ops",
    "groups": ["sales-emea", "sales-mars"],
}


@pytest.fixture(scope="module")
def upstream() -> Iterator[StandInProvider]:
    yield from serve(StandInProvider())


@pytest.fixture
def tenant(cli_env: dict[str, str]) -> str:
    slug = _slug()
    _ok_json(_invoke(cli_env, "init", "--tenant", slug))
    return slug


def _file(tmp_path: Path, name: str, content: Any) -> str:
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return str(path)


def _create(cli_env: dict[str, str], tenant: str, upstream: StandInProvider, *extra: str) -> Any:
    return _invoke(
        cli_env,
        "idp", "create", "--tenant", tenant, "--alias", "corp", "--type", "oidc", "--issuer", upstream.issuer,
        "--client-id", upstream.client_id, "--internal", *extra, "--json",
    )  # fmt: skip


def _rows(cli_env: dict[str, str], tenant: str) -> dict[str, int]:
    database = cli_env["IDHUB_DATABASE_URL"].removeprefix("sqlite+aiosqlite:///")
    with closing(sqlite3.connect(database)) as db:
        (tenant_id,) = db.execute("SELECT id FROM tenant WHERE slug = ?", (tenant,)).fetchone()
        count = {
            table: db.execute(f'SELECT count(*) FROM "{table}" WHERE tenant_id = ?', (tenant_id,)).fetchone()[0]
            for table in ("user", "federated_identity", "group", "audit_event", "identity_provider")
        }
        count["group_member"] = db.execute(
            'SELECT count(*) FROM group_member JOIN "group" ON "group".id = group_member.group_id '
            'WHERE "group".tenant_id = ?',
            (tenant_id,),
        ).fetchone()[0]
    return count


def test_cli_idp_mapping_file_stored_normalised_and_cleared(
    cli_env: dict[str, str], tenant: str, upstream: StandInProvider, tmp_path: Path
) -> None:
    created = _ok_json(_create(cli_env, tenant, upstream, "--mapping-file", _file(tmp_path, "m.json", MAPPING)))
    assert created["config"]["mapping"] == {"defaults": True, "sync": True, "rules": MAPPING["rules"]}
    changed = {"rules": [{"kind": "constant", "group": "Staff"}], "sync": False}
    updated = _ok_json(
        _invoke(cli_env, "idp", "update", "--tenant", tenant, "--alias", "corp",
                "--mapping-file", _file(tmp_path, "n.json", changed), "--json")
    )  # fmt: skip
    assert updated["config"]["mapping"] == {"defaults": True, "sync": False, "rules": changed["rules"]}
    cleared = _ok_json(
        _invoke(cli_env, "idp", "update", "--tenant", tenant, "--alias", "corp", "--clear-mapping", "--json")
    )
    assert "mapping" not in cleared["config"]


@pytest.mark.parametrize(
    "mapping",
    [
        "{not json",
        {"rules": [{"kind": "attribute", "target": "password", "claim": "x"}]},
        {"rules": [{"kind": "group", "claim": "g", "match": "(a+)+"}]},
        {"rules": [], "surprise": True},
    ],
)
def test_cli_idp_bad_mapping_refused_before_saving(
    cli_env: dict[str, str], tenant: str, upstream: StandInProvider, tmp_path: Path, mapping: Any
) -> None:
    bad = _file(tmp_path, "bad.json", mapping)
    _assert_one_line_error(_create(cli_env, tenant, upstream, "--mapping-file", bad))
    _assert_one_line_error(_invoke(cli_env, "idp", "show", "--tenant", tenant, "--alias", "corp", "--json"))
    _ok_json(_create(cli_env, tenant, upstream))
    _assert_one_line_error(
        _invoke(cli_env, "idp", "update", "--tenant", tenant, "--alias", "corp", "--mapping-file", bad, "--json")
    )
    shown = _ok_json(_invoke(cli_env, "idp", "show", "--tenant", tenant, "--alias", "corp", "--json"))
    assert "mapping" not in shown["config"]


def test_cli_idp_preview_prints_mapping_and_link_and_changes_nothing(
    cli_env: dict[str, str], tenant: str, upstream: StandInProvider, tmp_path: Path
) -> None:
    _ok_json(_create(cli_env, tenant, upstream, "--mapping-file", _file(tmp_path, "m.json", MAPPING)))
    _ok_json(_invoke(cli_env, "group", "create", "--tenant", tenant, "--name", "Sales EMEA", "--json"))
    before = _rows(cli_env, tenant)
    claims = _file(tmp_path, "claims.json", SAMPLE)
    preview = _ok_json(
        _invoke(cli_env, "idp", "preview", "--tenant", tenant, "--alias", "corp", "--claims-file", claims, "--json")
    )
    assert preview["attributes"] == {
        "department": "Ops",
        "email": "pat@corp.example",
        "familyName": "Quinn",
        "givenName": "Pat",
        "userName": "Pat.Quinn",
    }
    assert preview["groups"] == ["Sales emea", "Sales mars"]
    assert preview["link"]["rule"] == "jit" and preview["link"]["userName"] == "Pat.Quinn"
    assert preview["changes"]["join"] == ["Sales EMEA"] and preview["changes"]["unknown_groups"] == ["Sales mars"]
    assert _rows(cli_env, tenant) == before  # no user, link, membership or audit row

    text = _invoke(cli_env, "idp", "preview", "--tenant", tenant, "--alias", "corp", "--claims-file", claims)
    assert text.exit_code == 0 and "link: jit  user Pat.Quinn" in text.stdout and "group: Sales emea" in text.stdout
    assert _rows(cli_env, tenant) == before


@pytest.mark.parametrize("claims", ["[1, 2]", "{broken", '"text"'])
def test_cli_idp_preview_bad_claims_file_one_line_error(
    cli_env: dict[str, str], tenant: str, upstream: StandInProvider, tmp_path: Path, claims: str
) -> None:
    _ok_json(_create(cli_env, tenant, upstream))
    path = _file(tmp_path, "claims.json", claims)
    _assert_one_line_error(
        _invoke(cli_env, "idp", "preview", "--tenant", tenant, "--alias", "corp", "--claims-file", path, "--json")
    )


def test_cli_idp_preview_unknown_alias_one_line_error(cli_env: dict[str, str], tenant: str, tmp_path: Path) -> None:
    path = _file(tmp_path, "claims.json", SAMPLE)
    _assert_one_line_error(
        _invoke(cli_env, "idp", "preview", "--tenant", tenant, "--alias", "nope", "--claims-file", path, "--json")
    )
