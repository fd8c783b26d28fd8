"""The token endpoint ``POST {issuer}/token`` (RFC 6749 §3.2): parse, call the grant registry, answer JSON.

This is the hottest route of the service, so it avoids dependency chains, form libraries and models:
it reads the body itself and answers with a pre-serialised JSON body.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Request, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from idhub.metrics import NOSNIFF, Metrics
from idhub.oidc.grants import exchange
from idhub.oidc.params import (
    CLIENT_AUTH_FIELDS,
    NoStoreJSON,
    form_request_body,
    header,
    json_response,
    oauth_error_responses,
    read_form,
    tenant_of,
)
from idhub.oidc.routing import SURFACE, OAuthRoute, render_oauth_error
from idhub.routing import context_of, run_in_boundary, uow_of

router = APIRouter(tags=["oidc"], route_class=OAuthRoute)


_S: dict[str, Any] = {"type": "string"}
TOKEN_FIELDS: dict[str, Any] = {
    "grant_type": {**_S, "enum": ["authorization_code", "refresh_token", "client_credentials"]},
    "code": {**_S, "description": "authorization_code"},
    "redirect_uri": {**_S, "description": "authorization_code: identical to the authorization request's"},
    "code_verifier": {**_S, "minLength": 43, "maxLength": 128, "description": "PKCE (RFC 7636 §4.5)"},
    "refresh_token": {**_S, "description": "refresh_token"},
    "scope": {**_S, "description": "space-separated scopes (RFC 6749 §3.3)"},
    "resource": {**_S, "description": "resource indicator (RFC 8707)"},
    **CLIENT_AUTH_FIELDS,
}
TOKEN_RESPONSE: dict[str, Any] = {
    "type": "object",
    "required": ["access_token", "token_type", "expires_in"],
    "properties": {
        "access_token": _S,
        "token_type": {**_S, "enum": ["Bearer"]},
        "expires_in": {"type": "integer"},
        "scope": _S,
        "refresh_token": _S,
        "id_token": _S,
    },
}


@router.post(
    "/token",
    summary="Token endpoint (RFC 6749 §3.2)",
    response_class=Response,
    openapi_extra=form_request_body(TOKEN_FIELDS, required=["grant_type"]),
    responses={200: json_response("tokens issued (RFC 6749 §5.1)", TOKEN_RESPONSE), **oauth_error_responses(400, 401)},
)
async def token(tenant: str, request: Request) -> Response:
    """Issue tokens for an authorization code, a refresh token or client credentials."""
    ctx = context_of(request)
    info = await tenant_of(ctx, tenant)
    params = await read_form(request)
    body = await exchange(ctx, info, params, uow_of(request), authorization=header(request, b"authorization"))
    return NoStoreJSON(body)


class _RouteLabel:
    """Stands in for the matched route in ``scope["route"]`` so metrics label fast-path requests."""

    __slots__ = ("path",)

    def __init__(self, path: str) -> None:
        self.path = path


FastHandler = Callable[[str, Request], Awaitable[Response]]


class BackChannelFastPath:
    """ASGI middleware that serves the hot back-channel POSTs without the framework's router.

    ``POST {issuer}/token`` and ``POST {issuer}/introspect`` run thousands of times per second; the
    router and dependency machinery cost more than the endpoint itself, so these two paths go straight
    to the same endpoint functions the documented routes use, inside the same boundary as the OAuth
    routes (:func:`~idhub.routing.run_in_boundary`: one unit of work, RFC 6749 §5.2 errors).
    """

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        from idhub.oidc.introspection import introspect  # imported here: introspection imports this module

        self.app = app
        self.metrics = metrics
        self.handlers: dict[str, tuple[FastHandler, _RouteLabel]] = {}
        self.register("token", token)
        self.register("introspect", introspect)

    def register(self, endpoint: str, handler: FastHandler) -> None:
        """Serve ``POST /tenants/{tenant}/{endpoint}`` with ``handler(tenant, request)``."""
        self.handlers[endpoint] = (handler, _RouteLabel(f"/tenants/{{tenant}}/{endpoint}"))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"].startswith("/tenants/"):
            slug, sep, endpoint = scope["path"][9:].partition("/")
            entry = self.handlers.get(endpoint) if sep and slug else None
            if entry is not None:
                handler, label = entry
                scope["route"] = label
                start = time.perf_counter()

                async def call(request: Request) -> Response:
                    return await handler(slug, request)

                response = await run_in_boundary(
                    Request(scope, receive), call, surface=SURFACE, render=render_oauth_error
                )
                # This middleware sits outside the metrics middleware, so it records and secures itself.
                if NOSNIFF not in response.raw_headers:
                    response.raw_headers.append(NOSNIFF)
                await response(scope, receive, send)
                self.metrics.observe(label.path, "POST", response.status_code, time.perf_counter() - start)
                return
        await self.app(scope, receive, send)
