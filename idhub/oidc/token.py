"""The token endpoint ``POST {issuer}/token`` (RFC 6749 §3.2): parse, call the grant registry, answer JSON.

This is the hottest route of the service, so it avoids dependency chains, form libraries and models:
it reads the body itself and answers with a pre-serialised JSON body.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

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
from idhub.routing import FastRoute, context_of, uow_of

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


def back_channel_routes() -> dict[str, FastRoute]:
    """Return the hot back-channel POSTs the front door serves without the framework's router.

    ``POST {issuer}/token`` and ``POST {issuer}/introspect`` run thousands of times per second; they
    go straight to the same endpoint functions the documented routes use, in the OAuth surface's
    boundary (one unit of work, RFC 6749 §5.2 errors). See :class:`~idhub.routing.FrontDoor`.
    """
    from idhub.oidc.introspection import introspect  # imported here: introspection imports this module

    return {
        endpoint: FastRoute(handler, SURFACE, render_oauth_error, f"/tenants/{{tenant}}/{endpoint}")
        for endpoint, handler in (("token", token), ("introspect", introspect))
    }
