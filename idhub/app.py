"""The application factory: ``create_app(settings)`` builds everything; nothing happens at import time."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from idhub import __version__
from idhub.context import build_context
from idhub.metrics import Metrics, MetricsMiddleware
from idhub.oidc import authorize, discovery, introspection, logout, revocation, token, userinfo
from idhub.oidc.errors import InvalidClient, InvalidToken, MissingToken, OAuthError, ServerError
from idhub.oidc.params import NO_STORE
from idhub.ops import router as ops_router
from idhub.scim.errors import ScimError
from idhub.scim.router import router as scim_router
from idhub.scim.router import scim_error_response
from idhub.scim.router import versions as scim_versions
from idhub.settings import Settings
from idhub.storage.migrate import upgrade
from idhub.web.router import router as web_router

log = logging.getLogger(__name__)

ISSUER_PREFIX = "/tenants/{tenant}"


def oauth_error_response(exc: OAuthError) -> Response:
    """Render an OAuth error as RFC 6749 §5.2 JSON (RFC 6750 §3 for bearer-token errors)."""
    headers = dict(NO_STORE)
    if isinstance(exc, MissingToken):
        # RFC 6750 §3.1: a request without credentials gets the challenge and no error information.
        headers["www-authenticate"] = 'Bearer realm="idhub"'
        return Response(status_code=401, headers=headers)
    if isinstance(exc, InvalidClient):
        headers["www-authenticate"] = 'Basic realm="idhub"'
    elif isinstance(exc, InvalidToken) or (
        exc.status_code in (401, 403) and exc.error in ("invalid_token", "insufficient_scope")
    ):
        headers["www-authenticate"] = f'Bearer error="{exc.error}"'
    return JSONResponse(exc.to_dict(), status_code=exc.status_code, headers=headers)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(OAuthError)
    async def _oauth_error(_request: Request, exc: OAuthError) -> Response:
        return oauth_error_response(exc)

    @app.exception_handler(ScimError)
    async def _scim_error(_request: Request, exc: ScimError) -> Response:
        return scim_error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
        if "/scim/v2/" in request.url.path:
            return scim_error_response(ScimError("malformed request parameters"))
        if request.url.path.startswith("/tenants/"):
            return oauth_error_response(OAuthError("malformed request parameters"))
        return JSONResponse({"detail": "invalid request"}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if "/scim/v2/" in request.url.path or request.url.path.endswith("/scim/v2"):
            error = ScimError(str(exc.detail))
            error.status = exc.status_code
            return scim_error_response(error)
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> Response:
        log.exception("unhandled error", exc_info=exc)
        return oauth_error_response(ServerError())


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
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        migrate = settings.auto_migrate if settings.auto_migrate is not None else settings.is_sqlite
        if migrate:
            # Alembic's env runs its own event loop, so it gets a thread of its own.
            await asyncio.to_thread(upgrade, settings.database_url)
        ctx = build_context(settings, metrics=metrics)
        app.state.ctx = ctx
        await ctx.revocations.start()
        try:
            yield
        finally:
            await ctx.close()

    app = FastAPI(
        **framework_options(),
        title="idhub",
        version=__version__,
        summary="Federated identity and access management: OpenID Connect provider",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    _install_error_handlers(app)
    # SCIM first: routes are tried in order, and provisioning engines send the most requests that go
    # through the router (the hottest OAuth endpoints skip it, see BackChannelFastPath).
    app.include_router(scim_router, prefix=ISSUER_PREFIX)
    app.include_router(scim_versions, prefix=ISSUER_PREFIX)
    app.include_router(ops_router)
    for module in (discovery, authorize, token, userinfo, introspection, revocation, logout):
        app.include_router(module.router, prefix=ISSUER_PREFIX)
    app.include_router(web_router, prefix=ISSUER_PREFIX)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    # Outermost: the hot back-channel POSTs skip the framework's router and middleware stack.
    app.add_middleware(token.BackChannelFastPath, metrics=metrics)
    return app
