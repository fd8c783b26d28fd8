"""``idhub doctor``: the effective settings with secrets hidden, what it finds, what is wrong, and its exit status."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from idhub.cli import main
from idhub.doctor import redact_url
from idhub.settings import setting_names
from idhub.storage.migrate import head_revision
from tests.conftest import TEST_MASTER_KEY, postgres_url
from tests.redis_support import redis_url_or_skip

# A database password that must never be printed (PostgreSQL on the test server trusts loopback).
DB_PASSWORD = "doctor-Db-Pa55word-7f3a"
SINK_TOKEN = "doctor-sink-token-91bc2d"


def _invoke(env: dict[str, str], *args: str) -> Result:
    """Run ``idhub`` with exactly ``env`` as its ``IDHUB_*`` settings (the suite's own variables kept)."""
    isolated: dict[str, str | None] = {
        name: None for name in os.environ if name.upper().startswith("IDHUB_") and not name.startswith("IDHUB_TEST_")
    }
    isolated.update(env)
    return CliRunner().invoke(main, list(args), env=isolated, catch_exceptions=False)


def _doctor_json(env: dict[str, str]) -> tuple[int, dict[str, Any]]:
    result = _invoke(env, "doctor", "--json")
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1, result.stdout
    report = json.loads(lines[0])
    assert isinstance(report, dict)
    assert report["ok"] is (result.exit_code == 0)
    return result.exit_code, report


def _errors(report: dict[str, Any]) -> list[str]:
    return [p["message"] for p in report["problems"] if p["severity"] == "error"]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def sqlite_env(tmp_path: Path) -> dict[str, str]:
    """Settings of a fresh SQLite installation (not yet initialised)."""
    return {
        "IDHUB_DATA_DIR": str(tmp_path / "data"),
        "IDHUB_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'data' / 'idhub.db'}",
        "IDHUB_MASTER_KEY": TEST_MASTER_KEY,
        "IDHUB_PUBLIC_URL": "http://testserver",
        "IDHUB_ENVIRONMENT": "test",
    }


def _init(env: dict[str, str], slug: str = "acme") -> None:
    result = _invoke(env, "init", "--tenant", slug)
    assert result.exit_code == 0, result.output


def test_doctor_healthy_sqlite_exits_zero_schema_at_head_keys_listed_no_secret(sqlite_env: dict[str, str]) -> None:
    env = {**sqlite_env, "IDHUB_AUDIT__SINK": "https://collector.example/ingest", "IDHUB_AUDIT__SINK_TOKEN": SINK_TOKEN}
    _init(env)
    result = _invoke(env, "doctor")
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert f"schema: at head ({head_revision()})" in text
    assert "acme: rotates on demand" in text
    assert "active   ES256" in text and "active   RS256" in text
    assert "no problems found" in text or "0 errors" in text
    assert TEST_MASTER_KEY not in result.output and SINK_TOKEN not in result.output
    assert "master key: from the environment (IDHUB_MASTER_KEY)" in text
    assert "audit.sink_token = (hidden)  [environment]" in text

    code, report = _doctor_json(env)
    assert code == 0
    assert report["schema"] == {"current": head_revision(), "head": head_revision(), "state": report["schema"]["state"]}
    (tenant,) = report["tenants"]
    states = sorted((key["state"], key["alg"]) for key in tenant["keys"])
    assert states == [("active", "ES256"), ("active", "RS256"), ("next", "ES256"), ("next", "RS256")]
    assert report["database"]["reachable"] is True and report["redis"]["configured"] is False


def test_doctor_json_names_every_setting_with_its_source(sqlite_env: dict[str, str]) -> None:
    _init(sqlite_env)
    _code, report = _doctor_json({**sqlite_env, "IDHUB_TOKENS__ACCESS_TOKEN_TTL": "120"})
    variables = {item["variable"]: item for item in report["settings"].values()}
    assert set(variables) == set(setting_names())  # nested groups included: new settings show up by themselves
    assert variables["IDHUB_TOKENS__ACCESS_TOKEN_TTL"] == {
        "variable": "IDHUB_TOKENS__ACCESS_TOKEN_TTL",
        "value": 120,
        "source": "environment",
    }
    assert variables["IDHUB_SESSIONS__IDLE_TTL"]["source"] == "default"
    assert variables["IDHUB_MASTER_KEY"]["value"] == "(hidden)"
    assert report["master_key"]["source"] == "environment"


def test_doctor_empty_sqlite_file_schema_behind_names_migrate(sqlite_env: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "data").mkdir(mode=0o700)
    (tmp_path / "data" / "idhub.db").touch()
    code, report = _doctor_json(sqlite_env)
    assert code == 1
    (error,) = [p for p in report["problems"] if p["severity"] == "error"]
    assert "none (empty database)" in error["message"] and error["fix"] == "run `idhub migrate`"
    assert report["schema"]["current"] is None
    result = _invoke(sqlite_env, "doctor")
    assert result.exit_code == 1 and "run `idhub migrate`" in result.stdout


def test_doctor_is_read_only_nothing_created(tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = {"IDHUB_DATA_DIR": str(data), "IDHUB_ENVIRONMENT": "test"}  # no master key: doctor must not generate one
    code, report = _doctor_json(env)
    assert code == 1  # no database yet
    assert not data.exists()  # no data folder, master key or database file was created
    assert report["master_key"]["source"] == "missing"
    assert any("run `idhub migrate`" in p["fix"] for p in report["problems"])
    assert any(p["message"].startswith("no master key") and p["severity"] == "warning" for p in report["problems"])


def test_doctor_generated_master_key_warns_to_back_it_up_never_prints_it(tmp_path: Path) -> None:
    env = {"IDHUB_DATA_DIR": str(tmp_path / "data"), "IDHUB_ENVIRONMENT": "test"}
    _init(env)
    key = (tmp_path / "data" / "master.key").read_text().strip()
    result = _invoke(env, "doctor")
    assert result.exit_code == 0, result.stdout
    assert key not in result.output
    assert f"master key: generated file {tmp_path / 'data' / 'master.key'}" in result.stdout
    assert "back it up" in result.stdout


def test_doctor_master_key_file_named_never_printed(sqlite_env: dict[str, str], tmp_path: Path) -> None:
    secret_file = tmp_path / "master_key"
    secret_file.write_text(TEST_MASTER_KEY + "\n")
    secret_file.chmod(0o600)
    env = {k: v for k, v in sqlite_env.items() if k != "IDHUB_MASTER_KEY"}
    env["IDHUB_MASTER_KEY_FILE"] = str(secret_file)
    _init(env)
    result = _invoke(env, "doctor", "--json")
    assert result.exit_code == 0, result.stdout
    assert TEST_MASTER_KEY not in result.output
    report = json.loads(result.stdout)
    assert report["master_key"]["source"] == "file" and report["master_key"]["path"] == str(secret_file)


def test_doctor_wrong_master_key_is_an_error(sqlite_env: dict[str, str]) -> None:
    _init(sqlite_env)
    other = base64.urlsafe_b64encode(bytes(range(100, 132))).decode()
    code, report = _doctor_json({**sqlite_env, "IDHUB_MASTER_KEY": other})
    assert code == 1
    assert any("another master key" in message for message in _errors(report))
    assert other not in json.dumps(report)


def _sqlite(env: dict[str, str]) -> sqlite3.Connection:
    return sqlite3.connect(env["IDHUB_DATABASE_URL"].removeprefix("sqlite+aiosqlite:///"))


def test_doctor_tenant_without_active_key_is_an_error(sqlite_env: dict[str, str]) -> None:
    _init(sqlite_env)
    with closing(_sqlite(sqlite_env)) as db, db:
        db.execute("DELETE FROM signing_key WHERE alg = 'RS256' AND state = 'active'")
    code, report = _doctor_json(sqlite_env)
    assert code == 1
    (error,) = [p for p in report["problems"] if p["severity"] == "error"]
    assert error["message"].startswith("tenant acme has no active RS256 signing key")
    assert error["fix"] == "run `idhub keys rotate --tenant acme`"


def test_doctor_overdue_scheduled_rotation_warns(sqlite_env: dict[str, str]) -> None:
    _init(sqlite_env)
    old = (datetime.now(UTC) - timedelta(days=40)).replace(tzinfo=None).isoformat(sep=" ")
    with closing(_sqlite(sqlite_env)) as db, db:
        db.execute("UPDATE tenant SET settings = ? WHERE slug = 'acme'", (json.dumps({"key_rotation_days": 30}),))
        db.execute("UPDATE signing_key SET activated_at = ?, created_at = ? WHERE state = 'active'", (old, old))
    code, report = _doctor_json(sqlite_env)
    assert code == 0  # a warning: the keys still sign
    assert report["tenants"][0]["key_rotation_days"] == 30
    (warning,) = [p for p in report["problems"] if "overdue" in p["message"]]
    assert warning["severity"] == "warning" and "idhub keys rotate --tenant acme" in warning["fix"]


def test_doctor_unknown_setting_warns_with_closest_name(sqlite_env: dict[str, str]) -> None:
    _init(sqlite_env)
    code, report = _doctor_json({**sqlite_env, "IDHUB_DATABSE_URL": "x"})
    assert code == 0
    (warning,) = [p for p in report["problems"] if "IDHUB_DATABSE_URL" in p["message"]]
    assert warning["severity"] == "warning" and warning["fix"] == "rename it to IDHUB_DATABASE_URL"


def test_doctor_invalid_setting_is_one_problem(sqlite_env: dict[str, str]) -> None:
    code, report = _doctor_json({**sqlite_env, "IDHUB_TOKENS__ACCESS_TOKEN_TTL": "1"})
    assert code == 1
    assert _errors(report) == [report["problems"][0]["message"]]
    assert report["problems"][0]["message"].startswith("invalid setting IDHUB_TOKENS__ACCESS_TOKEN_TTL")


def test_doctor_unreachable_postgresql_one_line_fast(sqlite_env: dict[str, str]) -> None:
    url = f"postgresql+asyncpg://idhub:{DB_PASSWORD}@127.0.0.1:{_free_port()}/idhub"
    started = time.monotonic()
    result = _invoke({**sqlite_env, "IDHUB_DATABASE_URL": url}, "doctor")
    assert time.monotonic() - started < 5
    assert result.exit_code == 1
    assert DB_PASSWORD not in result.output and "Traceback" not in result.output
    errors = [line for line in result.stdout.splitlines() if line.startswith("  error: ")]
    assert len(errors) == 1 and "IDHUB_DATABASE_URL" in errors[0], result.stdout
    assert "postgresql+asyncpg://idhub:***@127.0.0.1" in result.stdout


def test_doctor_unreachable_redis_is_an_error(sqlite_env: dict[str, str]) -> None:
    _init(sqlite_env)
    env = {**sqlite_env, "IDHUB_REDIS_URL": f"redis://:{DB_PASSWORD}@127.0.0.1:{_free_port()}/0"}
    code, report = _doctor_json(env)
    assert code == 1
    (error,) = _errors(report)
    assert error.startswith("cannot reach Redis at IDHUB_REDIS_URL")
    assert DB_PASSWORD not in json.dumps(report)
    assert report["redis"]["url"].startswith("redis://:***@127.0.0.1")


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A loopback port that accepts connections and never answers (a hung server)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield int(listener.getsockname()[1])
    finally:
        stop.set()
        thread.join()
        for connection in accepted:
            connection.close()
        listener.close()


def test_doctor_hung_database_and_redis_bounded(sqlite_env: dict[str, str], silent_server: int) -> None:
    env = {
        **sqlite_env,
        "IDHUB_DATABASE_URL": f"postgresql+asyncpg://idhub@127.0.0.1:{silent_server}/idhub",
        "IDHUB_DATABASE_CONNECT_TIMEOUT": "1",
        "IDHUB_REDIS_URL": f"redis://127.0.0.1:{silent_server}/0",
        "IDHUB_REDIS_TIMEOUT": "0.5",
    }
    started = time.monotonic()
    code, report = _doctor_json(env)
    assert time.monotonic() - started < 4.5  # the database's bound (1 s + 2 s), Redis checked meanwhile
    assert code == 1
    errors = _errors(report)
    assert len(errors) == 2
    assert any("IDHUB_DATABASE_URL" in e for e in errors) and any("IDHUB_REDIS_URL" in e for e in errors)


def test_doctor_reachable_redis_reported(sqlite_env: dict[str, str]) -> None:
    url = redis_url_or_skip()
    _init(sqlite_env)
    code, report = _doctor_json({**sqlite_env, "IDHUB_REDIS_URL": url})
    assert code == 0, report["problems"]
    assert report["redis"]["reachable"] is True and report["redis"]["server_version"]


# --- PostgreSQL --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pg_database() -> Iterator[str]:
    """An empty database next to the test database (``<name>_doctor``), dropped afterwards; or skip."""
    base = postgres_url()
    if not base:
        pytest.skip("needs PostgreSQL: set IDHUB_TEST_DATABASE_URL")
    import asyncpg

    dsn = base.replace("postgresql+asyncpg://", "postgresql://")
    server, _, name = dsn.rpartition("/")
    name = f"{name.split('?')[0]}_doctor"

    async def admin(statement: str) -> None:
        connection = await asyncpg.connect(f"{server}/postgres", timeout=5)
        try:
            await connection.execute(statement)
        finally:
            await connection.close()

    asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    try:
        yield f"{base.rpartition('/')[0]}/{name}"
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def _with_password(url: str) -> str:
    """Put :data:`DB_PASSWORD` into ``url`` (the test server trusts loopback, so it is never checked)."""
    scheme, _, rest = url.partition("://")
    userinfo, _, hostpart = rest.rpartition("@")
    user = userinfo.partition(":")[0] or "postgres"
    return f"{scheme}://{user}:{DB_PASSWORD}@{hostpart or rest}"


def test_doctor_postgresql_behind_then_healthy_password_hidden(sqlite_env: dict[str, str], pg_database: str) -> None:
    env = {**sqlite_env, "IDHUB_DATABASE_URL": _with_password(pg_database)}
    code, report = _doctor_json(env)
    assert code == 1
    assert report["database"]["reachable"] is True and report["schema"]["current"] is None
    assert [p["fix"] for p in report["problems"] if p["severity"] == "error"] == ["run `idhub migrate`"]
    assert DB_PASSWORD not in json.dumps(report)

    assert _invoke(env, "migrate").exit_code == 0  # the CLI migrates only SQLite by itself
    _init(env)
    result = _invoke(env, "doctor")
    assert result.exit_code == 0, result.stdout
    assert f"schema: at head ({head_revision()})" in result.stdout and "acme: rotates on demand" in result.stdout
    assert DB_PASSWORD not in result.output and TEST_MASTER_KEY not in result.output
    assert ":***@" in result.stdout


def test_redact_url_hides_passwords_and_keeps_the_rest() -> None:
    found: set[str] = set()
    assert redact_url("sqlite+aiosqlite:///idhub-data/idhub.db", found) == "sqlite+aiosqlite:///idhub-data/idhub.db"
    assert redact_url("redis://:pw-1234@cache:6379/0", found) == "redis://:***@cache:6379/0"
    assert redact_url("rediss://user:pw-5678@cache/0?password=pw-9012&db=1", found) == (
        "rediss://user:***@cache/0?password=***&db=1"
    )
    assert found == {"pw-1234", "pw-5678", "pw-9012"}
