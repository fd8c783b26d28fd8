"""Entitlements: which groups get which scopes at which client, and the one scope rule every token obeys.

design.md: granted scopes = requested ∩ allowed for the client ∩ entitled by the user's groups.

An access policy gives one subject a set of scopes at one client: a group (its members, through nested
groups too) or the client itself (its ``client_credentials`` tokens, the "machine policy"). A client
with no policy at all is *ungoverned* and behaves as it always did: everyone gets what the client may
ask for. From its first policy on it is *governed*:

* a person gets requested ∩ client-allowed ∩ the union of the scopes of the policies of every group they
  belong to, directly or not, except ``openid``, which is never governed (signing in needs it);
* the client's own tokens get requested ∩ client-allowed ∩ its machine policy (nothing without one).

Every place that grants scopes (the code issued at ``/authorize``, the consent page, the token endpoint's
authorization_code, refresh_token and client_credentials grants) calls :func:`granted_scopes` with an
:class:`Entitlement` read by :func:`person_entitlement` (one statement on Core tables) or
:func:`machine_entitlement` (from the cached client). When an entitlement goes away (a policy removed or
narrowed, a person leaving a group, a group deleted) :func:`revoke_unentitled` revokes, in the same unit
of work, the grants whose live refresh tokens carry a scope their person may no longer get.
"""

from __future__ import annotations

import builtins
import re
import uuid
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

from sqlalchemy import CTE, Select, and_, bindparam, case, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from idhub.directory.rules import live_clause
from idhub.errors import Conflict, Invalid, NotFound
from idhub.events import PolicyChanged, PolicyCreated, PolicyDeleted
from idhub.storage.base import utcnow
from idhub.storage.models import AccessPolicy, Client, Group, GroupMember, User
from idhub.storage.tables import ACCESS_POLICIES, GRANTS, GROUP_MEMBERS, GROUPS, REFRESH_TOKENS
from idhub.storage.uow import UnitOfWork
from idhub.tokens.refresh import revoke_grants

# Never governed: without ``openid`` nobody could sign in to a governed client at all.
UNGOVERNED_SCOPES = frozenset({"openid"})
# Scopes that only make sense with a person (OIDC Core §3.1.2.1, §11): never in a machine token.
PERSON_ONLY_SCOPES = frozenset({"openid", "offline_access"})
# RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
SCOPE_TOKEN_RE = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")
MAX_SCOPE = 2000  # the length of the scope columns
PEOPLE_CHUNK = 500  # people per statement when revoking after a group change
REVOKED_REASON = "entitlement removed"

_POLICY = ACCESS_POLICIES.c
_MEMBER = GROUP_MEMBERS.c


@dataclass(frozen=True, slots=True)
class Entitlement:
    """What one subject may get at one client: anything the client allows (not ``governed``), or ``scopes``."""

    governed: bool
    scopes: frozenset[str] = frozenset()

    def allows(self, scope: str) -> bool:
        """Tell whether ``scope`` may be granted (``openid`` always may)."""
        return not self.governed or scope in self.scopes or scope in UNGOVERNED_SCOPES


UNGOVERNED = Entitlement(governed=False)


def granted_scopes(requested: Iterable[str], *, allowed: Collection[str], entitlement: Entitlement) -> tuple[str, ...]:
    """Return requested ∩ allowed ∩ entitled in the requested order, each once (design.md; RFC 6749 §3.3).

    The one scope rule: every surface that grants scopes ends here.
    """
    return tuple(s for s in dict.fromkeys(requested) if s in allowed and entitlement.allows(s))


def machine_entitlement(*, governed: bool, machine_scopes: Iterable[str]) -> Entitlement:
    """Return what a client's own tokens may carry: its machine policy once it is governed."""
    return Entitlement(governed=True, scopes=frozenset(machine_scopes)) if governed else UNGOVERNED


# --- the hot path: one statement per token request -----------------------------------------------------


