"""Settings from the environment: misspelt IDHUB_* variables are named, and serve's issuer follows its port."""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from click.testing import CliRunner

from idhub.cli import main
from idhub.settings import setting_names, unknown_setting_warnings, unknown_settings


def test_unknown_settings_named_with_the_closest_valid_one() -> None:
    environ = {
        "IDHUB_DATABSE_URL": "x",
        "IDHUB_TOKENS__ACCESS_TOKEN_TL": "60",
        "IDHUB_NOTHING_LIKE_IT": "1",
        "IDHUB_DATABASE_URL": "ok",
        "IDHUB_TEST_DATABASE_URL": "the suite's own",
        "PATH": "/bin",
    }
    assert unknown_settings(environ) == [
        ("IDHUB_DATABSE_URL", "IDHUB_DATABASE_URL"),
        ("IDHUB_NOTHING_LIKE_IT", None),
        ("IDHUB_TOKENS__ACCESS_TOKEN_TL", "IDHUB_TOKENS__ACCESS_TOKEN_TTL"),
    ]
    assert "IDHUB_SESSIONS__IDLE_TTL" in setting_names() and "IDHUB_MASTER_KEY" in setting_names()
    assert unknown_setting_warnings({"IDHUB_DATABSE_URL": "x"}) == [
        "warning: IDHUB_DATABSE_URL is not an idhub setting and is ignored; did you mean IDHUB_DATABASE_URL?"
    ]


def test_cli_warns_about_a_misspelt_setting(tmp_path: Path) -> None:
    environ = {
        "IDHUB_DATA_DIR": str(tmp_path),
        "IDHUB_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/idhub.db",
        "IDHUB_MASTER_KEY": base64.urlsafe_b64encode(os.urandom(32)).decode(),
        "IDHUB_PUBLC_URL": "https://id.example",
    }
    answer = CliRunner().invoke(main, ["migrate"], env=environ)
    assert answer.exit_code == 0
    assert "IDHUB_PUBLC_URL is not an idhub setting and is ignored; did you mean IDHUB_PUBLIC_URL?" in answer.output


