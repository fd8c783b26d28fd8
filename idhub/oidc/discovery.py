"""OpenID Connect Discovery 1.0 / RFC 8414 metadata and the JWKS endpoint."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Response

from idhub.crypto.jwt import CLIENT_ASSERTION_ALGS, SIGNING_ALGS
from idhub.deps import ContextDep, TenantDep
from idhub.errors import Unavailable
from idhub.oidc.routing import OAuthRoute
from idhub.tenants.service import TenantInfo

router = APIRouter(tags=["discovery"], route_class=OAuthRoute)

SCOPES_SUPPORTED = ["openid", "profile", "email", "offline_access"]
CLAIMS_SUPPORTED = [
    "sub", "iss", "aud", "exp", "iat", "auth_time", "nonce", "acr", "amr", "azp", "sid", "at_hash",
    "name", "given_name", "family_name", "preferred_username", "email", "email_verified", "updated_at",
]  # fmt: skip
CLIENT_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "private_key_jwt", "none"]
CACHEABLE = "public, max-age=300"


def endpoint_urls(issuer: str) -> dict[str, str]:
    """Return the absolute URL of every endpoint of the issuer."""
    return {
        "authorization_endpoint": f"{issuer}/authorize",
        "token_endpoint": f"{issuer}/token",
        "userinfo_endpoint": f"{issuer}/userinfo",
        "jwks_uri": f"{issuer}/jwks",
        "introspection_endpoint": f"{issuer}/introspect",
        "revocation_endpoint": f"{issuer}/revoke",
        "end_session_endpoint": f"{issuer}/logout",
    }


def provider_metadata(tenant: TenantInfo) -> dict[str, Any]:
    """Build the provider metadata (OIDC Discovery 1.0 §3, RFC 8414 §2, RFC 9207 §3)."""
    return {
        "issuer": tenant.issuer,
        **endpoint_urls(tenant.issuer),
        "scopes_supported": SCOPES_SUPPORTED,
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": list(SIGNING_ALGS),
        "userinfo_signing_alg_values_supported": [],
        "token_endpoint_auth_methods_supported": CLIENT_AUTH_METHODS,
        "token_endpoint_auth_signing_alg_values_supported": list(CLIENT_ASSERTION_ALGS),
        "introspection_endpoint_auth_methods_supported": CLIENT_AUTH_METHODS[:3],
        "introspection_endpoint_auth_signing_alg_values_supported": list(CLIENT_ASSERTION_ALGS),
        "revocation_endpoint_auth_methods_supported": CLIENT_AUTH_METHODS,
        "revocation_endpoint_auth_signing_alg_values_supported": list(CLIENT_ASSERTION_ALGS),
        "code_challenge_methods_supported": ["S256"],
        "claims_supported": CLAIMS_SUPPORTED,
        "claims_parameter_supported": False,
        "request_parameter_supported": False,
        "request_uri_parameter_supported": False,
        "prompt_values_supported": ["none", "login", "consent"],
        "authorization_response_iss_parameter_supported": True,
        "access_token_signing_alg_values_supported": list(SIGNING_ALGS),
    }


@router.get("/.well-known/openid-configuration", summary="OpenID Provider metadata")
async def openid_configuration(tenant: TenantDep) -> Response:
    """Serve OpenID Connect Discovery 1.0 metadata."""
    return _json(provider_metadata(tenant))


@router.get("/.well-known/oauth-authorization-server", summary="OAuth 2.0 authorization server metadata")
async def oauth_metadata(tenant: TenantDep) -> Response:
    """Serve RFC 8414 metadata (the same document)."""
    return _json(provider_metadata(tenant))


@router.get("/jwks", summary="JSON Web Key Set")
async def jwks(tenant: TenantDep, ctx: ContextDep) -> Response:
    """Publish the next, active and still-needed retired public keys."""
    keys = await ctx.keys.get(tenant.id)
    if not keys.keys:
        raise Unavailable("no signing keys are published", internal=f"tenant {tenant.slug} has no signing keys")
    return _json(keys.jwks, media_type="application/jwk-set+json")


def _json(body: dict[str, Any], media_type: str = "application/json") -> Response:
    return Response(
        json.dumps(body, separators=(",", ":")), media_type=media_type, headers={"cache-control": CACHEABLE}
    )
