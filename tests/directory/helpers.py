"""Helpers of the directory tests: a unit of work whose events are recorded, and seeded access to cut off."""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar

from sqlalchemy import func, select

from idhub.directory import Directory
from idhub.events import Actor, DomainEvent
from idhub.storage.base import utcnow
from idhub.storage.models import AuditEvent, Client, Grant, RefreshToken, UserSession
from idhub.storage.uow import EventBus, UnitOfWork, UnitOfWorkFactory
from idhub.tenants.service import TenantInfo
from tests.conftest import TEST_ACTOR, Env

E = TypeVar("E", bound=DomainEvent)


@dataclass
class Recorder:
    """Units of work with the app's hooks whose published (and refused) events are recorded in order.

    Published events are also handed to the app's own bus, so the revocation state still hears of them.
    """

    env: Env
    published: list[DomainEvent] = field(default_factory=list)
    refused: list[DomainEvent] = field(default_factory=list)

    def __post_init__(self) -> None:
        app = self.env.ctx.uow_factory
        bus = EventBus()
        bus.subscribe(DomainEvent, self.published.append)
        bus.subscribe(DomainEvent, lambda event: app.bus.publish([event]))
        self.factory = UnitOfWorkFactory(
            app.sessionmaker,
            bus=bus,
            before_commit=app.before_commit,
            after_rollback=[*app.after_rollback, self._after_rollback],
        )

    async def _after_rollback(self, _uow: UnitOfWork, events: Any) -> None:
        self.refused.extend(events)

    def uow(self, actor: Actor = TEST_ACTOR) -> UnitOfWork:
        """Start a recorded unit of work."""
        return self.factory(actor=actor, surface="test")

    def directory(self, uow: UnitOfWork) -> Directory:
        """Return the app's directory acting in ``uow``."""
        return self.env.ctx.directory(uow)

    def of(self, kind: type[E]) -> list[E]:
        """Return the published events of one type."""
        return [event for event in self.published if isinstance(event, kind)]

    def kinds(self) -> list[str]:
        """Return the published events' class names, in order."""
        return [type(event).__name__ for event in self.published]

    def clear(self) -> None:
        """Forget what was recorded so far."""
        self.published.clear()
        self.refused.clear()


async def audit_actions(env: Env, tenant_id: uuid.UUID, target_id: uuid.UUID | str) -> list[str]:
    """Return the audit actions recorded about one target, oldest first."""
    async with env.ctx.sessionmaker() as session:
        rows = await session.scalars(
            select(AuditEvent.action)
            .where(AuditEvent.tenant_id == tenant_id, AuditEvent.target_id == str(target_id))
            .order_by(AuditEvent.occurred_at)
        )
        return list(rows)


async def count(env: Env, statement: Any) -> int:
    """Run a ``SELECT count(*)`` built from ``statement``'s FROM and WHERE."""
    async with env.ctx.sessionmaker() as session:
        return int(await session.scalar(select(func.count()).select_from(statement.subquery())) or 0)


@dataclass(frozen=True)
class Access:
    """A session, a grant and a refresh token held by one user."""

    session_id: str
    grant_id: str
    refresh_id: uuid.UUID


def seed_access(env: Env, tenant: TenantInfo, user_id: uuid.UUID) -> Access:
    """Give ``user_id`` a live SSO session, a grant and a refresh token of a fresh client."""
    client_id, _secret = env.oauth_client(tenant, redirect_uris=["https://rp.example/cb"])

    async def work() -> Access:
        now = utcnow()
        async with env.uow() as uow:
            session = uow.session
            client = await session.scalar(select(Client.id).where(Client.client_id == client_id))
            assert client is not None
            sid, gid = secrets.token_hex(8), secrets.token_hex(8)
            session.add(
                UserSession(
                    id=sid,
                    tenant_id=tenant.id,
                    user_id=user_id,
                    token_hash=secrets.token_hex(16),
                    auth_time=now,
                    expires_at=now + timedelta(hours=1),
                )
            )
            session.add(Grant(id=gid, tenant_id=tenant.id, client_id=client, user_id=user_id, scope="openid"))
            await session.flush()
            refresh = RefreshToken(
                token_hash=secrets.token_hex(16),
                tenant_id=tenant.id,
                client_id=client,
                grant_id=gid,
                user_id=user_id,
                scope="openid",
                expires_at=now + timedelta(days=1),
            )
            session.add(refresh)
            await session.flush()
            return Access(sid, gid, refresh.id)

    result: Access = env.run(work)
    return result


async def revoked(env: Env, access: Access) -> tuple[bool, bool, bool]:
    """Tell whether the session, the grant and the refresh token of ``access`` are revoked."""
    async with env.ctx.sessionmaker() as session:
        s = await session.scalar(select(UserSession.revoked_at).where(UserSession.id == access.session_id))
        g = await session.scalar(select(Grant.revoked_at).where(Grant.id == access.grant_id))
        r = await session.scalar(select(RefreshToken.revoked_at).where(RefreshToken.id == access.refresh_id))
        return s is not None, g is not None, r is not None
