"""RevocationState: in-memory checks, updates, and catching up with rows other processes wrote."""

from __future__ import annotations

import time
import uuid
from datetime import timedelta
from typing import Any

import pytest

from idhub.storage.base import utcnow
from idhub.storage.models import Revocation
from idhub.tokens.revocation import RevocationEntry, RevocationState, record_revocation
from tests.conftest import Env, uow_publishing_to

TENANT = str(uuid.uuid4())


def _state() -> RevocationState:
    # Pure in-memory checks never touch the session factory.
    return RevocationState(None, poll_seconds=60)  # type: ignore[arg-type]


def _entry(kind: str, value: str, *, created_at: float | None = None, ttl: float = 600, tenant: str = TENANT) -> Any:
    created = time.time() if created_at is None else created_at
    return RevocationEntry(tenant, kind, value, created, created + ttl)


def _claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {"jti": "j1", "sub": "u1", "client_id": "c1", "gid": "g1", "iat": now, "exp": now + 60}
    claims.update(overrides)
    return claims


def test_is_revoked_empty_state_false() -> None:
    assert _state().is_revoked(TENANT, _claims()) is False


def test_is_revoked_jti_entry_only_that_token() -> None:
    state = _state()
    state.apply(_entry("jti", "j1"))
    assert state.is_revoked(TENANT, _claims()) is True
    assert state.is_revoked(TENANT, _claims(jti="j2")) is False


def test_is_revoked_grant_entry_every_token_of_grant() -> None:
    state = _state()
    state.apply(_entry("grant", "g1"))
    assert state.is_revoked(TENANT, _claims(jti="a")) is True
    assert state.is_revoked(TENANT, _claims(jti="b", iat=int(time.time()) + 100)) is True
    assert state.is_revoked(TENANT, _claims(gid="g2")) is False
    without_gid = _claims()
    del without_gid["gid"]
    assert state.is_revoked(TENANT, without_gid) is False


@pytest.mark.parametrize("kind", ["subject", "client"])
def test_is_revoked_subject_or_client_cuts_off_tokens_issued_up_to_revocation(kind: str) -> None:
    state = _state()
    cut = time.time()
    state.apply(_entry(kind, "u1" if kind == "subject" else "c1", created_at=cut))
    assert state.is_revoked(TENANT, _claims(iat=int(cut) - 10)) is True
    assert state.is_revoked(TENANT, _claims(iat=int(cut))) is True  # same second: revoked
    assert state.is_revoked(TENANT, _claims(iat=int(cut) + 2)) is False  # issued afterwards: valid


def test_is_revoked_other_tenant_unaffected() -> None:
    state = _state()
    state.apply(_entry("jti", "j1"))
    state.apply(_entry("subject", "u1"))
    assert state.is_revoked(str(uuid.uuid4()), _claims()) is False


def test_apply_newer_subject_entry_moves_cut_off_older_ignored() -> None:
    state = _state()
    old = time.time() - 100
    state.apply(_entry("subject", "u1", created_at=old))
    assert state.is_revoked(TENANT, _claims(iat=int(old) + 50)) is False
    state.apply(_entry("subject", "u1", created_at=old + 60))
    assert state.is_revoked(TENANT, _claims(iat=int(old) + 50)) is True
    state.apply(_entry("subject", "u1", created_at=old))  # late, older duplicate (poll overlap)
    assert state.is_revoked(TENANT, _claims(iat=int(old) + 50)) is True


def test_prune_drops_expired_keeps_live() -> None:
    state = _state()
    state.apply(_entry("jti", "dead", created_at=time.time() - 100, ttl=10))
    state.apply(_entry("jti", "live"))
    state.prune()
    assert state.is_revoked(TENANT, _claims(jti="dead")) is False
    assert state.is_revoked(TENANT, _claims(jti="live")) is True


def test_revocation_entry_json_roundtrip() -> None:
    entry = _entry("grant", "g9")
    assert RevocationEntry.from_json(entry.to_json()) == entry