def test_serve_issuer_follows_the_port_without_public_url(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    environ = {k: v for k, v in os.environ.items() if not k.startswith("IDHUB_")}
    environ.update(
        IDHUB_DATA_DIR=str(tmp_path),
        IDHUB_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path}/idhub.db",
        IDHUB_MASTER_KEY=base64.urlsafe_b64encode(os.urandom(32)).decode(),
        IDHUB_PURGE_INTERVAL_SECONDS="0",
    )
    command = [sys.executable, "-c", "import sys; from idhub.cli import main; sys.exit(main())"]
    subprocess.run([*command, "init", "--tenant", "acme"], env=environ, check=True, capture_output=True)
    server = subprocess.Popen(
        [*command, "serve", "--port", str(port)], env=environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 30
        document = None
        while time.monotonic() < deadline and document is None:
            try:
                answer = httpx.get(f"http://127.0.0.1:{port}/tenants/acme/.well-known/openid-configuration")
                document = answer.json() if answer.status_code == 200 else None
            except httpx.HTTPError:
                time.sleep(0.2)
        assert document is not None, "the server did not come up"
        assert document["issuer"] == f"http://127.0.0.1:{port}/tenants/acme"
    finally:
        server.terminate()
        _out, err = server.communicate(timeout=15)
    assert b"IDHUB_PUBLIC_URL is not set" in err


def _pg_database(name: str) -> str:
    """Return a URL of an empty PostgreSQL database ``name`` on the test server, or skip."""
    import asyncio

    import pytest

    from tests.conftest import postgres_url

    base = postgres_url()
    if not base:
        pytest.skip("needs PostgreSQL: set IDHUB_TEST_DATABASE_URL")
    import asyncpg

    dsn = base.replace("postgresql+asyncpg://", "postgresql://")
    server = dsn.rsplit("/", 1)[0]

    async def reset() -> None:
        admin = await asyncpg.connect(f"{server}/postgres", timeout=5)
        try:
            if not await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
                await admin.execute(f'CREATE DATABASE "{name}"')
        finally:
            await admin.close()
        conn = await asyncpg.connect(f"{server}/{name}", timeout=5)
        try:
            await conn.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public;")
        finally:
            await conn.close()

    asyncio.run(reset())
    return base.rsplit("/", 1)[0] + f"/{name}"


def _serve(environ: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-c", "import sys; from idhub.cli import main; sys.exit(main())"]
    return subprocess.Popen(
        [*command, "serve", "--port", str(port)], env=environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_serve_two_processes_migrate_an_empty_postgresql_once(tmp_path: Path) -> None:
    url = _pg_database("idhub_test_serve_twice")
    environ = {k: v for k, v in os.environ.items() if not k.startswith("IDHUB_")}
    environ.update(
        IDHUB_DATA_DIR=str(tmp_path),
        IDHUB_DATABASE_URL=url,
        IDHUB_MASTER_KEY=base64.urlsafe_b64encode(os.urandom(32)).decode(),
        IDHUB_PUBLIC_URL="http://127.0.0.1:1",
        IDHUB_PURGE_INTERVAL_SECONDS="0",
    )
    ports = [_free_port(), _free_port()]
    servers = [_serve(environ, port) for port in ports]  # started together against an empty database
    try:
        for port, server in zip(ports, servers, strict=True):
            deadline, ready = time.monotonic() + 60, False
            while time.monotonic() < deadline and not ready and server.poll() is None:
                try:
                    ready = httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200
                except httpx.HTTPError:
                    time.sleep(0.2)
            assert ready, f"server on {port} did not come up: {server.poll()}"
    finally:
        errors = []
        for server in servers:
            server.terminate()
            errors.append(server.communicate(timeout=15)[1])
    assert all(b"Traceback" not in err for err in errors), errors
    from idhub.storage.migrate import current_revision, head_revision

    assert current_revision(url) == head_revision()


def test_serve_without_auto_migrate_refuses_an_old_schema_in_one_line(tmp_path: Path) -> None:
    url = _pg_database("idhub_test_serve_behind")
    environ = {k: v for k, v in os.environ.items() if not k.startswith("IDHUB_")}
    environ.update(
        IDHUB_DATA_DIR=str(tmp_path),
        IDHUB_DATABASE_URL=url,
        IDHUB_MASTER_KEY=base64.urlsafe_b64encode(os.urandom(32)).decode(),
        IDHUB_AUTO_MIGRATE="false",
        IDHUB_PUBLIC_URL="http://127.0.0.1:1",
    )
    server = _serve(environ, _free_port())
    _out, err = server.communicate(timeout=60)
    assert server.returncode != 0
    lines = [line for line in err.decode().splitlines() if line.strip()]
    assert len(lines) == 1 and "idhub migrate" in lines[0], lines


def test_master_key_from_a_file_as_container_secrets_give_it(tmp_path: Path) -> None:
    import pytest

    from idhub.settings import Settings

    key = base64.urlsafe_b64encode(os.urandom(32)).decode()
    secret = tmp_path / "idhub_master_key"
    secret.write_text(key + "\n")
    settings = Settings(data_dir=tmp_path, master_key_file=secret)
    assert settings.master_key_bytes() == base64.urlsafe_b64decode(key)
    with pytest.raises(ValueError, match="not both"):
        Settings(data_dir=tmp_path, master_key_file=secret, master_key=key)
    with pytest.raises(ValueError, match="cannot be read"):
        Settings(data_dir=tmp_path, master_key_file=tmp_path / "missing")
    secret.write_text(base64.urlsafe_b64encode(os.urandom(16)).decode())
    with pytest.raises(ValueError, match="32"):
        Settings(data_dir=tmp_path, master_key_file=secret)


def test_cli_database_trouble_is_one_line(tmp_path: Path) -> None:
    cases = {
        "postgresql+asyncpg://postgres@127.0.0.1:1/x": "cannot reach the database at IDHUB_DATABASE_URL",
        "postgresql+asyncpg://postgres@no-such-host.invalid:5432/x": "cannot reach the database",
        "mysql+aiomysql://x@h/d": "IDHUB_DATABASE_URL must be postgresql+asyncpg://",
    }
    from tests.conftest import postgres_url

    if postgres_url():
        server = postgres_url().rsplit("/", 1)[0]  # type: ignore[union-attr]
        cases[f"{server}/idhub_no_such_database"] = "refused"
    for url, expected in cases.items():
        environ = {
            "IDHUB_DATA_DIR": str(tmp_path),
            "IDHUB_DATABASE_URL": url,
            "IDHUB_MASTER_KEY": base64.urlsafe_b64encode(os.urandom(32)).decode(),
        }
        for args in (["migrate"], ["user", "create", "--tenant", "acme", "--username", "ann"]):
            answer = CliRunner().invoke(main, args, env=environ)
            lines = [line for line in answer.output.splitlines() if line.strip()]
            assert answer.exit_code != 0 and len(lines) == 1, (url, args, answer.output)
            assert expected in lines[0] and "Traceback" not in answer.output, (url, lines)


def test_data_folder_created_owner_only_with_its_key(tmp_path: Path) -> None:
    from idhub.settings import Settings

    data = tmp_path / "fresh"
    Settings(data_dir=data).master_key_bytes()
    assert (data.stat().st_mode & 0o777) == 0o700
    assert ((data / "master.key").stat().st_mode & 0o777) == 0o600


def test_the_readme_configuration_table_names_every_setting() -> None:
    import re

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme[readme.index("## Configuration") :]
    section = section[: section.index("\n## ", 5)]
    documented = set(re.findall(r"^\| `(IDHUB_[A-Z0-9_]+)`", section, flags=re.MULTILINE))
    assert documented == set(setting_names()), (set(setting_names()) - documented, documented - set(setting_names()))


def test_a_missing_driver_is_one_line_naming_the_extra(tmp_path: Path) -> None:
    cases = {
        "redis": ("IDHUB_REDIS_URL", "redis://127.0.0.1:6379/0", "pip install 'idhub[redis]'"),
        "asyncpg": (
            "IDHUB_DATABASE_URL",
            "postgresql+asyncpg://postgres@127.0.0.1:5432/x",
            "pip install 'idhub[postgres]'",
        ),
    }
    for module, (name, value, fix) in cases.items():
        environ = {k: v for k, v in os.environ.items() if not k.startswith("IDHUB_")}
        environ.update(IDHUB_DATA_DIR=str(tmp_path), **{name: value})
        # The package made unimportable, as on a machine without the extra.
        script = f"import sys; sys.modules[{module!r}] = None; from idhub.cli import main; sys.exit(main())"
        done = subprocess.run([sys.executable, "-c", script, "migrate"], env=environ, capture_output=True)
        lines = done.stderr.decode().strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1 and name in lines[0] and fix in lines[0], lines
    answer = CliRunner().invoke(
        main, ["migrate"], env={"IDHUB_DATA_DIR": str(tmp_path), "IDHUB_REDIS_URL": "127.0.0.1"}
    )
    assert answer.exit_code == 2 and "IDHUB_REDIS_URL must be redis://" in answer.output


def test_no_new_master_key_is_made_for_a_database_whose_tenants_another_key_sealed(tmp_path: Path) -> None:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("IDHUB_")}
    database = tmp_path / "shared.db"
    environ["IDHUB_DATABASE_URL"] = f"sqlite+aiosqlite:///{database}"
    first, second = tmp_path / "first", tmp_path / "second"
    command = [sys.executable, "-c", "import sys; from idhub.cli import main; sys.exit(main())"]
    made = subprocess.run(
        [*command, "init", "--tenant", "acme"],
        cwd=tmp_path,
        env={**environ, "IDHUB_DATA_DIR": str(first)},
        capture_output=True,
    )
    assert made.returncode == 0, made.stderr
    for args in (["init", "--tenant", "other"], ["serve", "--port", str(_free_port())]):
        # The same database from a data folder without the key: refused in one line, no key generated.
        done = subprocess.run(
            [*command, *args],
            cwd=tmp_path,
            env={**environ, "IDHUB_DATA_DIR": str(second)},
            capture_output=True,
            timeout=60,
        )
        lines = [line for line in done.stderr.decode().splitlines() if "error:" in line]
        assert done.returncode == 2 and len(lines) == 1 and "IDHUB_MASTER_KEY" in lines[0], done.stderr
        assert not (second / "master.key").exists()
