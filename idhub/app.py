"""The application factory: ``create_app(settings)`` builds everything; nothing happens at import time."""

from __future__ import annotations

import asyncio
import gc
import inspect
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import State
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from idhub import __version__, tracing
from idhub.admin.problems import problem_response
from idhub.admin.router import router as admin_router
from idhub.context import AppContext, build_context
from idhub.metrics import Metrics, MetricsMiddleware
from idhub.oidc import discovery, introspection, revocation, token, userinfo
from idhub.ops import router as ops_router
from idhub.request_context import install_log_record_factory
from idhub.routing import FrontDoor, log_unexpected
from idhub.scim.router import router as scim_router
from idhub.scim.router import versions as scim_versions
from idhub.settings import Settings, unknown_setting_warnings
from idhub.storage.faults import as_unavailable
from idhub.storage.migrate import check_schema, upgrade
from idhub.web.account import router as account_router
from idhub.web.authorize import router as authorize_router
from idhub.web.broker import router as broker_router
from idhub.web.logout import router as logout_router
from idhub.web.router import router as web_router

log = logging.getLogger(__name__)

ISSUER_PREFIX = "/tenants/{tenant}"


def _install_fallback_handlers(app: FastAPI) -> None:
    """Answer what no surface owns: a path no route matches, a method no route takes, an error outside a surface.

    Errors inside a surface never get here; each surface's boundary renders its own (idhub.routing).
    """

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if _is_admin(request):  # no route matched under /admin: still a problem (RFC 9457)
            detail = exc.detail if isinstance(exc.detail, str) else ""
            return problem_response(request, exc.status_code, detail, headers=dict(exc.headers or {}))
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        unavailable = as_unavailable(exc)  # a dependency down outside any surface is still a 503
        if unavailable is not None:
            headers = {"retry-after": str(unavailable.retry_after)}
            if _is_admin(request):
                return problem_response(request, 503, "temporarily unavailable", kind="unavailable", headers=headers)
            return JSONResponse({"detail": "temporarily unavailable"}, status_code=503, headers=headers)
        log_unexpected(exc, "operations")
        if _is_admin(request):
            return problem_response(request, 500, "something went wrong on our side; quote the request id")
        return JSONResponse({"detail": "internal error"}, status_code=500)


def _is_admin(request: Request) -> bool:
    return request.url.path.startswith("/admin/")


SECURITY_SCHEMES: dict[str, dict[str, str]] = {
    "scimBearer": {
        "type": "http",
        "scheme": "bearer",
        "description": "A SCIM provisioning token, or a client's own access token with scope scim (RFC 7644 §2).",
    },
    "clientBasic": {
        "type": "http",
        "scheme": "basic",
        "description": "client_secret_basic (RFC 6749 §2.3.1); client_secret_post and private_key_jwt (RFC 7523) "
        "send their credentials in the form instead, and public clients only their client_id.",
    },
    "accessToken": {"type": "http", "scheme": "bearer", "description": "An access token (RFC 6750), RFC 9068 JWT."},
}
_SCIM_DISCOVERY = ("/ServiceProviderConfig", "/ResourceTypes", "/Schemas")


def operation_security(path: str, session_cookie: str) -> list[dict[str, list[str]]] | None:
    """Return how an operation is authenticated (OpenAPI 3.1 §4.8.10): ``[]`` when it is open to anyone.

    ``None`` leaves what the route declared itself (the admin API's bearer scheme).
    """
    if path.startswith("/admin/"):
        return None
    if "/scim/v2/" in path:
        return [] if any(part in path for part in _SCIM_DISCOVERY) else [{"scimBearer": []}]
    endpoint = path.rsplit("/", 1)[-1]
    if path.startswith(ISSUER_PREFIX) and endpoint in ("token", "introspect", "revoke"):
        return [{"clientBasic": []}, {}]  # {}: public clients and form-borne credentials
    if path.endswith("/userinfo"):
        return [{"accessToken": []}]
    if "/account" in path:
        return [{"sessionCookie": []}]
    return []  # discovery, JWKS, the pages, the broker's callbacks, operations: open


def with_security(document: dict[str, Any], session_cookie: str) -> dict[str, Any]:
    """Describe every operation's security in ``document`` (the admin routes describe their own)."""
    schemes = document.setdefault("components", {}).setdefault("securitySchemes", {})
    schemes.update(SECURITY_SCHEMES)
    schemes["sessionCookie"] = {
        "type": "apiKey",
        "in": "cookie",
        "name": session_cookie,
        "description": "The SSO session cookie set at sign-in.",
    }
    for path, operations in document.get("paths", {}).items():
        security = operation_security(path, session_cookie)
        if security is None:
            continue
        for operation in operations.values():
            if isinstance(operation, dict):
                operation["security"] = security
    return document


