"""Which directory user an upstream identity signs in as: links, never silent guesses.

An upstream account is known by (upstream, subject); once linked, that pair is the only thing that
counts, never an email address. A first sign-in is linked, in this order (#14):

1. by an immutable key HR provisioned: the upstream claim named ``link_claim`` (Entra ``oid``, an
   employee number) equals the directory user's SCIM ``externalId``;
2. by email, only when the upstream says it verified the address **and** the operator marked the
   upstream authoritative for that address's domain (unverified-email linking is the account-takeover
   path of nOAuth and its cousins);
3. else a new directory user is made just in time, unless the upstream is ``--no-jit`` or the
   upstream's email is already an account's address (that account may be the person's own, but this
   upstream may not vouch for it, and a second account with the same address would split the person);
4. else the person must prove they own an existing account by signing in with it
   (:class:`ProofNeeded`; :mod:`idhub.broker.proof` carries the identity to that page and back).

More than one candidate is never resolved by picking one. A user who is disabled, deleted or archived
cannot sign in through any link.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import bindparam, delete, func, literal_column, select, update
from sqlalchemy.exc import IntegrityError

from idhub.broker.connector import Identity
from idhub.broker.errors import UpstreamRefused
from idhub.broker.mapping import apply, mapping_of, profile_for
from idhub.broker.providers import ProviderInfo
from idhub.directory import Directory
from idhub.directory.rules import is_live
from idhub.errors import Conflict, Invalid, NotFound
from idhub.events import LinkCreated, LinkRemoved
from idhub.storage.base import utcnow
from idhub.storage.models import IdentityProvider, User, UserSession
from idhub.storage.models.broker import FederatedIdentity
from idhub.storage.tables import FEDERATED_IDENTITIES, USERS
from idhub.storage.uow import UnitOfWork

_UNSAFE = re.compile(r"[^A-Za-z0-9._@+-]")
_LINK = FEDERATED_IDENTITIES.c


def _of_user(column: Any) -> Any:
    """Return a scalar subquery reading ``column`` of the link's user (SQLite's RETURNING reads one table).

    The link's column is spelt out qualified: SQLAlchemy leaves columns in SQLite's RETURNING unqualified,
    and an unqualified ``user_id`` would be looked up in ``user`` first.
    """
    link_user: Any = literal_column(f"{FEDERATED_IDENTITIES.name}.{_LINK.user_id.name}")
    return select(column).where(USERS.c.id == link_user).scalar_subquery().label(column.key)


# UPDATE ... RETURNING: the link's last sign-in and latest upstream email, with what decides whether its
# user may sign in, in one round trip. Built once (idhub.storage.tables).
_TOUCH_LINK = (
    update(FEDERATED_IDENTITIES)
    .where(_LINK.provider_id == bindparam("p_provider_id"), _LINK.subject == bindparam("p_subject"))
    .values(last_login_at=bindparam("p_now"), email=func.coalesce(bindparam("p_email"), _LINK.email))
    .returning(_LINK.id, _LINK.user_id, _of_user(USERS.c.enabled), _of_user(USERS.c.deleted_at))
)


class ProofNeeded(Exception):  # a next step, not an error
    """No link may be made automatically: the person must sign in with the existing account first."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason  # email_in_use | no_account


@dataclass(frozen=True, slots=True)
class Linked:
    """The user an identity signs in as, through which link, and how the link was found or made."""

    user_id: uuid.UUID
    link_id: uuid.UUID
    how: str  # existing | external_id | email | jit


def authoritative_email(provider: ProviderInfo, identity: Identity) -> str | None:
    """Return the identity's email when it may link accounts: verified upstream, in a domain the upstream owns."""
    email = identity.email
    if not email or not identity.email_verified or "@" not in email:
        return None
    domain = email.rsplit("@", 1)[1].lower()
    return email if domain in provider.email_domains else None


