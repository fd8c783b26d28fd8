"""The management port (IDHUB_MANAGEMENT_PORT): a real ``idhub serve`` on loopback, one app on two sockets."""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from idhub.app import create_app
from tests.conftest import make_settings

COMMAND = [sys.executable, "-c", "import sys; from idhub.cli import main; sys.exit(main())"]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def _environ(tmp_path: Path, **extra: str) -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("IDHUB_")}
    environ.update(
        IDHUB_DATA_DIR=str(tmp_path),
        IDHUB_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path}/idhub.db",
        IDHUB_MASTER_KEY=base64.urlsafe_b64encode(os.urandom(32)).decode(),
        IDHUB_PURGE_INTERVAL_SECONDS="0",
        **extra,
    )
    return environ


def _wait_until_up(url: str, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if server.poll() is not None:
            _out, err = server.communicate()
            pytest.fail(f"idhub serve exited: {err.decode()[-2000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.2)
    pytest.fail("the server did not come up")


@pytest.fixture
def served(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[int, int]]:
    """Start ``idhub serve`` with a management port (``workers`` from the test's parameter); yield the ports."""
    workers = getattr(request, "param", 1)
    public, management = _free_port(), _free_port()
    environ = _environ(tmp_path, IDHUB_MANAGEMENT_PORT=str(management))
    subprocess.run([*COMMAND, "init", "--tenant", "acme"], env=environ, check=True, capture_output=True)
    server = subprocess.Popen(
        [*COMMAND, "serve", "--port", str(public), "--workers", str(workers)],
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        _wait_until_up(f"http://127.0.0.1:{management}/healthz", server)
        _wait_until_up(f"http://127.0.0.1:{public}/healthz", server)
        yield public, management
    finally:
        server.terminate()
        try:
            server.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.communicate()


def _check_split(public: int, management: int) -> None:
    on_management = f"http://127.0.0.1:{management}"
    on_public = f"http://127.0.0.1:{public}"
    metrics = httpx.get(f"{on_management}/metrics")
    assert metrics.status_code == 200 and "idhub_http_requests_total" in metrics.text
    assert "process_cpu_seconds_total" in metrics.text
    for path in ("/healthz", "/readyz"):
        assert httpx.get(on_management + path).status_code == 200
        assert httpx.get(on_public + path).status_code == 200
    hidden = httpx.get(f"{on_public}/metrics")
    assert hidden.status_code == 404 and hidden.headers["x-request-id"]
    discovery = "/tenants/acme/.well-known/openid-configuration"
    assert httpx.get(on_public + discovery).status_code == 200
    assert httpx.get(on_management + discovery).status_code == 404  # the management port serves operations only


def test_management_port_serves_operations_and_public_port_hides_metrics(served: tuple[int, int]) -> None:
    public, management = served
    _check_split(public, management)


@pytest.mark.parametrize("served", [2], indirect=True)
def test_management_port_with_two_workers_same_split(served: tuple[int, int]) -> None:
    public, management = served
    _check_split(public, management)


def test_serve_two_workers_warns_metrics_are_per_process(tmp_path: Path) -> None:
    port = _free_port()
    environ = _environ(tmp_path)
    server = subprocess.Popen(
        [*COMMAND, "serve", "--port", str(port), "--workers", "2"],
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        _wait_until_up(f"http://127.0.0.1:{port}/healthz", server)
        assert httpx.get(f"http://127.0.0.1:{port}/metrics").status_code == 200  # no management port: public
    finally:
        server.terminate()
        _out, err = server.communicate(timeout=20)
    warnings = [line for line in err.decode().splitlines() if "each worker keeps its own metrics" in line]
    assert len(warnings) == 1
    assert "one process per container" in warnings[0]


def test_management_port_same_as_public_port_one_line_error(tmp_path: Path) -> None:
    port = _free_port()
    environ = _environ(tmp_path, IDHUB_MANAGEMENT_PORT=str(port))
    answer = subprocess.run(
        [*COMMAND, "serve", "--port", str(port)], env=environ, capture_output=True, timeout=60, check=False
    )
    assert answer.returncode != 0
    lines = [line for line in answer.stderr.decode().splitlines() if line.strip()]
    assert lines[-1].startswith("error: IDHUB_MANAGEMENT_PORT")
    assert "Traceback" not in answer.stderr.decode()


def test_management_port_in_process_split_by_server_port(tmp_path: Path) -> None:
    # TestClient requests come in on ("testserver", 80): with port 80 as the management port they are
    # management requests, and public ones otherwise.
    url = f"sqlite+aiosqlite:///{tmp_path / 'idhub.db'}"
    for management, metrics_status, document_status in ((80, 200, 404), (9100, 404, 200)):
        app = create_app(make_settings(url, tmp_path, management_port=management))
        with TestClient(app, base_url="http://testserver") as client:
            assert client.get("/metrics").status_code == metrics_status
            assert client.get("/healthz").status_code == 200
            assert client.get("/openapi.json").status_code == document_status
