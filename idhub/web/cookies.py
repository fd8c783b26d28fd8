"""Set and clear idhub's browser cookies (HttpOnly, SameSite=Lax, Secure behind https, tenant path)."""

from __future__ import annotations

from fastapi import Response

from idhub.context import AppContext
from idhub.oidc.interaction import BROWSER_COOKIE
from idhub.sessions.service import cookie_path
from idhub.tenants.service import TenantInfo


def set_cookie(response: Response, ctx: AppContext, tenant: TenantInfo, name: str, value: str) -> None:
    """Set a browser-session cookie scoped to the tenant's path."""
    response.set_cookie(
        name,
        value,
        path=cookie_path(tenant.slug),
        httponly=True,
        samesite="lax",
        secure=ctx.settings.secure_cookies,
    )


def clear_cookie(response: Response, ctx: AppContext, tenant: TenantInfo, name: str) -> None:
    """Delete a cookie set by :func:`set_cookie`."""
    response.delete_cookie(
        name, path=cookie_path(tenant.slug), httponly=True, samesite="lax", secure=ctx.settings.secure_cookies
    )


def set_session_cookie(response: Response, ctx: AppContext, tenant: TenantInfo, value: str) -> None:
    """Set the SSO session cookie (no Max-Age: the server enforces idle and absolute lifetimes)."""
    set_cookie(response, ctx, tenant, ctx.settings.sessions.cookie_name, value)


def set_browser_cookie(response: Response, ctx: AppContext, tenant: TenantInfo, value: str) -> None:
    """Set the cookie that binds interactions to this browser."""
    set_cookie(response, ctx, tenant, BROWSER_COOKIE, value)
