"""Write what an upstream's mapping makes of a person into the directory, at sign-in or as a dry run.

Rules (#14), chosen so that an upstream can never take more than the operator gave it:

* Attributes: a user made just in time gets every mapped attribute. When the upstream has a configured
  mapping with ``sync`` on, every later sign-in writes the mapped attributes to the linked user, except
  ``userName`` (never renamed from upstream input) and ``email``, which is written only when the
  upstream is authoritative for the address (verified, in one of its ``email_domains``): linking by
  email elsewhere must not be steerable by an upstream that does not own the address. An upstream
  without a configured mapping keeps the old behaviour: defaults at just-in-time creation only.
* Groups: only groups that exist in the tenant are joined (an upstream never creates groups); names are
  matched case-insensitively. A membership made this way records its upstream (``group_member.source``
  ``idp:<id>``) and is removed at a later sign-in that no longer asserts it. Memberships made by admins,
  the CLI, SCIM or another upstream are never removed, and a group the user is already in is left as is.

Every write goes through :class:`~idhub.directory.Directory` (``user.update``, ``membership.change``
audit events and domain events) in the sign-in's own unit of work.
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import select

from idhub.broker.connector import Identity
from idhub.broker.errors import UpstreamRefused
from idhub.broker.linking import Linked, ProofNeeded, authoritative_email, link_identity
from idhub.broker.mapping import (
    MAX_DOCUMENT,
    TARGETS,
    MappedProfile,
    MappingRules,
    apply,
    mapping_of,
    sample_identity,
)
from idhub.broker.providers import ProviderInfo
from idhub.directory import Directory
from idhub.directory.profile import PROFILE_COLUMNS, ValueRecord
from idhub.directory.rules import check_email
from idhub.errors import Invalid, PreconditionFailed
from idhub.storage.models import Group, User
from idhub.storage.uow import UnitOfWork

log = logging.getLogger(__name__)


def source_of(provider: ProviderInfo) -> str:
    """Return the membership source of an upstream's mapping (``group_member.source``)."""
    return f"idp:{provider.id}"


@dataclass(frozen=True, slots=True)
class Synced:
    """What a sign-in changed: attributes written, groups joined and left, named groups that do not exist."""

    attributes: tuple[str, ...] = ()
    joined: tuple[str, ...] = ()
    left: tuple[str, ...] = ()
    unknown_groups: tuple[str, ...] = ()

    def describe(self) -> dict[str, list[str]]:
        """Return JSON-ready values."""
        return {
            "attributes": list(self.attributes),
            "join": list(self.joined),
            "leave": list(self.left),
            "unknown_groups": list(self.unknown_groups),
        }


async def sync_user(
    uow: UnitOfWork, *, directory: Directory, provider: ProviderInfo, identity: Identity, linked: Linked
) -> Synced:
    """Apply ``provider``'s mapping to the user ``identity`` just signed in as (by the rules above)."""
    mapping = mapping_of(provider.config)
    jit = linked.how == "jit"
    if not jit and not (mapping.configured and mapping.sync):
        return Synced()
    mapped = apply(mapping, identity)
    user = await directory.users.get(provider.tenant_id, linked.user_id)
    written: tuple[str, ...] = ()
    if not jit:  # a user made just in time was made from the mapped attributes already
        written = await _sync_attributes(directory, provider, identity, user, mapped)
    joined, left, unknown = await _sync_groups(uow, directory, provider, user.id, mapped)
    return Synced(written, joined, left, unknown)


async def _sync_attributes(
    directory: Directory, provider: ProviderInfo, identity: Identity, user: User, mapped: MappedProfile
) -> tuple[str, ...]:
    current = await directory.users.profile_of(user)
    changes: dict[str, Any] = {}
    for target, value in mapped.attributes.items():
        column = TARGETS[target][0]
        if target in ("userName", "email") or column not in PROFILE_COLUMNS:
            continue
        if getattr(current, column) != value:
            changes[column] = value
    values = current.values
    email = _authoritative(provider, identity, mapped)
    if email is not None and (current.email() or "").lower() != email.lower():
        values = _with_email(current.values, current.email(), email)
        changes["values"] = values
    if not changes:
        return ()
    try:
        await directory.users.update(user, replace(current, **changes))
    except (Invalid, PreconditionFailed) as exc:
        # Upstream data that the directory refuses, or a concurrent write: the sign-in goes on unchanged.
        log.warning("mapped attributes of upstream %s not written: %s", provider.alias, exc.detail)
        return ()
    names = {column: target for target, (column, _) in TARGETS.items()}
    return tuple(sorted(names.get(key, "email") for key in changes))


def _authoritative(provider: ProviderInfo, identity: Identity, mapped: MappedProfile) -> str | None:
    """Return the mapped email when the upstream may assert it for an existing user, else ``None``."""
    email = mapped.attributes.get("email")
    owned = authoritative_email(provider, identity)
    if email is None or owned is None or email.lower() != owned.lower():
        return None
    try:
        check_email(email)
    except Invalid:
        return None
    return email


