"""Helpers of the access policy tests: groups, policies and refresh tokens made through the services."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Sequence
from datetime import timedelta

from sqlalchemy import select

from idhub.directory.groups import MemberIds
from idhub.storage.base import utcnow
from idhub.storage.models import Client, Grant, RefreshToken
from idhub.tenants.service import TenantInfo
from tests.conftest import Env


def make_group(
    env: Env,
    tenant: TenantInfo,
    name: str,
    users: Sequence[str | uuid.UUID] = (),
    groups: Sequence[uuid.UUID] = (),
) -> uuid.UUID:
    """Create a group with direct members (users and nested groups); return its id."""

    async def work() -> uuid.UUID:
        async with env.uow() as uow:
            members = MemberIds(frozenset(uuid.UUID(str(u)) for u in users), frozenset(groups))
            group = await env.ctx.directory(uow).groups.create(tenant.id, name=name, members=members)
            return group.id

    result: uuid.UUID = env.run(work)
    return result


def remove_member(env: Env, tenant: TenantInfo, group_id: uuid.UUID, user_id: str | uuid.UUID) -> None:
    """Remove a direct user member through the directory."""

    async def work() -> None:
        async with env.uow() as uow:
            groups = env.ctx.directory(uow).groups
            group = await groups.get(tenant.id, group_id)
            await groups.remove_members(group, MemberIds(users=frozenset({uuid.UUID(str(user_id))})))

    env.run(work)


def make_policy(env: Env, tenant: TenantInfo, client_id: str, group_id: uuid.UUID | None, scope: str) -> uuid.UUID:
    """Create an access policy (``group_id`` ``None``: the client's machine policy); return its id."""

    async def work() -> uuid.UUID:
        async with env.uow() as uow:
            view = await env.ctx.directory(uow).entitlements.create(
                tenant.id, client_id=client_id, group_id=group_id, scopes=scope
            )
            return view.id

    result: uuid.UUID = env.run(work)
    return result


def update_policy(env: Env, tenant: TenantInfo, policy_id: uuid.UUID, scope: str) -> None:
    """Replace a policy's scopes."""

    async def work() -> None:
        async with env.uow() as uow:
            await env.ctx.directory(uow).entitlements.update(tenant.id, policy_id, scopes=scope)

    env.run(work)


def delete_policy(env: Env, tenant: TenantInfo, policy_id: uuid.UUID) -> None:
    """Delete a policy."""

    async def work() -> None:
        async with env.uow() as uow:
            await env.ctx.directory(uow).entitlements.delete(tenant.id, policy_id)

    env.run(work)


def seed_refresh(env: Env, tenant: TenantInfo, client_id: str, user_id: str | uuid.UUID, scope: str) -> str:
    """Give a person a live grant with one refresh token carrying ``scope`` at a client; return the grant id."""

    async def work() -> str:
        now = utcnow()
        async with env.uow() as uow:
            session = uow.session
            client = await session.scalar(
                select(Client.id).where(Client.tenant_id == tenant.id, Client.client_id == client_id)
            )
            assert client is not None
            grant_id = secrets.token_hex(8)
            user = uuid.UUID(str(user_id))
            session.add(Grant(id=grant_id, tenant_id=tenant.id, client_id=client, user_id=user, scope=scope))
            await session.flush()
            session.add(
                RefreshToken(
                    token_hash=secrets.token_hex(16),
                    tenant_id=tenant.id,
                    client_id=client,
                    grant_id=grant_id,
                    user_id=user,
                    scope=scope,
                    expires_at=now + timedelta(days=1),
                )
            )
            return grant_id

    result: str = env.run(work)
    return result


def grant_revoked(env: Env, grant_id: str) -> bool:
    """Tell whether a grant and all its refresh tokens are revoked."""

    async def work() -> bool:
        async with env.ctx.sessionmaker() as session:
            grant = await session.scalar(select(Grant.revoked_at).where(Grant.id == grant_id))
            tokens = list(
                await session.scalars(select(RefreshToken.revoked_at).where(RefreshToken.grant_id == grant_id))
            )
            return grant is not None and all(t is not None for t in tokens)

    result: bool = env.run(work)
    return result