async def link_identity(uow: UnitOfWork, *, directory: Directory, provider: ProviderInfo, identity: Identity) -> Linked:
    """Return the user ``identity`` signs in as, linking or creating one by the rules above."""
    if identity.claims.get("transient_name_id"):
        # A SAML transient NameID is new at every sign-in (Core §8.3.8): as a link key it would make a new
        # account each time. idhub asks for persistent NameIDs; an IdP that answers otherwise is refused.
        raise UpstreamRefused("transient_subject", "the IdP sent a transient NameID; configure a persistent one")
    # An existing link is the usual case: touched, and its user's state read, in one statement.
    linked = (
        await uow.session.execute(
            _TOUCH_LINK,
            {
                "p_provider_id": provider.id,
                "p_subject": identity.subject,
                "p_now": utcnow(),
                "p_email": identity.email[:320] if identity.email else None,
            },
        )
    ).first()
    if linked is not None:
        if not is_live(linked):  # the touch rolls back with the refusal
            raise UpstreamRefused("account_not_live", "the linked account is disabled or deleted")
        return Linked(linked.user_id, linked.id, "existing")

    claim = provider.config.get("link_claim")
    key = identity.claims.get(claim) if isinstance(claim, str) else None
    if isinstance(key, str) and key:
        found = await _candidates(uow, provider.tenant_id, User.external_id == key)
        if found:
            return await _link(uow, provider, identity, _only(found), "external_id")

    email = authoritative_email(provider, identity)
    if email is not None:
        found = await _candidates(uow, provider.tenant_id, func.lower(User.email) == email.lower())
        if found:
            return await _link(uow, provider, identity, _only(found), "email")

    if identity.email and await _candidates(uow, provider.tenant_id, func.lower(User.email) == identity.email.lower()):
        raise ProofNeeded("email_in_use")
    if not provider.jit:
        raise ProofNeeded("no_account")
    user = await _create_user(directory, provider, identity, email)
    return await _link(uow, provider, identity, user, "jit")


async def link_proved(uow: UnitOfWork, *, provider: ProviderInfo, identity: Identity, user_id: uuid.UUID) -> Linked:
    """Link ``identity`` to the account its owner just signed in with (linking rule 4)."""
    user = await uow.session.get(User, user_id)
    if user is None or user.tenant_id != provider.tenant_id or not is_live(user):
        raise UpstreamRefused("account_not_live", "the account signed in with is disabled or deleted")
    existing = await uow.session.scalar(
        select(FederatedIdentity.user_id).where(
            FederatedIdentity.provider_id == provider.id, FederatedIdentity.subject == identity.subject
        )
    )
    if existing is not None:
        raise UpstreamRefused("already_linked", "this upstream account was linked meanwhile")
    return await _link(uow, provider, identity, user, "proof")


async def _candidates(uow: UnitOfWork, tenant_id: uuid.UUID, match: object) -> list[User]:
    rows = await uow.session.scalars(
        select(User).where(User.tenant_id == tenant_id, User.deleted_at.is_(None), match).limit(2)  # type: ignore[arg-type]
    )
    return list(rows)


def _only(found: list[User]) -> User:
    if len(found) > 1:
        raise UpstreamRefused("ambiguous_account", "several directory users match; none is picked")
    user = found[0]
    if not is_live(user):
        raise UpstreamRefused("account_not_live", "the matching account is disabled")
    return user


async def _link(uow: UnitOfWork, provider: ProviderInfo, identity: Identity, user: User, how: str) -> Linked:
    link = FederatedIdentity(
        tenant_id=provider.tenant_id,
        provider_id=provider.id,
        user_id=user.id,
        subject=identity.subject,
        email=identity.email[:320] if identity.email else None,
        last_login_at=utcnow(),
    )
    uow.session.add(link)
    try:
        async with uow.session.begin_nested():
            await uow.session.flush()
    except IntegrityError as exc:  # the same upstream account linked in parallel: the other request won
        raise Conflict("this account was linked at the same moment; try again") from exc
    uow.raise_event(
        LinkCreated(tenant_id=provider.tenant_id, user_id=user.id, link_id=link.id, alias=provider.alias, how=how)
    )
    return Linked(user.id, link.id, how)