def test_record_revocation_unknown_kind_value_error(env: Env) -> None:
    tenant = env.tenant()

    async def work() -> None:
        async with uow_publishing_to(env) as uow:
            await record_revocation(uow, tenant_id=tenant.id, kind="user", value="x", expires_in=60)

    with pytest.raises(ValueError):
        env.run(work)


def test_committed_revocation_applied_after_commit_only(env: Env) -> None:
    tenant = env.tenant()

    async def work() -> tuple[bool, bool, bool]:
        state = RevocationState(env.ctx.sessionmaker, poll_seconds=60)
        tid = str(tenant.id)
        async with uow_publishing_to(env, state) as uow:
            await record_revocation(uow, tenant_id=tenant.id, kind="jti", value="jc", expires_in=60)
            before_commit = state.is_revoked(tid, _claims(jti="jc"))
        rolled_back = uow_publishing_to(env, state)
        await record_revocation(rolled_back, tenant_id=tenant.id, kind="jti", value="jr", expires_in=60)
        await rolled_back.finish(RuntimeError("the request failed"))
        return before_commit, state.is_revoked(tid, _claims(jti="jc")), state.is_revoked(tid, _claims(jti="jr"))

    assert env.run(work) == (False, True, False)


def test_load_picks_up_live_rows_ignores_expired(env: Env) -> None:
    tenant = env.tenant()

    async def work() -> tuple[bool, bool]:
        now = utcnow()
        async with env.ctx.sessionmaker() as session:
            session.add_all(
                [
                    Revocation(
                        tenant_id=tenant.id,
                        kind="jti",
                        value="live",
                        created_at=now,
                        expires_at=now + timedelta(seconds=60),
                    ),
                    Revocation(
                        tenant_id=tenant.id,
                        kind="jti",
                        value="gone",
                        created_at=now - timedelta(hours=2),
                        expires_at=now - timedelta(hours=1),
                    ),
                ]
            )
            await session.commit()
        state = RevocationState(env.ctx.sessionmaker, poll_seconds=60)
        await state.load()
        tid = str(tenant.id)
        return state.is_revoked(tid, _claims(jti="live")), state.is_revoked(tid, _claims(jti="gone"))

    assert env.run(work) == (True, False)


def test_poll_once_picks_up_rows_written_by_another_session(env: Env) -> None:
    tenant = env.tenant()
    jti, gid = uuid.uuid4().hex, uuid.uuid4().hex

    async def work() -> tuple[bool, bool, bool]:
        reader = RevocationState(env.ctx.sessionmaker, poll_seconds=60)
        await reader.load()
        tid = str(tenant.id)
        before = reader.is_revoked(tid, _claims(jti=jti))
        # Another process: its own session and state, which never tells the reader directly.
        writer = RevocationState(env.ctx.sessionmaker, poll_seconds=60)
        async with uow_publishing_to(env, writer) as uow:
            await record_revocation(uow, tenant_id=tenant.id, kind="jti", value=jti, expires_in=60)
            await record_revocation(uow, tenant_id=tenant.id, kind="grant", value=gid, expires_in=60)
        await reader.poll_once()
        return before, reader.is_revoked(tid, _claims(jti=jti)), reader.is_revoked(tid, _claims(jti="x", gid=gid))

    assert env.run(work) == (False, True, True)


def test_poll_once_uncommitted_row_not_seen(env: Env) -> None:
    tenant = env.tenant()
    jti = uuid.uuid4().hex

    async def work() -> bool:
        reader = RevocationState(env.ctx.sessionmaker, poll_seconds=60)
        await reader.load()
        uow = uow_publishing_to(env)
        await record_revocation(uow, tenant_id=tenant.id, kind="jti", value=jti, expires_in=60)
        await uow.session.flush()
        await uow.finish(RuntimeError("rolled back"))
        await reader.poll_once()
        return reader.is_revoked(str(tenant.id), _claims(jti=jti))

    assert env.run(work) is False
