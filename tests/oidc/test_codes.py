"""Authorization codes and their grants are written together (one statement on PostgreSQL) or not at all."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from sqlalchemy import event, select
from sqlalchemy.exc import IntegrityError

from idhub.oidc.codes import create_authorization_code
from idhub.storage.models import AuthorizationCode, Grant
from tests.conftest import Env


def _issue(env: Env, tenant_id: uuid.UUID, client_pk: uuid.UUID, user_id: uuid.UUID) -> tuple[str, list[str]]:
    """Create a code in its own unit of work; return it and the statements the unit of work sent."""
    statements: list[str] = []

    def record(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        statements.append(statement.split(None, 1)[0].upper())

    engine = env.ctx.engine.sync_engine

    async def work() -> str:
        async with env.uow() as uow:
            event.listen(engine, "before_cursor_execute", record)
            try:
                return await create_authorization_code(
                    uow.session, hasher=env.ctx.secret_hasher, tenant_id=tenant_id, client_pk=client_pk,
                    user_id=user_id, session_id="sso-1", redirect_uri="https://app.example/cb", scope="openid",
                    nonce="n", code_challenge="c" * 43, code_challenge_method="S256", resources=["https://api"],
                    auth_time=datetime(2026, 12, 7, tzinfo=UTC), amr=["pwd"], ttl=60, extra={"acr": "x"},
                )  # fmt: skip
            finally:
                event.remove(engine, "before_cursor_execute", record)

    return env.run(work), statements


def _client_pk(env: Env, client_id: str) -> uuid.UUID:
    from idhub.storage.models import Client

    async def work() -> uuid.UUID:
        async with env.uow() as uow:
            found = await uow.session.scalar(select(Client.id).where(Client.client_id == client_id))
            assert found is not None
            return found

    return env.run(work)


def test_code_and_its_grant_written_together(env: Env) -> None:
    tenant = env.tenant()
    client_pk = _client_pk(env, env.oauth_client(tenant, redirect_uris=["https://app.example/cb"])[0])
    user_id = uuid.UUID(env.user(tenant))
    code, statements = _issue(env, tenant.id, client_pk, user_id)
    # PostgreSQL: the grant's INSERT rides in the code's statement (WITH ... INSERT); SQLite: two.
    expected = ["WITH"] if env.backend == "postgresql" else ["INSERT", "INSERT"]
    assert [s for s in statements if s in ("INSERT", "WITH")] == expected

    async def read() -> tuple[AuthorizationCode, Grant]:
        async with env.uow() as uow:
            row = await uow.session.scalar(
                select(AuthorizationCode).where(AuthorizationCode.code_hash == env.ctx.secret_hasher.hash(code))
            )
            assert row is not None
            grant = await uow.session.get(Grant, row.grant_id)
            assert grant is not None
            return row, grant

    row, grant = env.run(read)
    assert (grant.tenant_id, grant.client_id, grant.user_id, grant.session_id, grant.scope) == (
        tenant.id, client_pk, user_id, "sso-1", "openid",
    )  # fmt: skip
    assert (row.tenant_id, row.client_id, row.user_id, row.session_id) == (tenant.id, client_pk, user_id, "sso-1")
    assert (row.resources, row.amr, row.extra, row.nonce) == (["https://api"], ["pwd"], {"acr": "x"}, "n")
    assert row.expires_at > row.created_at and row.consumed_at is None


def test_code_for_an_unknown_user_writes_neither_row(env: Env) -> None:
    tenant = env.tenant()
    client_pk = _client_pk(env, env.oauth_client(tenant, redirect_uris=["https://app.example/cb"])[0])
    with pytest.raises(IntegrityError):  # the grant's user_id (SQLite runs with foreign_keys=ON too)
        _issue(env, tenant.id, client_pk, uuid.uuid4())

    async def count() -> int:
        async with env.uow() as uow:
            return len((await uow.session.scalars(select(Grant.id).where(Grant.client_id == client_pk))).all())

    assert env.run(count) == 0
