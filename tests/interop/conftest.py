"""A live idhub server (uvicorn on a loopback port, in a thread) for tests that use real peers."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient

from idhub.app import create_app
from tests.conftest import Env, backend_url, make_settings


def free_port() -> int:
    """Return a free loopback TCP port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    """Serve idhub (SQLite) over real HTTP on 127.0.0.1; ``env.base_url`` is its address."""
    root = tmp_path_factory.mktemp("idhub-live")
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    app = create_app(make_settings(backend_url("sqlite", root), root, public_url=base_url))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_until_complete, args=(server.serve(),), daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("live idhub server did not start")
        time.sleep(0.05)

    def runner(coro_fn: Any, *args: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro_fn(*args), loop).result(timeout=30)

    # A TestClient is not used for requests here; env.http talks to the live server.
    env = Env(client=TestClient(app), ctx=app.state.ctx, backend="sqlite", runner=runner, base_url=base_url)
    try:
        yield env
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture
def http(live: Env) -> Iterator[httpx.Client]:
    """A plain HTTP client for the live server."""
    with httpx.Client(base_url=live.base_url, follow_redirects=False, timeout=10) as client:
        yield client
