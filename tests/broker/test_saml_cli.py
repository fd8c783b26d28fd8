"""``idhub idp create|update --type saml`` as operators use them: metadata in, SP URLs out, key sealed."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import pytest
from saml2.metadata import create_metadata_string

from tests.broker.test_idp_cli import tenant
from tests.broker.test_saml import XMLSEC1, make_keys
from tests.broker.test_saml_routes import _idp_config
from tests.test_cli import _assert_one_line_error, _invoke, _ok_json, cli_env

__all__ = ["cli_env", "tenant"]

pytestmark = pytest.mark.skipif(
    XMLSEC1 is None, reason="pysaml2, the test IdP, writes its metadata with the xmlsec1 binary (Debian xmlsec1)"
)


def _metadata(folder: Path, name: str) -> tuple[Path, str]:
    """Write IdP metadata with a fresh signing certificate; return the file and that certificate."""
    keys = make_keys(name)
    (folder / name).mkdir()
    path = folder / f"{name}.xml"
    path.write_text(create_metadata_string(None, config=_idp_config(folder / name, keys, None), sign=False).decode())
    return path, keys.cert_pem


def test_cli_saml_idp_create_prints_sp_urls_and_update_rolls_the_certificate_over(
    cli_env: dict[str, str], tenant: str, tmp_path: Path
) -> None:
    first, first_cert = _metadata(tmp_path, "one")
    created = _ok_json(
        _invoke(
            cli_env, "idp", "create", "--tenant", tenant, "--alias", "corp", "--type", "saml",
            "--metadata-file", str(first), "--json",
        )
    )  # fmt: skip
    base = f"http://testserver/tenants/{tenant}/broker/corp/saml"
    assert (created["acs_url"], created["metadata_url"], created["entity_id"]) == (
        f"{base}/acs",
        f"{base}/metadata",
        f"{base}/metadata",
    )
    assert created["has_secret"] is True and created["config"]["idp_certificates"] == [first_cert]
    assert created["config"]["allow_idp_initiated"] is False
    database = cli_env["IDHUB_DATABASE_URL"].removeprefix("sqlite+aiosqlite:///")
    with closing(sqlite3.connect(database)) as db:
        (stored,) = db.execute("SELECT secret_encrypted FROM identity_provider WHERE alias = 'corp'").fetchone()
    assert b"PRIVATE KEY" not in stored  # the SP key is sealed with the master key

    second, second_cert = _metadata(tmp_path, "two")
    updated = _ok_json(
        _invoke(
            cli_env, "idp", "update", "--tenant", tenant, "--alias", "corp", "--metadata-file", str(second),
            "--idp-initiated", "--json",
        )
    )  # fmt: skip
    assert updated["config"]["idp_certificates"] == [second_cert]
    assert updated["config"]["allow_idp_initiated"] is True
    assert updated["acs_url"] == f"{base}/acs"  # the SP side does not move


def test_cli_saml_idp_refuses_bad_metadata_and_another_idp_on_update(
    cli_env: dict[str, str], tenant: str, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.xml"
    bad.write_text('<!DOCTYPE x [<!ENTITY a "b">]><x>&a;</x>')
    _assert_one_line_error(
        _invoke(cli_env, "idp", "create", "--tenant", tenant, "--alias", "corp", "--type", "saml",
                "--metadata-file", str(bad))
    )  # fmt: skip
    _assert_one_line_error(_invoke(cli_env, "idp", "create", "--tenant", tenant, "--alias", "corp", "--type", "saml"))
    good, _cert = _metadata(tmp_path, "one")
    _ok_json(
        _invoke(cli_env, "idp", "create", "--tenant", tenant, "--alias", "corp", "--type", "saml",
                "--metadata-file", str(good), "--json")
    )  # fmt: skip
    other = tmp_path / "other.xml"
    other.write_text(good.read_text().replace("https://idp.example.test/idp", "https://other.example.test/idp"))
    _assert_one_line_error(
        _invoke(cli_env, "idp", "update", "--tenant", tenant, "--alias", "corp", "--metadata-file", str(other))
    )
