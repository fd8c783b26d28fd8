"""Standard claims released per scope (OIDC Core §5.1, §5.4)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

# OIDC Core §5.4: the claims each scope value requests (those idhub keeps).
SCOPE_CLAIMS: dict[str, tuple[str, ...]] = {
    "profile": ("name", "given_name", "family_name", "preferred_username", "updated_at"),
    "email": ("email", "email_verified"),
}


def _value(user: Any, name: str) -> Any:
    if name == "preferred_username":
        return user.username
    if name == "updated_at":
        # OIDC Core §5.1: seconds since the epoch.
        return int(user.updated_at.timestamp()) if user.updated_at is not None else None
    return getattr(user, name)


def user_claims(user: Any, scopes: Iterable[str]) -> dict[str, Any]:
    """Return the claims the granted ``scopes`` release about ``user`` (``sub`` excluded; unset ones omitted).

    ``user`` is a :class:`~idhub.storage.models.User` or a row with its columns (``GRANT_AND_USER_COLUMNS``).
    """
    claims: dict[str, Any] = {}
    for scope in scopes:
        for name in SCOPE_CLAIMS.get(scope, ()):
            value = _value(user, name)
            if value is not None:
                claims[name] = value
    if "email_verified" in claims and "email" not in claims:
        del claims["email_verified"]
    return claims