def _groups_of_person() -> CTE:
    """Return the groups the person ``p_user_id`` belongs to, directly or through nested groups (RFC 7643 §4.1.2).

    ``UNION`` (not ``UNION ALL``) ends the recursion even on a cycle the directory would refuse anyway.
    """
    base = select(_MEMBER.group_id.label("group_id")).where(_MEMBER.user_id == bindparam("p_user_id"))
    groups = base.cte("person_groups", recursive=True)
    parent = GROUP_MEMBERS.alias("parent")
    return groups.union(select(parent.c.group_id).join(groups, parent.c.member_group_id == groups.c.group_id))


_PERSON_GROUPS = _groups_of_person()
# Every policy of the client, each saying whether it applies to the person: no row means ungoverned. Built
# once on Core tables; the client's policies are found by the unique index that leads with ``client_id``.
_PERSON_POLICIES = select(
    _POLICY.scope, _POLICY.group_id.in_(select(_PERSON_GROUPS.c.group_id)).label("applies")
).where(_POLICY.client_id == bindparam("p_client_id"))
# A client's policy summary for its cached snapshot: how many, and the machine policy's scopes.
_MACHINE_POLICY = select(func.count(_POLICY.id), func.max(case((_POLICY.group_id.is_(None), _POLICY.scope)))).where(
    _POLICY.client_id == bindparam("p_client_id")
)


async def person_entitlement(session: AsyncSession, *, client_pk: uuid.UUID, user_id: uuid.UUID) -> Entitlement:
    """Return what a person may get at a client now: one indexed statement (the database is the truth)."""
    rows = (await session.execute(_PERSON_POLICIES, {"p_client_id": client_pk, "p_user_id": user_id})).all()
    if not rows:
        return UNGOVERNED
    scopes: set[str] = set()
    for scope, applies in rows:
        if applies:
            scopes.update(scope.split())
    return Entitlement(governed=True, scopes=frozenset(scopes))


async def person_scopes(
    session: AsyncSession,
    *,
    client_pk: uuid.UUID,
    allowed: Collection[str],
    user_id: uuid.UUID,
    requested: Iterable[str],
) -> tuple[str, ...]:
    """Return the scopes a person may be granted at a client out of ``requested`` (:func:`granted_scopes`)."""
    entitlement = await person_entitlement(session, client_pk=client_pk, user_id=user_id)
    return granted_scopes(requested, allowed=allowed, entitlement=entitlement)


async def load_machine_policy(session: AsyncSession, client_pk: uuid.UUID) -> tuple[bool, frozenset[str]]:
    """Return whether a client is governed and its machine policy's scopes (for its cached snapshot)."""
    count, scope = (await session.execute(_MACHINE_POLICY, {"p_client_id": client_pk})).one()
    return bool(count), frozenset((scope or "").split())


# --- cutting off what is no longer entitled -----------------------------------------------------------

# Live refresh tokens of the given people at governed clients (found through the grant's subject index).
_CANDIDATES_OF_PEOPLE = (
    select(REFRESH_TOKENS.c.grant_id, GRANTS.c.user_id, GRANTS.c.client_id, REFRESH_TOKENS.c.scope)
    .select_from(GRANTS.join(REFRESH_TOKENS, REFRESH_TOKENS.c.grant_id == GRANTS.c.id))
    .where(
        GRANTS.c.tenant_id == bindparam("p_tenant_id"),
        GRANTS.c.user_id.in_(bindparam("p_user_ids", expanding=True)),
        GRANTS.c.revoked_at.is_(None),
        GRANTS.c.client_id.in_(select(_POLICY.client_id).where(_POLICY.tenant_id == bindparam("p_tenant_id"))),
        REFRESH_TOKENS.c.revoked_at.is_(None),
        REFRESH_TOKENS.c.rotated_at.is_(None),
        REFRESH_TOKENS.c.expires_at > bindparam("p_now"),
    )
)
# Live refresh tokens of people at one client, when it is governed.
_CANDIDATES_AT_CLIENT = (
    select(REFRESH_TOKENS.c.grant_id, GRANTS.c.user_id, GRANTS.c.client_id, REFRESH_TOKENS.c.scope)
    .select_from(GRANTS.join(REFRESH_TOKENS, REFRESH_TOKENS.c.grant_id == GRANTS.c.id))
    .where(
        GRANTS.c.tenant_id == bindparam("p_tenant_id"),
        GRANTS.c.client_id == bindparam("p_client_id"),
        GRANTS.c.user_id.is_not(None),
        GRANTS.c.revoked_at.is_(None),
        GRANTS.c.client_id.in_(select(_POLICY.client_id).where(_POLICY.tenant_id == bindparam("p_tenant_id"))),
        REFRESH_TOKENS.c.revoked_at.is_(None),
        REFRESH_TOKENS.c.rotated_at.is_(None),
        REFRESH_TOKENS.c.expires_at > bindparam("p_now"),
    )
)