def _with_email(values: tuple[ValueRecord, ...], old: str | None, new: str) -> tuple[ValueRecord, ...]:
    """Return ``values`` with the user's address ``old`` replaced by ``new`` (added as primary when none)."""
    out = list(values)
    for index, record in enumerate(out):
        if record.attribute == "emails" and record.value == old and old is not None:
            out[index] = replace(record, value=new)
            return tuple(out)
    return (ValueRecord(attribute="emails", value=new, type="work", primary=True), *out)


async def _sync_groups(
    uow: UnitOfWork, directory: Directory, provider: ProviderInfo, user_id: uuid.UUID, mapped: MappedProfile
) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    keys = {name.casefold(): name for name in mapped.groups}
    found: dict[uuid.UUID, str] = {}
    if keys:
        rows = (
            await uow.session.execute(
                select(Group.id, Group.display_name, Group.display_name_key).where(
                    Group.tenant_id == provider.tenant_id, Group.display_name_key.in_(list(keys))
                )
            )
        ).all()
        found = {gid: name for gid, name, _key in rows}
        known = {key for _gid, _name, key in rows}
        unknown = tuple(name for key, name in keys.items() if key not in known)
    else:
        unknown = ()
    joined, left = await directory.groups.sync_user_groups(
        provider.tenant_id, user_id, source=source_of(provider), wanted=set(found)
    )
    names = dict(found)
    if left:
        left_rows = await uow.session.execute(select(Group.id, Group.display_name).where(Group.id.in_(left)))
        names.update({gid: name for gid, name in left_rows})
    return tuple(names[g] for g in joined), tuple(names.get(g, str(g)) for g in left), unknown


@dataclass(frozen=True, slots=True)
class Preview:
    """What a sign-in with a sample assertion would do, found by doing it and rolling it back."""

    mapping: MappingRules
    mapped: MappedProfile
    link: str  # existing | external_id | email | jit | proof_required | refused
    user_id: uuid.UUID | None = None
    user_name: str | None = None
    refused: str | None = None
    changes: Synced = Synced()

    def describe(self) -> dict[str, Any]:
        """Return JSON-ready values (what ``idhub idp preview`` prints)."""
        return {
            **self.mapped.describe(),
            "link": {
                "rule": self.link,
                "user_id": str(self.user_id) if self.user_id else None,
                "userName": self.user_name,
                "refused": self.refused,
            },
            "changes": self.changes.describe(),
            "configured": self.mapping.configured,
            "sync": self.mapping.configured and self.mapping.sync,
        }


async def preview_sign_in(
    uow: UnitOfWork, *, directory: Directory, provider: ProviderInfo, identity: Identity
) -> Preview:
    """Return what a sign-in of ``identity`` through ``provider`` would do, changing nothing.

    Linking and the sync run for real inside a savepoint that is always rolled back, and the events they
    raised are dropped with it, so the preview cannot drift from what a sign-in does.
    """
    mapping = mapping_of(provider.config)
    mapped = apply(mapping, identity)
    events = list(uow.events)
    savepoint = await uow.session.begin_nested()
    try:
        linked = await link_identity(uow, directory=directory, provider=provider, identity=identity)
        changes = await sync_user(uow, directory=directory, provider=provider, identity=identity, linked=linked)
        user = await directory.users.get(provider.tenant_id, linked.user_id)
        return Preview(mapping, mapped, linked.how, user.id, user.user_name or user.username, changes=changes)
    except ProofNeeded as needed:
        return Preview(mapping, mapped, "proof_required", refused=needed.reason)
    except UpstreamRefused as exc:
        return Preview(mapping, mapped, "refused", refused=exc.reason)
    finally:
        await savepoint.rollback()
        uow.events = events


async def preview_claims(
    uow: UnitOfWork, *, directory: Directory, provider: ProviderInfo, sample: str | bytes
) -> Preview:
    """Return what a sign-in with the sample assertion ``sample`` (JSON) would do; nothing is changed."""
    if len(sample) > MAX_DOCUMENT:
        raise Invalid(f"a claims file has at most {MAX_DOCUMENT} bytes")
    try:
        claims = json.loads(sample)
    except (ValueError, UnicodeDecodeError):
        raise Invalid("the claims file is not JSON") from None
    if not isinstance(claims, dict):
        raise Invalid("the claims file is a JSON object of claims")
    if provider.config.get("email_verified_claim") is False:
        claims.pop("email_verified", None)  # this upstream's email_verified is not believed (as at sign-in)
    issuer = provider.config.get("issuer") or provider.config.get("idp_entity_id") or provider.alias
    identity = sample_identity(issuer=str(issuer), protocol=provider.protocol, sample=claims)
    return await preview_sign_in(uow, directory=directory, provider=provider, identity=identity)
