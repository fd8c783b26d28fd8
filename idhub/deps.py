"""Annotated FastAPI dependencies shared by every router."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from idhub.context import AppContext
from idhub.errors import NotFound
from idhub.request_context import RequestInfo
from idhub.routing import context_of, uow_of
from idhub.settings import Settings
from idhub.storage.uow import UnitOfWork
from idhub.tenants.service import TenantInfo


async def get_context(request: Request) -> AppContext:
    """Return the app's shared services (async: a plain function would cost a thread-pool hop per request)."""
    return context_of(request)


ContextDep = Annotated[AppContext, Depends(get_context)]


async def get_settings(ctx: ContextDep) -> Settings:
    """Return the app's settings."""
    return ctx.settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


async def get_uow(request: Request) -> UnitOfWork:
    """Return the request's unit of work; the surface's boundary commits it (or rolls it back)."""
    return uow_of(request)


UnitOfWorkDep = Annotated[UnitOfWork, Depends(get_uow)]


async def get_tenant(tenant: str, ctx: ContextDep) -> TenantInfo:
    """Resolve the ``{tenant}`` path segment; an unknown tenant is :class:`NotFound` (each surface's 404)."""
    info = await ctx.tenants.get(tenant)
    if info is None:
        raise NotFound("unknown tenant")
    return info


TenantDep = Annotated[TenantInfo, Depends(get_tenant)]


def request_info(request: Request) -> RequestInfo:
    """Return the request id and the caller's address (set by the request-context middleware)."""
    info: RequestInfo | None = request.scope.get("idhub.request")
    if info is None:  # an app built without the middleware (not idhub's own)
        client = request.scope.get("client")
        return RequestInfo("-", str(client[0]) if client else "unknown")
    return info


def client_address(request: Request) -> str:
    """Return the caller's address (the proxy-supplied one only from trusted proxies)."""
    return request_info(request).address or "unknown"