def _groups_of_people() -> CTE:
    """Return (person, group) for the people ``p_user_ids`` and every group they belong to, however deep."""
    base = select(_MEMBER.user_id.label("user_id"), _MEMBER.group_id.label("group_id")).where(
        _MEMBER.user_id.in_(bindparam("p_user_ids", expanding=True))
    )
    pairs = base.cte("people_groups", recursive=True)
    parent = GROUP_MEMBERS.alias("parent")
    return pairs.union(
        select(pairs.c.user_id, parent.c.group_id).join(parent, parent.c.member_group_id == pairs.c.group_id)
    )


_PEOPLE_GROUPS = _groups_of_people()
# (person, client, scopes) of every group policy that applies to one of the people at one of the clients.
_PEOPLE_POLICIES = (
    select(_PEOPLE_GROUPS.c.user_id, _POLICY.client_id, _POLICY.scope)
    .distinct()
    .join(ACCESS_POLICIES, _POLICY.group_id == _PEOPLE_GROUPS.c.group_id)
    .where(_POLICY.client_id.in_(bindparam("p_client_ids", expanding=True)))
)


def _people_under() -> CTE:
    """Return the groups ``p_group_ids`` and every group nested in them, however deep."""
    base = select(GROUPS.c.id.label("group_id")).where(GROUPS.c.id.in_(bindparam("p_group_ids", expanding=True)))
    groups = base.cte("nested_groups", recursive=True)
    child = GROUP_MEMBERS.alias("child")
    return groups.union(
        select(child.c.member_group_id)
        .join(groups, child.c.group_id == groups.c.group_id)
        .where(child.c.member_group_id.is_not(None))
    )


_NESTED = _people_under()
_PEOPLE_UNDER = (
    select(_MEMBER.user_id)
    .distinct()
    .where(_MEMBER.group_id.in_(select(_NESTED.c.group_id)), _MEMBER.user_id.is_not(None))
)


async def people_under(session: AsyncSession, group_ids: Collection[uuid.UUID]) -> set[uuid.UUID]:
    """Return the people in the groups, directly or through groups nested in them."""
    if not group_ids:
        return set()
    rows = await session.scalars(_PEOPLE_UNDER, {"p_group_ids": list(group_ids)})
    return {user_id for user_id in rows if user_id is not None}