async def _create_user(directory: Directory, provider: ProviderInfo, identity: Identity, email: str | None) -> User:
    """Make the directory user of a first sign-in (just in time) from the upstream's mapped attributes.

    The username is the mapped ``userName``, else the authoritative email, else one that says where the
    account came from. The address counts as verified only when it is the one the upstream owns.
    """
    fallback = f"{provider.alias}.{_UNSAFE.sub('_', identity.subject)}"[:255]
    mapped = apply(mapping_of(provider.config), identity)
    preferred = (mapped.attributes.get("userName") or email or fallback)[:255]
    profile = profile_for(mapped, user_name=preferred)
    address = profile.email()
    verified = email is not None and address is not None and address.lower() == email.lower()
    try:
        return await directory.users.create(provider.tenant_id, profile, email_verified=verified)
    except (Conflict, Invalid):
        # The name is someone's username already (an account this upstream may not claim), or the
        # mapped one is not a valid username: use the upstream-scoped name instead, which no person chose.
        if fallback == preferred:
            raise
        return await directory.users.create(
            provider.tenant_id, replace(profile, user_name=fallback), email_verified=verified
        )


@dataclass(frozen=True, slots=True)
class LinkInfo:
    """A linked upstream account as operators and the person see it."""

    id: uuid.UUID
    user_id: uuid.UUID
    alias: str
    subject: str
    email: str | None
    created_at: str
    last_login_at: str | None

    def describe(self) -> dict[str, str | None]:
        """Return the link as JSON-ready values."""
        return {
            "id": str(self.id),
            "user_id": str(self.user_id),
            "alias": self.alias,
            "subject": self.subject,
            "email": self.email,
            "created_at": self.created_at,
            "last_login_at": self.last_login_at,
        }


async def list_links(uow: UnitOfWork, *, tenant_id: uuid.UUID, user_id: uuid.UUID | None = None) -> list[LinkInfo]:
    """Return the tenant's links (one user's, when ``user_id`` is given), newest first."""
    query = (
        select(FederatedIdentity, IdentityProvider.alias)
        .join(IdentityProvider, IdentityProvider.id == FederatedIdentity.provider_id)
        .where(FederatedIdentity.tenant_id == tenant_id)
        .order_by(FederatedIdentity.created_at.desc())
    )
    if user_id is not None:
        query = query.where(FederatedIdentity.user_id == user_id)
    rows = await uow.session.execute(query)
    return [
        LinkInfo(
            id=link.id,
            user_id=link.user_id,
            alias=alias,
            subject=link.subject,
            email=link.email,
            created_at=link.created_at.isoformat(),
            last_login_at=link.last_login_at.isoformat() if link.last_login_at else None,
        )
        for link, alias in rows
    ]


async def remove_link(
    uow: UnitOfWork, *, tenant_id: uuid.UUID, link_id: uuid.UUID, user_id: uuid.UUID | None = None, how: str
) -> LinkInfo:
    """Remove a link and end the sessions it created; ``user_id`` limits it to that person's own links."""
    found = [link for link in await list_links(uow, tenant_id=tenant_id, user_id=user_id) if link.id == link_id]
    if not found:
        raise NotFound("no such linked account")
    link = found[0]
    session = uow.session
    await session.execute(
        update(UserSession)
        .where(UserSession.link_id == link_id, UserSession.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )
    await session.execute(delete(FederatedIdentity).where(FederatedIdentity.id == link_id))
    uow.raise_event(LinkRemoved(tenant_id=tenant_id, user_id=link.user_id, link_id=link_id, alias=link.alias, how=how))
    return link
