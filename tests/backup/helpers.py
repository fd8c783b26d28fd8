"""Seed a tenant with one of everything, take backups, make empty targets, and serve a restored database."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import make_url

from idhub.app import create_app
from idhub.backup.dump import BackupSummary, write_backup
from idhub.backup.restore import Verified, restore_backup
from idhub.settings import Settings
from idhub.storage.engine import create_engine
from idhub.storage.models import FederatedIdentity, IdentityProvider
from idhub.tenants.service import TenantInfo
from tests.conftest import PG_ENV, PUBLIC_URL, Env, _pg_reachable, make_settings, postgres_url
from tests.flows import login_and_get_code, pkce_pair
from tests.oidc.grants.helpers import REDIRECT_URI, basic, post

MASTER = bytes(range(32))  # tests.conftest.TEST_MASTER_KEY, decoded


@dataclass
class Seeded:
    """A tenant holding users, a group with members, a client, an upstream with a link, a session and tokens."""

    tenant: TenantInfo
    client_id: str
    secret: str
    alice: str
    bob: str
    group_id: str
    link_id: str
    tokens: dict[str, Any]


def seed(env: Env) -> Seeded:
    """Fill a fresh tenant through the real services and the real sign-in and token endpoints."""
    tenant = env.tenant()
    client_id, secret = env.oauth_client(tenant, redirect_uris=[REDIRECT_URI], scope="openid profile email")
    assert secret is not None
    alice = env.user(tenant, "alice", "correct horse", email="alice@example.com", given_name="Alice")
    bob = env.user(tenant, "bob", None, email="bob@example.com")
    ids: dict[str, str] = {}

    async def work() -> None:
        async with env.uow() as uow:
            groups = env.ctx.directory(uow).groups
            group = await groups.create(tenant.id, name="Engineering")
            from idhub.directory.groups import MemberIds

            await groups.add_members(group, MemberIds(users=frozenset({uuid.UUID(alice), uuid.UUID(bob)})))
            provider = IdentityProvider(
                tenant_id=tenant.id,
                alias="corp",
                type="oidc",
                display_name="Corp",
                config={"issuer": "https://corp.example"},
                secret_encrypted=env.ctx.sealer.seal(b"upstream-secret", context="idp:corp"),
            )
            uow.session.add(provider)
            await uow.session.flush()
            link = FederatedIdentity(
                tenant_id=tenant.id, provider_id=provider.id, user_id=uuid.UUID(alice), subject="corp-alice"
            )
            uow.session.add(link)
            await uow.session.flush()
            ids.update(group=str(group.id), link=str(link.id))

    env.run(work)
    verifier, challenge = pkce_pair()
    env.client.cookies.clear()
    query = login_and_get_code(
        env.client,
        tenant_slug=tenant.slug,
        client_id=client_id,
        redirect_uri=REDIRECT_URI,
        username="alice",
        password="correct horse",
        code_challenge=challenge,
        scope="openid profile email",
    )
    env.client.cookies.clear()
    data = {"grant_type": "authorization_code", "code": query["code"], "redirect_uri": REDIRECT_URI}
    response = post(env, tenant, "token", {**data, "code_verifier": verifier}, basic(client_id, secret))
    assert response.status_code == 200, response.text
    return Seeded(tenant, client_id, secret, alice, bob, ids["group"], ids["link"], response.json())


def backup(env: Env, path: Path, *, tenant: str | None = None) -> BackupSummary:
    """Back up the env's database (one tenant, or everything) to ``path``."""

    async def work() -> BackupSummary:
        with path.open("wb") as out:
            return await write_backup(env.ctx.engine, out, master_key=MASTER, tenant=tenant)

    result: BackupSummary = env.run(work)
    return result


def backup_url(url: str, path: Path, *, tenant: str | None = None) -> BackupSummary:
    """Back up the database at ``url`` to ``path``."""

    async def work() -> BackupSummary:
        engine = create_engine(url)
        try:
            with path.open("wb") as out:
                return await write_backup(engine, out, master_key=MASTER, tenant=tenant)
        finally:
            await engine.dispose()

    return asyncio.run(work())


def restore(url: str, path: Path, *, master_key: bytes = MASTER) -> Verified:
    """Restore ``path`` into the database at ``url``."""

    async def work() -> Verified:
        engine = create_engine(url)
        try:
            return await restore_backup(engine, path, master_key=master_key)
        finally:
            await engine.dispose()

    return asyncio.run(work())


def _pg_admin(statement: str) -> None:
    import asyncpg

    url = postgres_url()
    assert url

    async def work() -> None:
        admin = make_url(url).set(database="postgres").render_as_string(hide_password=False)
        conn = await asyncpg.connect(admin.replace("postgresql+asyncpg://", "postgresql://"), timeout=5)
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    asyncio.run(work())


def empty_target(kind: str, tmp_path: Path, name: str) -> str:
    """Return the URL of a brand-new empty database: a SQLite file, or PostgreSQL ``idhub_backup_<name>``."""
    if kind == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / (name + '.db')}"
    url = postgres_url()
    if not url:
        pytest.skip(f"PostgreSQL targets need {PG_ENV}")
    problem = _pg_reachable(url)
    if problem:
        pytest.skip(f"PostgreSQL at {PG_ENV} is unreachable: {problem}")
    database = f"idhub_backup_{name}"
    _pg_admin(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    _pg_admin(f'CREATE DATABASE "{database}"')
    return make_url(url).set(database=database).render_as_string(hide_password=False)


@contextlib.contextmanager
def served(url: str, data_dir: Path, **overrides: Any) -> Iterator[Env]:
    """Serve the database at ``url`` with a fresh app (same master key and public URL as the tests)."""
    settings: Settings = make_settings(url, data_dir, **overrides)
    app = create_app(settings)
    with TestClient(app, base_url=PUBLIC_URL) as client:
        yield Env(client=client, ctx=app.state.ctx, backend=make_url(url).get_backend_name())
