"""Logs: one configuration for idhub and uvicorn, text or JSON, request ids from trusted proxies only, the access log.

Also where the CLI finds its data folder (the nearest ``idhub-data`` upwards, or ``IDHUB_DATA_DIR``).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from idhub.cli import main
from idhub.logs import JsonFormatter, TextFormatter, logging_config
from idhub.metrics import Metrics
from idhub.request_context import current, install_log_record_factory
from idhub.routing import FrontDoor, TrustedProxies
from idhub.settings import Settings, find_data_dir

CLI = [sys.executable, "-c", "import sys; from idhub.cli import main; sys.exit(main())"]


def _record(**extra: Any) -> logging.LogRecord:
    record = logging.LogRecord("idhub.security", logging.WARNING, __file__, 1, "sign-in %s", ("failed",), None)
    record.request_id = "req-0001"
    for key, value in extra.items():
        setattr(record, key, value)
    return record


def test_json_lines_carry_the_request_id_and_the_extra_fields() -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        exc_info = sys.exc_info()
    record = _record(event="signin.failure", tenant_id="t-1")
    record.exc_info = exc_info
    entry = json.loads(JsonFormatter().format(record))
    assert entry["level"] == "warning" and entry["logger"] == "idhub.security"
    assert entry["message"] == "sign-in failed" and entry["request_id"] == "req-0001"
    assert entry["event"] == "signin.failure" and entry["tenant_id"] == "t-1"
    assert entry["time"].endswith("Z") and "RuntimeError: boom" in entry["exc"]
    assert "\n" not in JsonFormatter().format(record)  # one line, even with a traceback


def test_text_lines_are_readable_and_quote_what_needs_it() -> None:
    line = TextFormatter().format(_record(event="signin.failure", reason="no such user"))
    assert ' WARNING idhub.security [req-0001] sign-in failed event=signin.failure reason="no such user"' in line


def test_settings_choose_the_format_and_uvicorn_follows(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, log_format="JSON", log_level="debug", access_log=True)
    config = logging_config(settings)
    assert config["handlers"]["stderr"]["formatter"] == "json" and config["root"]["level"] == "DEBUG"
    assert config["loggers"]["uvicorn.error"]["propagate"] and config["loggers"]["idhub.access"]["level"] == "INFO"
    assert config["loggers"]["uvicorn.access"]["propagate"] is False  # its lines carry query strings
    quiet = logging_config(Settings(data_dir=tmp_path))
    assert quiet["handlers"]["stderr"]["formatter"] == "text" and quiet["loggers"]["idhub.access"]["level"] == "WARNING"
    assert quiet["loggers"]["idhub.audit"]["level"] == "WARNING"  # one line per token: only when asked for


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("IDHUB_LOG_FORMAT", "yaml", "IDHUB_LOG_FORMAT"),
        ("IDHUB_LOG_LEVEL", "verbose", "IDHUB_LOG_LEVEL"),
        ("IDHUB_TRUSTED_PROXIES", "10.0.0.1, proxy.local", "'proxy.local' is not an IP address or network"),
    ],
)
def test_a_bad_logging_or_proxy_setting_is_one_line(tmp_path: Path, name: str, value: str, expected: str) -> None:
    answer = CliRunner().invoke(main, ["migrate"], env={"IDHUB_DATA_DIR": str(tmp_path), name: value})
    lines = [line for line in answer.output.splitlines() if line.strip()]
    assert answer.exit_code == 2 and len(lines) == 1 and expected in lines[0], answer.output


def test_trusted_proxies_are_addresses_or_networks() -> None:
    proxies = TrustedProxies(["10.0.0.0/8", "fd00::/8", "192.0.2.7"])
    assert "10.20.30.40" in proxies and "fd00::1" in proxies and "192.0.2.7" in proxies
    assert "192.0.2.8" not in proxies and "testclient" not in proxies and "11.0.0.1" not in proxies
    assert not TrustedProxies([]) and "10.0.0.1" not in TrustedProxies([])


async def _through_front_door(peer: str, headers: dict[str, str], *, access_log: bool = False) -> dict[str, Any]:
    """Send one request from ``peer`` through a front door trusting 10.0.0.0/8; return what the app saw."""
    seen: dict[str, Any] = {}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        info = current()
        assert info is not None
        seen["request_id"], seen["address"] = info.request_id, info.address
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    door = FrontDoor(app, owner=None, metrics=Metrics(), trusted_proxies=["10.0.0.0/8"], access_log=access_log)
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/tenants/acme/broker/corp/callback",
        "query_string": b"code=SECRET-CODE&state=xyz",
        "client": (peer, 40000),
        "headers": [(name.encode(), value.encode()) for name, value in headers.items()],
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await door(scope, receive, send)
    seen["echoed"] = dict(sent[0]["headers"])[b"x-request-id"].decode()
    return seen


def test_request_id_and_address_are_believed_only_from_a_trusted_proxy() -> None:
    headers = {"x-request-id": "proxy-chosen-0001", "x-forwarded-for": "198.51.100.4"}
    trusted = asyncio.run(_through_front_door("10.1.2.3", headers))
    assert trusted == {"request_id": "proxy-chosen-0001", "address": "198.51.100.4", "echoed": "proxy-chosen-0001"}
    stranger = asyncio.run(_through_front_door("203.0.113.9", headers))
    assert stranger["request_id"] != "proxy-chosen-0001" and stranger["echoed"] == stranger["request_id"]
    assert stranger["address"] == "203.0.113.9"


def test_access_log_is_opt_in_and_leaves_the_query_string_out(caplog: pytest.LogCaptureFixture) -> None:
    install_log_record_factory()  # what create_app does
    with caplog.at_level(logging.INFO, logger="idhub.access"):
        asyncio.run(_through_front_door("203.0.113.9", {}))
        assert not [r for r in caplog.records if r.name == "idhub.access"]
        seen = asyncio.run(_through_front_door("203.0.113.9", {}, access_log=True))
    (record,) = [r for r in caplog.records if r.name == "idhub.access"]
    assert record.request_id == seen["request_id"]  # type: ignore[attr-defined]
    assert record.status == 204 and record.method == "GET" and record.client == "203.0.113.9"  # type: ignore[attr-defined]
    assert record.path == "/tenants/acme/broker/corp/callback"  # type: ignore[attr-defined]
    assert "SECRET-CODE" not in record.getMessage() and "SECRET-CODE" not in str(record.__dict__)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_serve_writes_json_lines_for_idhub_and_uvicorn_alike(tmp_path: Path) -> None:
    port = _free_port()
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("IDHUB_", "OTEL_"))}
    environ.update(
        IDHUB_DATA_DIR=str(tmp_path),
        IDHUB_MASTER_KEY=base64.urlsafe_b64encode(os.urandom(32)).decode(),
        IDHUB_PUBLIC_URL=f"http://127.0.0.1:{port}",
        IDHUB_PURGE_INTERVAL_SECONDS="0",
        IDHUB_LOG_FORMAT="json",
        IDHUB_ACCESS_LOG="true",
    )
    server = subprocess.Popen([*CLI, "serve", "--port", str(port)], env=environ, stderr=subprocess.PIPE)
    try:
        deadline, answer = time.monotonic() + 30, None
        while time.monotonic() < deadline and answer is None:
            try:
                answer = httpx.get(f"http://127.0.0.1:{port}/healthz?code=SECRET-CODE")
            except httpx.HTTPError:
                time.sleep(0.2)
        assert answer is not None and answer.status_code == 200
    finally:
        server.terminate()
        _out, err = server.communicate(timeout=15)
    entries = [json.loads(line) for line in err.decode().splitlines() if line.strip()]  # every line is JSON
    loggers = {entry["logger"] for entry in entries}
    assert "uvicorn.error" in loggers and "idhub.access" in loggers
    (access,) = [entry for entry in entries if entry["logger"] == "idhub.access"]
    assert access["request_id"] == answer.headers["x-request-id"] and access["status"] == 200
    assert access["route"] == "/healthz" and b"SECRET-CODE" not in err
    migrations = [entry for entry in entries if entry["logger"] == "alembic.runtime.migration"]
    assert migrations and all(entry["message"].startswith("Running upgrade") for entry in migrations)


def test_the_cli_finds_the_data_folder_upwards_and_never_makes_a_second_one(tmp_path: Path) -> None:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("IDHUB_", "OTEL_"))}
    home, elsewhere = tmp_path / "deploy", tmp_path / "elsewhere"
    (home / "scripts" / "deep").mkdir(parents=True)
    elsewhere.mkdir()
    made = subprocess.run([*CLI, "init", "--tenant", "acme"], cwd=home, env=environ, capture_output=True, check=True)
    assert json.loads(made.stdout)["tenant"] == "acme" and (home / "idhub-data" / "master.key").exists()
    # From a subfolder: the same database and key (the user lands in the tenant init made).
    sub = subprocess.run(
        [*CLI, "user", "create", "--tenant", "acme", "--username", "ann", "--json"],
        cwd=home / "scripts" / "deep",
        env=environ,
        capture_output=True,
    )
    assert sub.returncode == 0 and "id" in json.loads(sub.stdout), sub.stderr
    assert not (home / "scripts" / "idhub-data").exists() and not (home / "scripts" / "deep" / "idhub-data").exists()
    assert find_data_dir(home / "scripts" / "deep") == home / "idhub-data"
    # From somewhere unrelated: one line, and nothing created.
    command = [*CLI, "user", "create", "--tenant", "acme", "--username", "bob"]
    lost = subprocess.run(command, cwd=elsewhere, env=environ, capture_output=True)
    lines = lost.stderr.decode().strip().splitlines()
    assert lost.returncode == 2 and len(lines) == 1 and "IDHUB_DATA_DIR" in lines[0], lines
    assert not (elsewhere / "idhub-data").exists()
    # Quiet by default: commands other than serve print their answer, not info lines.
    assert made.stderr.decode().count("\n") <= 1 and "master.key" in made.stderr.decode()