class AppState(State):
    """``app.state`` with ``ctx`` found as a class attribute.

    Starlette's ``State`` finds its entries in ``__getattr__``, that is after a failed attribute
    lookup has built an ``AttributeError``; every request reads ``ctx``, so it gets a property.
    """

    @property
    def ctx(self) -> AppContext:
        """Return the app's shared services (set by the lifespan)."""
        ctx: AppContext = self._state["ctx"]
        return ctx

    @ctx.setter
    def ctx(self, value: AppContext) -> None:
        self._state["ctx"] = value


class IdhubApp(FastAPI):
    """The FastAPI application behind idhub's front door (:class:`~idhub.routing.FrontDoor`)."""

    front_door: ASGIApp | None = None  # the FrontDoor, or tracing's middleware around it

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.state = AppState()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.front_door is None:
            await super().__call__(scope, receive, send)
        else:
            await self.front_door(scope, receive, send)

    async def framework(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve a request with FastAPI's own stack (what the front door does not serve itself)."""
        await super().__call__(scope, receive, send)


def settle_heap() -> None:
    """Move everything built at start-up out of the garbage collector's sight (``gc.freeze``).

    A full (generation 2) collection walks every tracked object: with the framework, SQLAlchemy's
    mappers and compiled statements on the heap, one took 85 to 95 ms of CPU here, about twice a second
    under load, and every request waiting behind it saw it as its p99. Frozen objects are never
    collected nor traversed; what requests allocate is collected as before, and a full collection then
    costs about 2 ms (measured with ``gc.callbacks``; see bench/README.md). The same trick the CPython
    documentation describes for pre-fork servers, used here for latency.
    """
    gc.collect()
    gc.freeze()


def framework_options() -> dict[str, Any]:
    """Return FastAPI options that turn off its built-in OpenTelemetry hooks where it has them.

    idhub exports Prometheus metrics itself; the framework's per-request telemetry probe costs more
    than a token request's own logic when no OpenTelemetry provider is configured.
    """
    if "telemetry" in inspect.signature(FastAPI.__init__).parameters:
        return {"telemetry": {"tracing": False, "metrics": False, "logs": False, "operation_spans": False}}
    return {}


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build an idhub application for ``settings`` (read from the environment when omitted)."""
    settings = settings or Settings()
    for line in unknown_setting_warnings():
        log.warning("%s", line.removeprefix("warning: "))
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Alembic's env runs its own event loop, so it gets a thread of its own.
        if settings.auto_migrate is False:
            await asyncio.to_thread(check_schema, settings.database_url)  # refuse to serve an old schema
        else:
            await asyncio.to_thread(upgrade, settings.database_url)  # serialised by an advisory lock on PostgreSQL
        ctx = build_context(settings, metrics=metrics)
        app.state.ctx = ctx
        await ctx.start()
        settle_heap()
        try:
            yield
        finally:
            await ctx.close()

    app = IdhubApp(
        **framework_options(),
        title="idhub",
        version=__version__,
        summary="Federated identity and access management: OpenID Connect provider",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    _install_fallback_handlers(app)
    # SCIM first: routes are tried in order, and provisioning engines send the most requests that go
    # through the router (the hottest OAuth endpoints skip it, see BackChannelFastPath).
    app.include_router(scim_router, prefix=ISSUER_PREFIX)
    app.include_router(scim_versions, prefix=ISSUER_PREFIX)
    app.include_router(ops_router)
    app.include_router(discovery.router, prefix=ISSUER_PREFIX)
    app.include_router(authorize_router, prefix=ISSUER_PREFIX)
    for module in (token, userinfo, introspection, revocation):
        app.include_router(module.router, prefix=ISSUER_PREFIX)
    app.include_router(logout_router, prefix=ISSUER_PREFIX)
    app.include_router(web_router, prefix=ISSUER_PREFIX)
    app.include_router(broker_router, prefix=ISSUER_PREFIX)
    app.include_router(account_router, prefix=ISSUER_PREFIX)
    app.include_router(admin_router)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    # Outermost: every request gets its id and address first; the hot back-channel POSTs skip the
    # framework's middleware stack and router.
    app.front_door = FrontDoor(
        app.framework,
        owner=app,
        metrics=metrics,
        trusted_proxies=settings.trusted_proxies,
        fast_routes=token.back_channel_routes(),
        access_log=settings.access_log,
        management_port=settings.management_port,
    )
    tracing.install(app)  # only when OTEL_* variables ask for it: see idhub.tracing
    install_log_record_factory()
    build_document = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = with_security(build_document(), settings.sessions.cookie_name)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
