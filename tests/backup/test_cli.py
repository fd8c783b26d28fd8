"""``idhub backup``, ``backup verify``, ``restore``, ``archive purge`` and ``user export`` as operators use them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from idhub.cli import main
from tests.backup.helpers import empty_target
from tests.conftest import TEST_MASTER_KEY


def _env(url: str, root: Path) -> dict[str, str]:
    return {
        "IDHUB_DATABASE_URL": url,
        "IDHUB_DATA_DIR": str(root / "data"),
        "IDHUB_MASTER_KEY": TEST_MASTER_KEY,
        "IDHUB_PUBLIC_URL": "http://testserver",
        "IDHUB_ENVIRONMENT": "test",
    }


def _invoke(env: dict[str, str], *args: str) -> Result:
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def _ok(result: Result) -> dict[str, Any]:
    assert result.exit_code == 0, result.output + result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1, result.stdout
    value: dict[str, Any] = json.loads(lines[0])
    return value


def _one_line_error(result: Result, expected: str) -> None:
    assert result.exit_code != 0 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], result.stderr


@pytest.fixture
def source(tmp_path: Path) -> dict[str, str]:
    env = _env(f"sqlite+aiosqlite:///{tmp_path / 'source.db'}", tmp_path)
    _ok(CliRunner().invoke(main, ["init", "--tenant", "acme"], env=env))
    _ok(_invoke(env, "user", "create", "--tenant", "acme", "--username", "alice", "--email", "a@example.com", "--json"))
    _ok(_invoke(env, "group", "create", "--tenant", "acme", "--name", "Staff", "--json"))
    _ok(_invoke(env, "group", "add-member", "--tenant", "acme", "--group", "Staff", "--username", "alice", "--json"))
    return env


@pytest.mark.parametrize("target_kind", ["sqlite", "postgresql"])
def test_cli_backup_verify_restore_round_trip(source: dict[str, str], tmp_path: Path, target_kind: str) -> None:
    file = tmp_path / "acme.idhub-backup"
    taken = _ok(_invoke(source, "backup", "--output", str(file), "--json"))
    assert taken["scope"] == "all" and taken["tenants"] == ["acme"] and taken["tables"]["user"] == 1
    assert taken["bytes"] == file.stat().st_size and not file.with_name(file.name + ".partial").exists()
    assert file.stat().st_mode & 0o777 == 0o600
    checked = _ok(_invoke(source, "backup", "verify", "--input", str(file), "--json"))
    assert checked["valid"] is True and checked["tables"] == taken["tables"] and checked["file_id"] == taken["file_id"]

    target = _env(empty_target(target_kind, tmp_path, "cli"), tmp_path)
    restored = _ok(_invoke(target, "restore", "--input", str(file), "--json"))
    assert restored["restored"] is True and restored["tables"] == taken["tables"]
    verdict = _ok(_invoke(target, "audit", "verify", "--json"))
    assert verdict["intact"] is True
    actions = [json.loads(line)["action"] for line in _invoke(target, "audit", "export").stdout.splitlines()]
    assert actions[-1] == "backup.restore" and "backup.create" not in actions  # taken after the snapshot
    _one_line_error(_invoke(target, "restore", "--input", str(file)), "not empty")


def test_cli_backup_of_one_tenant_and_errors(source: dict[str, str], tmp_path: Path) -> None:
    file = tmp_path / "one.idhub-backup"
    assert _ok(_invoke(source, "backup", "--output", str(file), "--tenant", "acme", "--json"))["scope"] == "acme"
    _one_line_error(_invoke(source, "backup", "--output", str(tmp_path / "x"), "--tenant", "nope"), "no tenant")
    _one_line_error(_invoke(source, "backup"), "--output")
    missing = {**source, "IDHUB_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'missing.db'}"}
    _one_line_error(_invoke(missing, "backup", "--output", str(tmp_path / "x")), "no database")
    assert not (tmp_path / "missing.db").exists()
    assert not (tmp_path / "x").exists() and not (tmp_path / "x.partial").exists()
    data = bytearray(file.read_bytes())
    data[len(data) // 2] ^= 0x40
    flipped = tmp_path / "flipped.idhub-backup"
    flipped.write_bytes(bytes(data))
    _one_line_error(_invoke(source, "backup", "verify", "--input", str(flipped)), "damaged")
    other_key = {**source, "IDHUB_MASTER_KEY": "ZGlmZmVyZW50LWtleS1mb3ItdGhlLXRlc3RzLTAxMjM="}
    _one_line_error(_invoke(other_key, "backup", "verify", "--input", str(file)), "wrong master key")
    _one_line_error(_invoke(source, "backup", "verify", "--input", str(tmp_path / "source.db")), "not an idhub backup")


def test_cli_archive_purge_and_user_export(source: dict[str, str], tmp_path: Path) -> None:
    _ok(_invoke(source, "user", "delete", "--tenant", "acme", "--username", "alice", "--json"))
    counted = _ok(_invoke(source, "archive", "purge", "--dry-run", "--json"))
    assert counted == {
        "dry_run": True,
        "purged": 0,
        "tenants": {
            "acme": {"purged": 0, "retention_days": 365, "deleted_before": counted["tenants"]["acme"]["deleted_before"]}
        },
    }
    short = {**source, "IDHUB_ARCHIVE__RETENTION_DAYS": "1"}
    assert (
        _ok(_invoke(short, "archive", "purge", "--tenant", "acme", "--json"))["tenants"]["acme"]["retention_days"] == 1
    )
    out = tmp_path / "alice.json"
    result = _invoke(source, "user", "export", "--tenant", "acme", "--username", "alice", "--output", str(out))
    assert result.exit_code == 0, result.stderr
    document = json.loads(out.read_text())
    assert document["user"]["username"] == "alice" and document["archive"]["groups"][0]["displayName"] == "Staff"
    _one_line_error(_invoke(source, "user", "export", "--tenant", "acme", "--username", "nobody"), "no such user")
    _one_line_error(_invoke(source, "user", "export", "--tenant", "acme"), "exactly one")
