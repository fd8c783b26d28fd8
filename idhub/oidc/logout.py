"""RP-initiated logout's protocol rules (OpenID Connect RP-Initiated Logout 1.0 §2-§3).

The page route (``{issuer}/logout``: the confirmation and signed-out pages) is :mod:`idhub.web.logout`.

The ``post_logout_redirect_uri`` must match one registered for the client exactly; otherwise the
user sees an error page and is not redirected (§3). Without an ``id_token_hint`` naming the signed-in
user the logout needs the user's confirmation on a CSRF-protected page (§2 "SHOULD ask").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from idhub.clients.service import ClientInfo
from idhub.context import AppContext
from idhub.sessions.service import SsoSession
from idhub.tenants.service import TenantInfo
from idhub.tokens.service import TokenInvalid

PARAMETERS = ("id_token_hint", "client_id", "post_logout_redirect_uri", "state", "logout_hint", "ui_locales")


class LogoutRefused(Exception):
    """The logout request is invalid; show an error page (never redirect)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True, slots=True)
class LogoutRequest:
    """A validated logout request."""

    client: ClientInfo | None
    post_logout_redirect_uri: str | None
    state: str | None
    hint_sub: str | None
    confirmation: str | None


def _single(fields: dict[str, list[str]], name: str) -> str | None:
    """Return a parameter given at most once (a repeated one is refused, as in RFC 6749 §3.1)."""
    values = fields.get(name)
    if not values:
        return None
    if len(values) > 1:
        raise LogoutRefused("The sign-out request repeats a parameter.")
    return values[0]


def _audiences(claims: dict[str, Any]) -> list[str]:
    aud = claims.get("aud")
    if isinstance(aud, str):
        return [aud]
    if isinstance(aud, list):
        return [value for value in aud if isinstance(value, str)]
    return []


async def validate_logout(*, ctx: AppContext, tenant: TenantInfo, fields: dict[str, list[str]]) -> LogoutRequest:
    """Validate the parameters of RP-Initiated Logout 1.0 §2 or raise :class:`LogoutRefused`."""
    hint = _single(fields, "id_token_hint")
    client_id = _single(fields, "client_id")
    redirect_uri = _single(fields, "post_logout_redirect_uri")
    state = _single(fields, "state")
    confirmation = _single(fields, "csrf_token")
    hint_sub: str | None = None
    if hint is not None:
        try:
            # Expired ID tokens are fine here (§2): only signature and issuer are checked.
            claims = await ctx.tokens.verify_own_jwt(tenant=tenant, token=hint, typ="JWT")
        except TokenInvalid as exc:
            raise LogoutRefused("The sign-out request carries an invalid id_token_hint.") from exc
        sub = claims.get("sub")
        hint_sub = sub if isinstance(sub, str) else None
        audiences = _audiences(claims)
        if client_id is None:
            azp = claims.get("azp")
            client_id = azp if isinstance(azp, str) else (audiences[0] if len(audiences) == 1 else None)
        elif client_id not in audiences:
            raise LogoutRefused("The id_token_hint was not issued to this application.")
    client = await ctx.clients.get(tenant.id, client_id) if client_id else None
    if client_id and client is None:
        raise LogoutRefused("The application that sent you here is unknown.")
    if redirect_uri is not None:
        # §3: exact match against the client's registered post_logout_redirect_uris.
        if client is None:
            raise LogoutRefused("A post_logout_redirect_uri needs client_id or id_token_hint.")
        if redirect_uri not in client.post_logout_redirect_uris:
            raise LogoutRefused("The post_logout_redirect_uri is not registered for this application.")
    if state is not None and len(state) > 2048:
        raise LogoutRefused("The state parameter is too long.")
    return LogoutRequest(client, redirect_uri, state, hint_sub, confirmation)


def confirmation_needed(request: LogoutRequest, sso: SsoSession | None) -> bool:
    """Tell whether the user must confirm: only a valid hint naming the signed-in user skips it."""
    if sso is None:
        return False
    return request.hint_sub is None or request.hint_sub != sso.subject


def confirmation_purpose(sso: SsoSession) -> str:
    return f"logout:{sso.id}"