async def revoke_unentitled(
    uow: UnitOfWork,
    *,
    tenant_id: uuid.UUID,
    user_ids: Collection[uuid.UUID] | None = None,
    client_pk: uuid.UUID | None = None,
    reason: str = REVOKED_REASON,
) -> list[str]:
    """Revoke the grants whose live refresh tokens carry a scope their person may no longer get.

    Looks at the people ``user_ids`` (after a group change) or at everyone holding a refresh token of
    ``client_pk`` (after a policy change), only at governed clients. Bounded work: per chunk of people
    (or once for a client), one statement finds the live refresh tokens, one reads the policies that
    apply to their holders, and :func:`idhub.tokens.refresh.revoke_grants` revokes with a statement per
    thousand grants (their access tokens too, through ``grant`` revocation entries). Returns the
    revoked grants.
    """
    session = uow.session
    now = utcnow()
    batches: list[Sequence[Any]] = []
    if client_pk is not None:
        batches.append(
            (
                await session.execute(
                    _CANDIDATES_AT_CLIENT, {"p_tenant_id": tenant_id, "p_client_id": client_pk, "p_now": now}
                )
            ).all()
        )
    if user_ids:
        people = sorted(set(user_ids))
        for start in range(0, len(people), PEOPLE_CHUNK):
            parameters = {"p_tenant_id": tenant_id, "p_user_ids": people[start : start + PEOPLE_CHUNK], "p_now": now}
            batches.append((await session.execute(_CANDIDATES_OF_PEOPLE, parameters)).all())
    doomed: set[str] = set()
    for candidates in batches:
        if not candidates:
            continue
        holders = sorted({row.user_id for row in candidates})
        clients = sorted({row.client_id for row in candidates})
        entitled: dict[tuple[uuid.UUID, uuid.UUID], set[str]] = {}
        for start in range(0, len(holders), PEOPLE_CHUNK):
            parameters = {"p_user_ids": holders[start : start + PEOPLE_CHUNK], "p_client_ids": clients}
            for user_id, client_id, scope in await session.execute(_PEOPLE_POLICIES, parameters):
                entitled.setdefault((user_id, client_id), set()).update(scope.split())
        for row in candidates:
            carried = set(row.scope.split()) - UNGOVERNED_SCOPES
            if not carried <= entitled.get((row.user_id, row.client_id), set()):
                doomed.add(str(row.grant_id))
    if not doomed:
        return []
    return await revoke_grants(uow, tenant_id, doomed, reason=reason)


# --- the service: policies and the entitlement report ----------------------------------------------------


def checked_scopes(raw: str | Iterable[str]) -> tuple[str, ...]:
    """Return the scope tokens of ``raw`` (a space-separated string or tokens), each once; RFC 6749 §3.3 syntax."""
    tokens = raw.split(" ") if isinstance(raw, str) else list(raw)
    if isinstance(raw, str) and raw.strip() == "":
        tokens = []
    scopes = tuple(dict.fromkeys(token for token in tokens))
    if not scopes:
        raise Invalid("a policy needs at least one scope")
    for scope in scopes:
        if not SCOPE_TOKEN_RE.fullmatch(scope):
            raise Invalid(f"scope {scope[:64]!r} is not a valid scope token (RFC 6749 §3.3)")
    if len(" ".join(scopes)) > MAX_SCOPE:
        raise Invalid(f"scope must be at most {MAX_SCOPE} characters")
    return scopes


@dataclass(frozen=True, slots=True)
class PolicyView:
    """One access policy as the surfaces show it."""

    id: uuid.UUID
    client_id: str
    client_name: str
    group_id: uuid.UUID | None
    group_name: str | None
    scopes: tuple[str, ...]
    created_at: datetime
    updated_at: datetime

    @property
    def machine(self) -> bool:
        """Tell whether this is the client's own (client_credentials) policy."""
        return self.group_id is None

    def to_dict(self) -> dict[str, Any]:
        """Return the policy as JSON-ready values."""
        return {
            "id": str(self.id),
            "client_id": self.client_id,
            "client_name": self.client_name,
            "subject": "machine" if self.machine else "group",
            "group_id": None if self.group_id is None else str(self.group_id),
            "group_name": self.group_name,
            "scope": " ".join(self.scopes),
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
        }


@dataclass(frozen=True, slots=True)
class GroupRef:
    """A group named in the report."""

    id: uuid.UUID
    name: str

    def to_dict(self) -> dict[str, str]:
        """Return the group as JSON-ready values."""
        return {"id": str(self.id), "name": self.name}


