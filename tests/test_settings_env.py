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
