"""Revocations stay enforced through faults: the database poll failing, Redis down and back."""

from __future__ import annotations

import asyncio
import logging
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator

import pytest

from idhub.metrics import Metrics
from idhub.tokens.revocation import RevocationState, record_revocation
from tests.conftest import Env, uow_publishing_to
from tests.ops.faults_support import free_port
from tests.ops.test_stale_if_error import Switchable


def _claims(jti: str) -> dict[str, object]:
    return {"jti": jti, "sub": "s", "client_id": "c", "iat": int(time.time()), "exp": int(time.time()) + 60}


async def _until(check: object, within: float = 3.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return True
        await asyncio.sleep(0.02)
    return False


def test_revocation_poll_database_down_keeps_enforcing_and_logs_once(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    tenant = env.tenant()
    before, after = uuid.uuid4().hex, uuid.uuid4().hex
    database = Switchable(env.ctx.sessionmaker)
    metrics = Metrics()

    async def work() -> tuple[bool, bool]:
        async with uow_publishing_to(env) as uow:
            await record_revocation(uow, tenant_id=tenant.id, kind="jti", value=before, expires_in=60)
        state = RevocationState(database, poll_seconds=0.05, faults=metrics)  # type: ignore[arg-type]
        await state.start()
        try:
            database.down = True
            await asyncio.sleep(0.5)  # about ten failed polls
            enforced = state.is_revoked(str(tenant.id), _claims(before))
            async with uow_publishing_to(env) as uow:  # recorded by another process during the outage
                await record_revocation(uow, tenant_id=tenant.id, kind="jti", value=after, expires_in=60)
            database.down = False
            caught_up = await _until(lambda: state.is_revoked(str(tenant.id), _claims(after)))
            return enforced, caught_up
        finally:
            await state.stop()

    with caplog.at_level(logging.WARNING, logger="idhub.tokens.revocation"):
        enforced, caught_up = env.run(work)
    assert enforced is True
    assert caught_up is True
    assert len([r for r in caplog.records if r.name == "idhub.tokens.revocation"]) == 1
    assert metrics.faults("database", "revocation_poll") > 0


class PrivateRedis:
    """A redis-server of this test's own on a free port, to stop and start at will."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary is not None
        self._process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        import redis

        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 5
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)
        client.close()

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(timeout=10)
            self._process = None


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    server = PrivateRedis()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_revocation_redis_stopped_falls_back_to_poll_then_broadcast_resumes(
    env: Env, private_redis: PrivateRedis, caplog: pytest.LogCaptureFixture
) -> None:
    tenant = env.tenant()
    during, afterwards = uuid.uuid4().hex, uuid.uuid4().hex
    reader_database = Switchable(env.ctx.sessionmaker)
    metrics = Metrics()

    async def work() -> dict[str, object]:
        found: dict[str, object] = {}
        writer = RevocationState(env.ctx.sessionmaker, poll_seconds=60, redis_url=private_redis.url, faults=metrics)
        reader = RevocationState(
            reader_database,  # type: ignore[arg-type]
            poll_seconds=0.1,
            redis_url=private_redis.url,
        )
        await writer.start()
        await reader.start()
        try:
            found["before"] = writer.broadcast_state
            private_redis.stop()
            started = time.perf_counter()
            async with uow_publishing_to(env, writer) as uow:
                await record_revocation(uow, tenant_id=tenant.id, kind="jti", value=during, expires_in=60)
            found["revoke_took"] = time.perf_counter() - started
            found["during"] = await _until(lambda: reader.is_revoked(str(tenant.id), _claims(during)))
            found["state_down"] = writer.broadcast_state
            private_redis.start()
            found["resubscribed"] = await _until(
                lambda: writer.broadcast_state == "ok" and reader.broadcast_state == "ok", within=10
            )
            reader_database.down = True  # from now on only the broadcast can tell the reader
            async with uow_publishing_to(env, writer) as uow:
                await record_revocation(uow, tenant_id=tenant.id, kind="jti", value=afterwards, expires_in=60)
            found["afterwards"] = await _until(lambda: reader.is_revoked(str(tenant.id), _claims(afterwards)))
        finally:
            await writer.stop()
            await reader.stop()
        return found

    with caplog.at_level(logging.WARNING, logger="idhub.tokens.revocation"):
        found = env.run(work)
    assert found["before"] == "ok"
    assert found["during"] is True  # the poll carried it
    assert found["state_down"] == "unavailable"
    assert isinstance(found["revoke_took"], float) and found["revoke_took"] < 1.0
    assert found["resubscribed"] is True
    assert found["afterwards"] is True
    assert metrics.faults("redis", "revocation_poll_fallback") >= 1
    warnings = [r for r in caplog.records if r.name == "idhub.tokens.revocation" and "Redis" in r.getMessage()]
    assert 1 <= len(warnings) <= 2  # once per process (writer and reader), not once per attempt