@dataclass(frozen=True, slots=True)
class ScopeGrant:
    """One scope and the groups through which it is obtained."""

    scope: str
    groups: tuple[GroupRef, ...]

    def to_dict(self) -> dict[str, Any]:
        """Return the scope and its groups as JSON-ready values."""
        return {"scope": self.scope, "groups": [g.to_dict() for g in self.groups]}


@dataclass(frozen=True, slots=True)
class PersonEntitlements:
    """What one live person can obtain at a governed client, scope by scope, and through which groups."""

    user_id: uuid.UUID
    username: str
    scopes: tuple[ScopeGrant, ...]

    def to_dict(self) -> dict[str, Any]:
        """Return the person's entitlements as JSON-ready values."""
        return {"user_id": str(self.user_id), "username": self.username, "scopes": [s.to_dict() for s in self.scopes]}


@dataclass(frozen=True, slots=True)
class ClientEntitlements:
    """Who can obtain which scopes at one client.

    ``open_scopes`` every live person may obtain (all the client allows when it is ungoverned, else
    ``openid``); ``by_group`` the governed scopes and the groups that grant them; ``machine_scopes`` what
    the client's own tokens may carry (``None``: it does not use client_credentials); ``people`` (when
    asked for, governed clients only) person by person.
    """

    client_id: str
    name: str
    enabled: bool
    governed: bool
    open_scopes: tuple[str, ...]
    by_group: tuple[ScopeGrant, ...]
    machine_scopes: tuple[str, ...] | None
    people: tuple[PersonEntitlements, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return the client's entitlements as JSON-ready values."""
        out: dict[str, Any] = {
            "client_id": self.client_id,
            "name": self.name,
            "enabled": self.enabled,
            "governed": self.governed,
            "open_to_all_users": list(self.open_scopes),
            "scopes": [s.to_dict() for s in self.by_group],
            "machine_scopes": None if self.machine_scopes is None else list(self.machine_scopes),
        }
        if self.people is not None:
            out["people"] = [p.to_dict() for p in self.people]
        return out


@dataclass(frozen=True, slots=True)
class EntitlementReport:
    """Who can obtain which scopes at which client of a tenant, and through which group."""

    tenant_id: uuid.UUID
    clients: tuple[ClientEntitlements, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        """Return the report as JSON-ready values."""
        return {"tenant_id": str(self.tenant_id), "clients": [c.to_dict() for c in self.clients]}


def _policy_rows() -> Select[Any]:
    return cast(
        "Select[Any]",
        select(AccessPolicy, Client.client_id, Client.name, Group.display_name)
        .join(Client, Client.id == AccessPolicy.client_id)
        .outerjoin(Group, Group.id == AccessPolicy.group_id),
    )


def _view(policy: AccessPolicy, client_id: str, client_name: str, group_name: str | None) -> PolicyView:
    return PolicyView(
        id=policy.id,
        client_id=client_id,
        client_name=client_name,
        group_id=policy.group_id,
        group_name=group_name,
        scopes=tuple(policy.scope.split()),
        created_at=policy.created_at,
        updated_at=policy.updated_at,
    )


@dataclass(slots=True)
class Entitlements:
    """Commands on access policies and the entitlement report, for one unit of work (audited through it)."""

    uow: UnitOfWork

    # --- reads ---------------------------------------------------------------------------------
    async def get(self, tenant_id: uuid.UUID, policy_id: uuid.UUID) -> PolicyView:
        """Return one policy of the tenant, or raise :class:`NotFound`."""
        row = (
            await self.uow.session.execute(
                _policy_rows().where(AccessPolicy.tenant_id == tenant_id, AccessPolicy.id == policy_id)
            )
        ).first()
        if row is None:
            raise NotFound("policy not found")
        return _view(row[0], row[1], row[2], row[3])

    async def list(
        self, tenant_id: uuid.UUID, *, client_id: str | None = None, group_id: uuid.UUID | None = None
    ) -> builtins.list[PolicyView]:
        """Return the tenant's policies, optionally of one client (its ``client_id``) or one group."""
        query = _policy_rows().where(AccessPolicy.tenant_id == tenant_id)
        if client_id is not None:
            query = query.where(Client.client_id == client_id)
        if group_id is not None:
            query = query.where(AccessPolicy.group_id == group_id)
        query = query.order_by(Client.client_id, AccessPolicy.group_id.is_not(None), Group.display_name_key)
        return [_view(row[0], row[1], row[2], row[3]) for row in await self.uow.session.execute(query)]

    # --- writes --------------------------------------------------------------------------------
    async def create(
        self,
        tenant_id: uuid.UUID,
        *,
        client_id: str,
        group_id: uuid.UUID | None,
        scopes: str | Iterable[str],
    ) -> PolicyView:
        """Give a group (or, with ``group_id`` ``None``, the client itself) scopes at a client.

        The client is governed from this commit on; refresh tokens of people it no longer entitles are
        revoked in the same unit of work. :class:`Conflict` when the subject already has a policy there.
        """
        client = await self._client(tenant_id, client_id)
        group = None
        if group_id is not None:
            group = await self.uow.session.scalar(
                select(Group).where(Group.tenant_id == tenant_id, Group.id == group_id)
            )
            if group is None:
                raise NotFound("group not found")
        wanted = self._checked_for(client, scopes, machine=group is None)
        was_governed = (await load_machine_policy(self.uow.session, client.id))[0]
        policy = AccessPolicy(tenant_id=tenant_id, client_id=client.id, group_id=group_id, scope=" ".join(wanted))
        session = self.uow.session
        session.add(policy)
        try:
            async with session.begin_nested():
                await session.flush()
        except IntegrityError as exc:
            subject = "its machine policy" if group is None else "a policy for this group"
            raise Conflict(f"the client already has {subject}") from exc
        self.uow.raise_event(
            PolicyCreated(
                tenant_id=tenant_id, client_id=client.client_id, policy_id=policy.id, group_id=group_id, scopes=wanted
            )
        )
        if not was_governed:
            # A first policy makes the client governed: everyone outside its groups loses what they had.
            await revoke_unentitled(self.uow, tenant_id=tenant_id, client_pk=client.id)
        return _view(policy, client.client_id, client.name, None if group is None else group.display_name)

    async def update(self, tenant_id: uuid.UUID, policy_id: uuid.UUID, *, scopes: str | Iterable[str]) -> PolicyView:
        """Replace a policy's scopes; refresh tokens carrying a scope it no longer grants are revoked."""
        policy, client = await self._policy(tenant_id, policy_id)
        wanted = self._checked_for(client, scopes, machine=policy.group_id is None)
        narrowed = bool(set(policy.scope.split()) - set(wanted))
        policy.scope = " ".join(wanted)
        policy.updated_at = utcnow()
        await self.uow.session.flush()
        self.uow.raise_event(
            PolicyChanged(
                tenant_id=tenant_id,
                client_id=client.client_id,
                policy_id=policy.id,
                group_id=policy.group_id,
                scopes=wanted,
            )
        )
        if narrowed and policy.group_id is not None:
            await revoke_unentitled(self.uow, tenant_id=tenant_id, client_pk=client.id)
        return await self.get(tenant_id, policy_id)

    async def delete(self, tenant_id: uuid.UUID, policy_id: uuid.UUID) -> None:
        """Delete a policy; refresh tokens carrying a scope nobody's policy grants any more are revoked.

        Deleting a client's last policy makes it ungoverned again (open to everyone), so nothing is revoked then.
        """
        policy, client = await self._policy(tenant_id, policy_id)
        await self.uow.session.delete(policy)
        await self.uow.session.flush()
        self.uow.raise_event(
            PolicyDeleted(
                tenant_id=tenant_id,
                client_id=client.client_id,
                policy_id=policy.id,
                group_id=policy.group_id,
                scopes=tuple(policy.scope.split()),
            )
        )
        if policy.group_id is not None:
            await revoke_unentitled(self.uow, tenant_id=tenant_id, client_pk=client.id)

    # --- the report ----------------------------------------------------------------------------
    async def report(
        self, tenant_id: uuid.UUID, *, client_id: str | None = None, people: bool = False
    ) -> EntitlementReport:
        """Return who can obtain which scopes at which client, and through which group.

        Ungoverned clients are open to every live person (``open_scopes``); ``people`` lists, for governed
        clients, every live person with the scopes they can obtain and the groups they obtain them through.
        """
        session = self.uow.session
        query = select(Client).where(Client.tenant_id == tenant_id).order_by(Client.client_id)
        if client_id is not None:
            query = query.where(Client.client_id == client_id)
        clients = list(await session.scalars(query))
        if client_id is not None and not clients:
            raise NotFound("client not found")
        rows = (
            await session.execute(
                select(AccessPolicy.client_id, AccessPolicy.group_id, AccessPolicy.scope, Group.display_name)
                .outerjoin(Group, Group.id == AccessPolicy.group_id)
                .where(AccessPolicy.tenant_id == tenant_id)
                .order_by(Group.display_name_key)
            )
        ).all()
        by_client: dict[uuid.UUID, builtins.list[tuple[uuid.UUID | None, str, str | None]]] = {}
        for client_pk, group_id, scope, group_name in rows:
            by_client.setdefault(client_pk, []).append((group_id, scope, group_name))
        members: dict[uuid.UUID, builtins.list[tuple[uuid.UUID, str]]] = {}
        if people:
            policy_groups = {gid for _c, gid, _s, _n in rows if gid is not None}
            members = await self._live_members(policy_groups)
        return EntitlementReport(
            tenant_id=tenant_id,
            clients=tuple(
                self._client_report(c, by_client.get(c.id, []), members if people else None) for c in clients
            ),
        )

    def _client_report(
        self,
        client: Client,
        policies: builtins.list[tuple[uuid.UUID | None, str, str | None]],
        members: dict[uuid.UUID, builtins.list[tuple[uuid.UUID, str]]] | None,
    ) -> ClientEntitlements:
        allowed = list(dict.fromkeys((client.scope or "").split()))
        machine_capable = "client_credentials" in (client.grant_types or [])
        if not policies:
            return ClientEntitlements(
                client_id=client.client_id,
                name=client.name,
                enabled=client.enabled,
                governed=False,
                open_scopes=tuple(allowed),
                by_group=(),
                machine_scopes=tuple(s for s in allowed if s not in PERSON_ONLY_SCOPES) if machine_capable else None,
                people=None,
            )
        groups_by_scope: dict[str, builtins.list[GroupRef]] = {}
        machine: set[str] = set()
        for group_id, scope, group_name in policies:
            if group_id is None:
                machine.update(scope.split())
                continue
            for token in scope.split():
                groups_by_scope.setdefault(token, []).append(GroupRef(group_id, group_name or ""))
        governed = [s for s in allowed if s not in UNGOVERNED_SCOPES]
        by_group = tuple(ScopeGrant(s, tuple(groups_by_scope[s])) for s in governed if s in groups_by_scope)
        listed: tuple[PersonEntitlements, ...] | None = None
        if members is not None:
            person_scopes: dict[uuid.UUID, dict[str, builtins.list[GroupRef]]] = {}
            usernames: dict[uuid.UUID, str] = {}
            for grant in by_group:
                for group in grant.groups:
                    for user_id, username in members.get(group.id, []):
                        usernames[user_id] = username
                        person_scopes.setdefault(user_id, {}).setdefault(grant.scope, []).append(group)
            listed = tuple(
                PersonEntitlements(
                    user_id,
                    usernames[user_id],
                    tuple(
                        ScopeGrant(s, tuple(person_scopes[user_id][s])) for s in governed if s in person_scopes[user_id]
                    ),
                )
                for user_id in sorted(person_scopes, key=lambda uid: (usernames[uid], uid))
            )
        return ClientEntitlements(
            client_id=client.client_id,
            name=client.name,
            enabled=client.enabled,
            governed=True,
            open_scopes=tuple(s for s in allowed if s in UNGOVERNED_SCOPES),
            by_group=by_group,
            machine_scopes=tuple(s for s in allowed if s in machine) if machine_capable else None,
            people=listed,
        )

    async def _live_members(
        self, group_ids: Collection[uuid.UUID]
    ) -> dict[uuid.UUID, builtins.list[tuple[uuid.UUID, str]]]:
        """Return, for each group, its live people: direct members and those of groups nested in it."""
        if not group_ids:
            return {}
        roots = select(GROUPS.c.id.label("root"), GROUPS.c.id.label("group_id")).where(GROUPS.c.id.in_(list(group_ids)))
        tree = roots.cte("report_tree", recursive=True)
        child = GROUP_MEMBERS.alias("child")
        tree = tree.union(
            select(tree.c.root, child.c.member_group_id)
            .join(child, child.c.group_id == tree.c.group_id)
            .where(child.c.member_group_id.is_not(None))
        )
        rows = await self.uow.session.execute(
            select(tree.c.root, User.id, User.username)
            .distinct()
            .join(GroupMember, GroupMember.group_id == tree.c.group_id)
            .join(User, and_(User.id == GroupMember.user_id, live_clause()))
            .order_by(User.username)
        )
        out: dict[uuid.UUID, builtins.list[tuple[uuid.UUID, str]]] = {}
        for root, user_id, username in rows:
            out.setdefault(root, []).append((user_id, username))
        return out

    # --- helpers -------------------------------------------------------------------------------
    async def _client(self, tenant_id: uuid.UUID, client_id: str) -> Client:
        client = await self.uow.session.scalar(
            select(Client).where(Client.tenant_id == tenant_id, Client.client_id == client_id)
        )
        if client is None:
            raise NotFound("client not found")
        return client

    async def _policy(self, tenant_id: uuid.UUID, policy_id: uuid.UUID) -> tuple[AccessPolicy, Client]:
        row = (
            await self.uow.session.execute(
                select(AccessPolicy, Client)
                .join(Client, Client.id == AccessPolicy.client_id)
                .where(AccessPolicy.tenant_id == tenant_id, AccessPolicy.id == policy_id)
            )
        ).first()
        if row is None:
            raise NotFound("policy not found")
        return row[0], row[1]

    @staticmethod
    def _checked_for(client: Client, scopes: str | Iterable[str], *, machine: bool) -> tuple[str, ...]:
        """Check scopes against the syntax and the client's registration (``Invalid`` otherwise)."""
        wanted = checked_scopes(scopes)
        allowed = set((client.scope or "").split())
        if outside := [s for s in wanted if s not in allowed]:
            raise Invalid(f"scope {outside[0]!r} is not among the client's allowed scopes")
        if machine:
            if client.token_endpoint_auth_method == "none" or "client_credentials" not in (client.grant_types or []):
                raise Invalid("a machine policy needs a confidential client that uses client_credentials")
            if person_only := [s for s in wanted if s in PERSON_ONLY_SCOPES]:
                raise Invalid(f"scope {person_only[0]!r} is never in a machine token")
        return wanted


__all__ = [
    "PERSON_ONLY_SCOPES",
    "UNGOVERNED",
    "UNGOVERNED_SCOPES",
    "ClientEntitlements",
    "Entitlement",
    "EntitlementReport",
    "Entitlements",
    "GroupRef",
    "PersonEntitlements",
    "PolicyView",
    "ScopeGrant",
    "checked_scopes",
    "granted_scopes",
    "load_machine_policy",
    "machine_entitlement",
    "people_under",
    "person_entitlement",
    "person_scopes",
    "revoke_unentitled",
]
