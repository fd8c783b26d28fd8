"""Real ``idhub serve`` processes on a private PostgreSQL database, for tests that need several or must kill one.

The database is created next to the one ``IDHUB_TEST_DATABASE_URL`` names (``<name>_<suffix>``) and dropped at
the end, so these tests never touch the shared test database. Servers are subprocesses started and stopped
(or killed) by this module, by their pid only.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.conftest import PG_ENV, _pg_reachable, postgres_url

IDHUB = [sys.executable, "-c", "import sys; from idhub.cli import main; sys.exit(main())"]
REPO_DIR = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """Return a free loopback TCP port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


@contextlib.contextmanager
def private_database(suffix: str) -> Iterator[str]:
    """Create an empty PostgreSQL database for this test module and drop it afterwards; yield its URL.

    Skips with the reason when ``IDHUB_TEST_DATABASE_URL`` is unset or unreachable.
    """
    import asyncpg

    base = postgres_url()
    if not base:
        pytest.skip(f"needs PostgreSQL: set {PG_ENV} (e.g. postgresql+asyncpg://postgres@127.0.0.1:5432/test)")
    problem = _pg_reachable(base)
    if problem:
        pytest.skip(f"PostgreSQL at {PG_ENV} is unreachable: {problem}")
    parts = urlsplit(base)
    name = f"{parts.path.lstrip('/')}_{suffix}"
    admin_dsn = _dsn(parts._replace(path="/postgres").geturl())

    async def admin(statement: str) -> None:
        conn = await asyncpg.connect(admin_dsn, timeout=5)
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    try:
        yield parts._replace(path=f"/{name}").geturl()
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def server_env(database_url: str, data_dir: Path, public_url: str) -> dict[str, str]:
    """Return the environment of the CLI and the servers: one database, one master key, no Redis."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("IDHUB_")}
    env.update(
        IDHUB_DATABASE_URL=database_url,
        IDHUB_PUBLIC_URL=public_url,
        IDHUB_MASTER_KEY=base64.urlsafe_b64encode(secrets.token_bytes(32)).decode(),
        IDHUB_DATA_DIR=str(data_dir),
        IDHUB_LOG_LEVEL="WARNING",
        IDHUB_ENVIRONMENT="test",
    )
    return env


def idhub_cli(env: dict[str, str], *args: str, stdin: str | None = None) -> dict[str, Any]:
    """Run an ``idhub`` subcommand and return its JSON output."""
    completed = subprocess.run(
        [*IDHUB, *args], env=env, cwd=REPO_DIR, input=stdin, capture_output=True, text=True, check=False, timeout=60
    )
    if completed.returncode != 0:
        raise AssertionError(f"idhub {' '.join(args)} failed: {completed.stderr.strip() or completed.stdout.strip()}")
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    assert isinstance(result, dict)
    return result


class ServerProcess:
    """One ``idhub serve`` subprocess on a loopback port; stopped or killed by its own pid only."""

    def __init__(self, env: dict[str, str], log_dir: Path, name: str) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.env = env
        self.log_path = log_dir / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> None:
        """Start the server and wait until ``/healthz`` answers."""
        argv = [*IDHUB, "serve", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                argv, env=self.env, cwd=REPO_DIR, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"idhub serve exited with {self.process.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.base_url}/healthz", timeout=1).status_code == 200:
                    return
            time.sleep(0.05)
        raise AssertionError(f"idhub serve did not become healthy:\n{self.log_tail()}")

    def kill(self) -> None:
        """Kill the server with SIGKILL (no shutdown, no rollback by the process) and reap it."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=10)

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 10 s)."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)

    def log_tail(self, lines: int = 40) -> str:
        """Return the end of the server's log."""
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def log_text(self) -> str:
        """Return the server's whole log."""
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")
        return ""
