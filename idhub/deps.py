"""Annotated FastAPI dependencies shared by every router."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from sqlalchemy.ext.asyncio import AsyncSession

from idhub.context import AppContext
from idhub.settings import Settings
from idhub.tenants.service import TenantInfo


async def get_context(request: Request) -> AppContext:
    """Return the app's shared services (async: a plain function would cost a thread-pool hop per request)."""
    ctx: AppContext = request.app.state.ctx
    return ctx


ContextDep = Annotated[AppContext, Depends(get_context)]


async def get_settings(ctx: ContextDep) -> Settings:
    """Return the app's settings."""
    return ctx.settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


async def get_session(ctx: ContextDep) -> AsyncIterator[AsyncSession]:
    """Yield the request's unit of work: the one place that commits (or rolls back on error).

    Declared with ``scope="function"`` so the commit happens before the response is sent.
    """
    async with ctx.sessionmaker() as session:
        try:
            yield session
        except BaseException:
            await session.rollback()
            raise
        else:
            await session.commit()
            await ctx.revocations.committed(session)


SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]


async def get_tenant(tenant: str, ctx: ContextDep) -> TenantInfo:
    """Resolve the ``{tenant}`` path segment; unknown tenants are 404."""
    info = await ctx.tenants.get(tenant)
    if info is None:
        raise HTTPException(status_code=404, detail="unknown tenant")
    return info


TenantDep = Annotated[TenantInfo, Depends(get_tenant)]


def client_address(request: Request) -> str:
    """Return the caller's address (the proxy-supplied one only from trusted proxies)."""
    client = request.scope.get("client")
    peer = str(client[0]) if client else "unknown"
    ctx: AppContext = request.app.state.ctx
    if ctx.settings.trusted_proxies and peer in ctx.settings.trusted_proxies:
        forwarded = request.headers.get("x-forwarded-for", "")
        if forwarded:
            return forwarded.split(",")[-1].strip() or peer
    return peer
