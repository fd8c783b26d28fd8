"""SSO session service: lifetimes, revocation, disabled users, regeneration."""

from __future__ import annotations

import uuid
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

from fastapi import Response
from sqlalchemy import update

from idhub.sessions.service import create_session, end_session, load_session
from idhub.storage.base import utcnow
from idhub.storage.models import User, UserSession
from idhub.web.cookies import set_session_cookie
from tests.conftest import Env, make_settings


def start(env: Env) -> tuple[Any, uuid.UUID, str, str]:
    tenant = env.tenant()
    user_id = uuid.UUID(env.user(tenant, password=None))

    async def work() -> tuple[str, str]:
        async with env.ctx.sessionmaker() as session:
            sso, cookie = await create_session(
                session,
                hasher=env.ctx.secret_hasher,
                settings=env.ctx.settings.sessions,
                tenant_id=tenant.id,
                user_id=user_id,
                amr=["pwd"],
            )
            await session.commit()
        return sso.id, cookie

    session_id, cookie = env.run(work)
    return tenant, user_id, session_id, cookie


def load(env: Env, tenant: Any, cookie: str | None) -> Any:
    async def work() -> Any:
        async with env.ctx.sessionmaker() as session:
            found = await load_session(
                session,
                hasher=env.ctx.secret_hasher,
                settings=env.ctx.settings.sessions,
                tenant_id=tenant.id,
                cookie=cookie,
            )
            await session.commit()
            return found

    return env.run(work)


def execute(env: Env, statement: Any) -> None:
    async def work() -> None:
        async with env.ctx.sessionmaker() as session:
            await session.execute(statement)
            await session.commit()

    env.run(work)


def test_session_load_live_returns_session(env: Env) -> None:
    tenant, user_id, session_id, cookie = start(env)
    found = load(env, tenant, cookie)
    assert found.id == session_id and found.user_id == user_id and found.amr == ("pwd",)
    assert found.subject == str(user_id)


def test_session_load_wrong_cookie_or_tenant_none(env: Env) -> None:
    tenant, _, _, cookie = start(env)
    assert load(env, tenant, "x" * 43) is None
    assert load(env, tenant, None) is None
    assert load(env, env.tenant(), cookie) is None


def test_session_idle_timeout_expires(env: Env) -> None:
    tenant, _, session_id, cookie = start(env)
    idle = env.ctx.settings.sessions.idle_ttl
    execute(
        env,
        update(UserSession)
        .where(UserSession.id == session_id)
        .values(last_seen_at=utcnow() - timedelta(seconds=idle + 1)),
    )
    assert load(env, tenant, cookie) is None


def test_session_activity_extends_idle(env: Env) -> None:
    tenant, _, session_id, cookie = start(env)
    idle = env.ctx.settings.sessions.idle_ttl
    execute(
        env,
        update(UserSession)
        .where(UserSession.id == session_id)
        .values(last_seen_at=utcnow() - timedelta(seconds=idle - 5)),
    )
    assert load(env, tenant, cookie) is not None
    assert load(env, tenant, cookie) is not None  # last_seen_at was refreshed by the first load


def test_session_absolute_timeout_expires(env: Env) -> None:
    tenant, _, session_id, cookie = start(env)
    execute(
        env, update(UserSession).where(UserSession.id == session_id).values(expires_at=utcnow() - timedelta(seconds=1))
    )
    assert load(env, tenant, cookie) is None


def test_session_disabled_user_invalid(env: Env) -> None:
    tenant, user_id, _, cookie = start(env)
    execute(env, update(User).where(User.id == user_id).values(enabled=False))
    assert load(env, tenant, cookie) is None


def test_session_end_revokes(env: Env) -> None:
    tenant, _, session_id, cookie = start(env)

    async def work() -> bool:
        async with env.ctx.sessionmaker() as session:
            ended = await end_session(session, tenant_id=tenant.id, session_id=session_id)
            await session.commit()
            return ended

    assert env.run(work) is True
    assert load(env, tenant, cookie) is None


def test_session_create_with_previous_cookie_revokes_old(env: Env) -> None:
    tenant, user_id, _, cookie = start(env)

    async def work() -> str:
        async with env.ctx.sessionmaker() as session:
            _, new_cookie = await create_session(
                session,
                hasher=env.ctx.secret_hasher,
                settings=env.ctx.settings.sessions,
                tenant_id=tenant.id,
                user_id=user_id,
                amr=["pwd"],
                previous_cookie=cookie,
            )
            await session.commit()
            return new_cookie

    new_cookie = env.run(work)
    assert new_cookie != cookie
    assert load(env, tenant, cookie) is None
    assert load(env, tenant, new_cookie) is not None


def test_session_cookie_secure_behind_https(tmp_path: Any) -> None:
    settings = make_settings("sqlite+aiosqlite:///x.db", tmp_path, public_url="https://id.example")
    ctx = SimpleNamespace(settings=settings)
    tenant = SimpleNamespace(slug="acme")
    response = Response()
    set_session_cookie(response, ctx, tenant, "value")  # type: ignore[arg-type]
    header = response.headers["set-cookie"].lower()
    assert "secure" in header and "httponly" in header and "samesite=lax" in header and "path=/tenants/acme" in header
