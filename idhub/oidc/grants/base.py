"""What every grant handler gets (:class:`TokenRequest`) and the helpers they share."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, select
from sqlalchemy.ext.asyncio import AsyncSession

from idhub.clients.service import ClientInfo
from idhub.context import AppContext
from idhub.directory.entitlements import PERSON_ONLY_SCOPES, person_scopes
from idhub.directory.rules import is_live
from idhub.oidc.errors import InvalidGrant, InvalidScope, InvalidTarget
from idhub.oidc.params import Params
from idhub.storage.tables import GRANT_AND_USER_COLUMNS, GRANTS, USERS
from idhub.storage.uow import UnitOfWork
from idhub.tenants.service import TenantInfo

# RFC 6749 §3.3: scope = scope-token *( SP scope-token ), scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
SCOPE_RE = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+(?: [\x21\x23-\x5b\x5d-\x7e]+)*")
# Scopes that only make sense with a user (OIDC Core §3.1.2.1, §11).
USER_ONLY_SCOPES = PERSON_ONLY_SCOPES


@dataclass(slots=True)
class TokenRequest:
    """One authenticated token request, as the grant handlers see it."""

    ctx: AppContext
    tenant: TenantInfo
    client: ClientInfo
    params: Params
    uow: UnitOfWork
    issued: list[str] = field(default_factory=list)
    subject: str = ""  # whom the issued tokens are about (a user id, or the client itself)


def requested_scopes(params: Params) -> list[str] | None:
    """Return the ``scope`` parameter as a de-duplicated list, or ``None`` when omitted (RFC 6749 §3.3)."""
    raw = params.get("scope")
    if raw is None:
        return None
    if len(raw) > 2000:
        raise InvalidScope("scope too long")
    if not SCOPE_RE.fullmatch(raw):
        raise InvalidScope("malformed scope")
    return list(dict.fromkeys(raw.split(" ")))


def narrow_scope(requested: list[str] | None, granted: str) -> str:
    """Return the scope for a new access token: the granted one, or a subset of it (RFC 6749 §6)."""
    if requested is None:
        return granted
    allowed = set(granted.split())
    if not set(requested) <= allowed:
        raise InvalidScope("requested scope exceeds the scope granted")
    return " ".join(requested)


def default_audience(client: ClientInfo) -> str:
    """Return the client's default audience: its first registered resource, else the client itself."""
    return client.resources[0] if client.resources else client.client_id


def choose_audience(
    params: Params, *, allowed: tuple[str, ...] | list[str], default: str | list[str]
) -> str | list[str]:
    """Pick the access token audience (RFC 8707 §2.2, RFC 9068 §3).

    Every requested ``resource`` must be among ``allowed`` (``invalid_target`` otherwise); without a
    request the ``default`` applies.
    """
    requested = params.all("resource")
    if not requested:
        return default
    for resource in requested:
        if resource not in allowed:
            raise InvalidTarget("the requested resource is not allowed for this client")
    unique = list(dict.fromkeys(requested))
    return unique[0] if len(unique) == 1 else unique


def one_or_list(values: list[str]) -> str | list[str]:
    """Return a single audience as a string, several as a list (RFC 7519 §4.1.3)."""
    return values[0] if len(values) == 1 else list(values)


_GRANT_USER = (
    select(*GRANT_AND_USER_COLUMNS)
    .join(USERS, USERS.c.id == GRANTS.c.user_id)
    .where(GRANTS.c.id == bindparam("p_grant_id"), GRANTS.c.tenant_id == bindparam("p_tenant_id"))
)


async def live_grant_user(
    session: AsyncSession, *, tenant_id: uuid.UUID, grant_id: str, described: str
) -> tuple[datetime, Any]:
    """Return the grant's start and its user; a revoked grant or a user who is no longer live is ``invalid_grant``.

    The client learns only that ``described`` (the code or the refresh token) is not valid; why goes to the log.
    """
    found = (await session.execute(_GRANT_USER, {"p_grant_id": grant_id, "p_tenant_id": tenant_id})).first()
    return check_live_grant(found, grant_id=grant_id, described=described)


def check_live_grant(found: Any, *, grant_id: str, described: str) -> tuple[datetime, Any]:
    """Check a grant read with its user (``GRANT_AND_USER_COLUMNS``); return its start and the user's row.

    The row stands in for the user where the token response reads it (``id``, the claims).
    """
    if found is None or found.grant_revoked_at is not None:
        raise InvalidGrant(f"{described} is invalid or expired", internal=f"grant {grant_id} was revoked")
    if not is_live(found):
        raise InvalidGrant(f"{described} is invalid or expired", internal=f"user {found.id} is disabled or deleted")
    return found.grant_created_at, found


def grant_audience(params: Params, client: ClientInfo, resources: list[str] | tuple[str, ...]) -> str | list[str]:
    """Pick the audience for a user grant: resources bound at authorization, else the client's (RFC 8707)."""
    return choose_audience(
        params,
        allowed=resources or client.resources,
        default=one_or_list(list(resources)) if resources else default_audience(client),
    )


async def entitled_scopes(treq: TokenRequest, *, user_id: uuid.UUID, requested: list[str]) -> tuple[str, ...]:
    """Return the scopes of ``requested`` the person may be granted at this client now (one statement).

    design.md: requested ∩ allowed for the client ∩ entitled by the person's groups
    (:func:`idhub.directory.entitlements.granted_scopes`).
    """
    client = treq.client
    return await person_scopes(
        treq.uow.session, client_pk=client.id, allowed=client.scopes, user_id=user_id, requested=requested
    )
