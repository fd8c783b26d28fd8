"""Users of a tenant's directory: every write any surface makes to a person goes through :class:`Users`.

SCIM, the CLI, the admin API and the broker's just-in-time accounts call the same commands, so each
rule lives here once: the username rule and its uniqueness among live accounts, the password rule and
its hashing (off the event loop), the email that sign-in and ID tokens use, the version check of
conditional writes, the one disabling path that revokes every session and token in the same commit,
and the archive a deleted account leaves behind.

Commands never commit; they change state through the unit of work's session and raise
:mod:`idhub.events` on it (audited in the same transaction).
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, insert, null, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.orm.exc import StaleDataError

from idhub.directory.passwords import PasswordHasher
from idhub.directory.profile import MULTI_VALUED, PROFILE_COLUMNS, VALUE_FIELDS, UserProfile, ValueRecord
from idhub.directory.rules import check_email, check_password, checked_username, is_live, normalise_username
from idhub.directory.tables import USER_VALUES, USERS
from idhub.errors import Conflict, DomainError, Invalid, NotFound, PreconditionFailed
from idhub.events import UserCreated, UserDeleted, UserDisabled, UserEnabled, UserUpdated
from idhub.storage.base import new_uuid, utcnow
from idhub.storage.models import (
    FederatedIdentity,
    Grant,
    Group,
    GroupMember,
    IdentityProvider,
    RefreshToken,
    User,
    UserSession,
    UserValue,
)
from idhub.storage.uow import UnitOfWork
from idhub.tokens.revocation import record_revocation

USERNAME_TAKEN = "userName is already taken"
ARCHIVED_SIGN_INS = 10  # the last sign-ins an archived record keeps


class _Keep:
    """Marker: leave the password as it is."""


KEEP_PASSWORD = _Keep()


def checked_profile(profile: UserProfile) -> str:
    """Apply the directory's rules to a profile; return the stored (case-folded) username."""
    username = checked_username(profile.user_name)
    for record in profile.values:
        if record.attribute == "emails" and record.value is not None:
            check_email(record.value)  # RFC 7643 §4.1.2: an address as RFC 5321 has it
    return username


def check_version(version: int, expected: Collection[int] | None) -> None:
    """Refuse a write that names another version than the current one (RFC 7232 §3.1 ``If-Match``)."""
    if expected is not None and version not in expected:
        raise PreconditionFailed("the resource has changed since that version")


async def flush_checked(uow: UnitOfWork, *, taken: str, new: object | None = None) -> None:
    """Flush pending writes in a savepoint: a unique key another row holds is a 409 saying ``taken``; a
    versioned UPDATE that a concurrent writer beat (it bumped the version first) is a 412.

    A new row comes as ``new`` and is added inside the savepoint: ``begin_nested()`` first flushes what is
    already pending outside it, so a refused INSERT added before would end the whole unit of work.
    """
    session = uow.session
    try:
        async with session.begin_nested():
            if new is not None:
                session.add(new)
            await session.flush()
    except StaleDataError as exc:
        raise PreconditionFailed("the resource was changed by a concurrent request") from exc
    except IntegrityError as exc:
        raise Conflict(taken) from exc


@dataclass(slots=True)
class Users:
    """Commands on the users of the directory, for one unit of work."""

    uow: UnitOfWork
    passwords: PasswordHasher
    token_lifetime: int  # seconds a subject revocation must last: the longest access-token lifetime

    # --- reads ---------------------------------------------------------------------------------
    async def get(self, tenant_id: uuid.UUID, user_id: uuid.UUID | None) -> User:
        """Return the live (not deleted) user ``user_id`` of the tenant, or raise :class:`NotFound`."""
        user = None
        if user_id is not None:
            user = await self.uow.session.scalar(
                select(User).where(User.tenant_id == tenant_id, User.id == user_id, User.deleted_at.is_(None))
            )
        if user is None:
            raise NotFound("user not found")
        return user

    async def find(self, tenant_id: uuid.UUID, username: str) -> User | None:
        """Return the live user with ``username`` (case-insensitive), or ``None``."""
        return await find_by_username(self.uow, tenant_id=tenant_id, username=username)

    async def values_of(self, user_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, list[Any]]:
        """Return each user's multi-valued rows (``user_value``), in their order."""
        found: dict[uuid.UUID, list[Any]] = {uid: [] for uid in user_ids}
        if user_ids:
            rows = await self.uow.session.execute(
                select(USER_VALUES).where(USER_VALUES.c.user_id.in_(user_ids)).order_by(USER_VALUES.c.position)
            )
            for row in rows:
                found[row.user_id].append(row)
        return found

    async def profile_of(self, user: User) -> UserProfile:
        """Return the person's current profile (what :meth:`update` replaces)."""
        rows = (await self.values_of([user.id]))[user.id]
        values = tuple(ValueRecord(**{name: getattr(row, name) for name in VALUE_FIELDS}) for row in rows)
        columns: dict[str, Any] = {column: getattr(user, column) for column in PROFILE_COLUMNS}
        return UserProfile(user_name=user.user_name or user.username, active=user.enabled, values=values, **columns)

    # --- create --------------------------------------------------------------------------------
    async def create(
        self,
        tenant_id: uuid.UUID,
        profile: UserProfile,
        *,
        password: str | None = None,
        email_verified: bool = False,
    ) -> User:
        """Add a person; :class:`Conflict` when a live account holds the username."""
        username = checked_profile(profile)
        if password is not None:
            check_password(password)
        await self._check_username_free(tenant_id, username, None)
        password_hash = await self.passwords.hash_off_loop(password) if password is not None else None
        user = User(
            tenant_id=tenant_id,
            username=username,
            user_name=profile.user_name,
            email=profile.email(),
            email_verified=email_verified,
            # Unassigned is stored NULL: a plain None would let the column's default (true) fill it in.
            enabled=profile.active if profile.active is not None else null(),
            password_hash=password_hash,
            created_by=self.uow.actor.label(),
            **profile.columns(),
        )
        session = self.uow.session
        await flush_checked(self.uow, taken=USERNAME_TAKEN, new=user)
        if profile.active is None:
            set_committed_value(user, "enabled", None)  # what the INSERT wrote, without reloading it
        rows = profile.value_rows()
        if rows:
            await session.execute(insert(UserValue), [{"user_id": user.id, **row} for row in rows])
        self.uow.raise_event(UserCreated(tenant_id=tenant_id, user_id=user.id, username=username))
        return user

    async def create_many(self, tenant_id: uuid.UUID, profiles: Sequence[UserProfile]) -> list[uuid.UUID | DomainError]:
        """Add many people at once (bulk onboarding); return each one's id or the error that refused it.

        One cached ``INSERT ... ON CONFLICT DO NOTHING RETURNING id`` run as executemany: the live-username
        index decides in the same statement (ids are generated here, so the returned ids say which rows
        went in), instead of a ``username IN (...)`` query whose plan degrades as the table grows.
        Passwords are not taken here: hashing is slow by design and goes through :meth:`create`.
        """
        results: list[uuid.UUID | DomainError] = []
        prepared: list[tuple[int, dict[str, Any], UserProfile]] = []
        seen: set[str] = set()
        template = dict.fromkeys(c.key for c in USERS.columns if c.key != "archive")
        template.update(tenant_id=tenant_id, version=1, created_by=self.uow.actor.label(), email_verified=False)
        now = utcnow()
        for index, profile in enumerate(profiles):
            try:
                username = checked_profile(profile)
            except Invalid as exc:
                results.append(exc)
                continue
            if username in seen:
                results.append(Conflict(USERNAME_TAKEN))
                continue
            seen.add(username)
            # Every row carries every column, so the INSERT runs as one executemany batch.
            row = {**template, **profile.columns()}
            row.update(
                id=new_uuid(),
                username=username,
                user_name=profile.user_name,
                email=profile.email(),
                enabled=profile.active,
                created_at=now,
                updated_at=now,
            )
            results.append(row["id"])
            prepared.append((index, row, profile))
        if not prepared:
            return results
        try:
            async with self.uow.session.begin_nested():
                inserted = await self._insert_rows(prepared)
        except IntegrityError:
            # A constraint other than the username one: one savepoint each, for exact answers.
            for index, _row, profile in prepared:
                try:
                    results[index] = (await self.create(tenant_id, profile)).id
                except DomainError as exc:
                    results[index] = exc
            return results
        events = []
        for index, row, _profile in prepared:
            if row["id"] in inserted:
                events.append(UserCreated(tenant_id=tenant_id, user_id=row["id"], username=row["username"], bulk=True))
            else:
                results[index] = Conflict(USERNAME_TAKEN)  # the live-username index refused it
        self.uow.raise_events(events)
        return results

    async def _insert_rows(self, prepared: list[tuple[int, dict[str, Any], UserProfile]]) -> set[uuid.UUID]:
        session = self.uow.session
        builder = postgresql_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
        table = USERS
        # One cached statement run as executemany: SQLAlchemy batches it into multi-row VALUES itself
        # ("insertmanyvalues"), without compiling a new statement for every batch.
        statement = builder(table).on_conflict_do_nothing().returning(table.c.id)
        result = await session.execute(statement, [row for _, row, _ in prepared])
        inserted: set[uuid.UUID] = set(result.scalars().all())
        value_rows = [
            {"id": uuid.uuid4(), "user_id": row["id"], **value}
            for _, row, profile in prepared
            if row["id"] in inserted
            for value in profile.value_rows()
        ]
        if value_rows:
            await session.execute(insert(UserValue), value_rows)
        return inserted

    # --- update --------------------------------------------------------------------------------
    async def update(
        self,
        user: User,
        profile: UserProfile,
        *,
        password: str | _Keep | None = KEEP_PASSWORD,
        expected_versions: Collection[int] | None = None,
    ) -> User:
        """Replace a person's attributes with ``profile`` (unassigned ones are cleared).

        The write is a conditional UPDATE on the version (a concurrent writer makes this one
        :class:`PreconditionFailed`). An account that stops being active is cut off in the same
        transaction; one that becomes active again may sign in. ``password`` ``None`` removes it.
        """
        check_version(user.version, expected_versions)
        username = checked_profile(profile)
        # Queries first: a query after the row changed would autoflush the pending UPDATE.
        await self._check_username_free(user.tenant_id, username, user.id)
        current_rows = (await self.values_of([user.id]))[user.id]
        changed: list[str] = []
        if user.username != username or user.user_name != profile.user_name:
            user.username, user.user_name = username, profile.user_name
            changed.append("userName")
        for column, value in profile.columns().items():
            if getattr(user, column) != value:
                setattr(user, column, value)
                changed.append(column)
        email = profile.email()
        if email != user.email:
            user.email = email
            user.email_verified = False  # a writer asserts an address; it does not prove the person controls it
            changed.append("email")
        if not isinstance(password, _Keep):
            user.password_hash = (
                await self.passwords.hash_off_loop(check_password(password)) if password is not None else None
            )
            changed.append("password")
        new_rows = profile.value_rows()
        values_changed = _changed_attributes(current_rows, new_rows)
        changed.extend(values_changed)
        was_live = is_live(user)
        if user.enabled is not profile.active:
            user.enabled = profile.active
            changed.append("active")
        user.updated_at = utcnow()  # always an UPDATE of the row, so the version moves on every write
        await flush_checked(self.uow, taken=USERNAME_TAKEN)
        if values_changed:
            session = self.uow.session
            await session.execute(delete(UserValue).where(UserValue.user_id == user.id))
            if new_rows:
                await session.execute(insert(UserValue), [{"user_id": user.id, **row} for row in new_rows])
        self.uow.raise_event(UserUpdated(tenant_id=user.tenant_id, user_id=user.id, changed=tuple(changed)))
        await self._after_active_change(user, was_live)
        return user

    async def set_active(self, user: User, active: bool, *, expected_versions: Collection[int] | None = None) -> User:
        """Enable or disable a person (the CLI and admin API); disabling cuts off every session and token."""
        check_version(user.version, expected_versions)
        was_live = is_live(user)
        if user.enabled is not active:
            user.enabled = active
            user.updated_at = utcnow()
            await flush_checked(self.uow, taken=USERNAME_TAKEN)
        await self._after_active_change(user, was_live)
        return user

    async def _after_active_change(self, user: User, was_live: bool) -> None:
        if was_live and not is_live(user):
            # The one disabling path of the directory: sessions, grants, refresh and access tokens.
            await self.revoke_access(user.tenant_id, user.id)
            self.uow.raise_event(UserDisabled(tenant_id=user.tenant_id, user_id=user.id))
        elif not was_live and is_live(user):
            self.uow.raise_event(UserEnabled(tenant_id=user.tenant_id, user_id=user.id))

    # --- delete --------------------------------------------------------------------------------
    async def delete(self, user: User, *, expected_versions: Collection[int] | None = None) -> None:
        """Delete a person: cut off everywhere at once, kept as an archived record, username freed.

        The archive says who deleted the account (``deleted_by``, the acting client, token or operator),
        when, and what the account held last (attributes, multi-valued elements, direct groups, linked
        upstream accounts and the last sign-ins). It is kept for the archive's retention period
        (``IDHUB_ARCHIVE__RETENTION_DAYS``), then purged (``idhub archive purge``).
        """
        check_version(user.version, expected_versions)
        now = utcnow()
        archive = await self._archive(user)
        archive.update(deleted=now.isoformat(), deletedBy=self.uow.actor.label())
        user.deleted_at = now
        user.deleted_by = self.uow.actor.label()
        user.archive = archive
        user.password_hash = None
        user.enabled = False
        user.updated_at = now
        # First: a concurrent writer makes this one fail before anything else happens.
        await flush_checked(self.uow, taken=USERNAME_TAKEN)
        await self.revoke_access(user.tenant_id, user.id)
        await self.uow.session.execute(delete(GroupMember).where(GroupMember.user_id == user.id))
        self.uow.raise_event(UserDeleted(tenant_id=user.tenant_id, user_id=user.id, username=user.username))

    async def _archive(self, user: User) -> dict[str, Any]:
        values = (await self.values_of([user.id]))[user.id]
        groups = await self.uow.session.execute(
            select(Group.id, Group.display_name)
            .join(GroupMember, GroupMember.group_id == Group.id)
            .where(GroupMember.user_id == user.id)
        )
        archive: dict[str, Any] = {"userName": user.user_name or user.username, "active": user.enabled}
        archive.update({c: getattr(user, c) for c in PROFILE_COLUMNS if getattr(user, c) is not None})
        if user.email is not None:
            archive["email"] = user.email
        archive["values"] = [
            {name: getattr(row, name) for name in VALUE_FIELDS if getattr(row, name) is not None} for row in values
        ]
        archive["groups"] = [{"id": str(gid), "displayName": name} for gid, name in groups]
        archive["links"] = await self._archived_links(user)
        archive["lastSignIns"] = await self._archived_sign_ins(user)
        archive["created"] = user.created_at.isoformat()
        return archive

    async def _archived_links(self, user: User) -> list[dict[str, Any]]:
        """Return the person's linked upstream accounts (upstream alias and type, subject, when used last)."""
        rows = await self.uow.session.execute(
            select(FederatedIdentity, IdentityProvider.alias, IdentityProvider.type)
            .join(IdentityProvider, IdentityProvider.id == FederatedIdentity.provider_id)
            .where(FederatedIdentity.tenant_id == user.tenant_id, FederatedIdentity.user_id == user.id)
            .order_by(FederatedIdentity.created_at)
        )
        return [
            {
                "id": str(link.id),
                "provider": alias,
                "providerType": kind,
                "subject": link.subject,
                "email": link.email,
                "created": link.created_at.isoformat(),
                "lastLogin": link.last_login_at.isoformat() if link.last_login_at else None,
            }
            for link, alias, kind in rows
        ]

    async def _archived_sign_ins(self, user: User) -> list[dict[str, Any]]:
        """Return the person's last sign-ins (their SSO sessions, newest first; never a cookie or its hash)."""
        rows = await self.uow.session.execute(
            select(
                UserSession.auth_time, UserSession.amr, UserSession.acr, UserSession.link_id, UserSession.last_seen_at
            )
            .where(UserSession.tenant_id == user.tenant_id, UserSession.user_id == user.id)
            .order_by(UserSession.auth_time.desc())
            .limit(ARCHIVED_SIGN_INS)
        )
        return [
            {
                "at": row.auth_time.isoformat(),
                "amr": list(row.amr or []),
                "acr": row.acr,
                "link": str(row.link_id) if row.link_id else None,
                "lastSeen": row.last_seen_at.isoformat(),
            }
            for row in rows
        ]

    # --- cut-off -------------------------------------------------------------------------------
    async def revoke_access(self, tenant_id: uuid.UUID, user_id: uuid.UUID) -> None:
        """End every session, grant and refresh token of a person and revoke the access tokens already issued."""
        await revoke_user_access(self.uow, tenant_id=tenant_id, user_id=user_id, expires_in=self.token_lifetime)

    # --- helpers -------------------------------------------------------------------------------
    async def _check_username_free(self, tenant_id: uuid.UUID, username: str, own_id: uuid.UUID | None) -> None:
        taken = await self.uow.session.scalar(
            select(User.id).where(User.tenant_id == tenant_id, User.username == username, User.deleted_at.is_(None))
        )
        if taken is not None and taken != own_id:
            raise Conflict(USERNAME_TAKEN)


async def find_by_username(uow: UnitOfWork, *, tenant_id: uuid.UUID, username: str) -> User | None:
    """Return the live (not deleted) user with ``username`` (case-insensitive), or ``None``."""
    return await uow.session.scalar(
        select(User).where(
            User.tenant_id == tenant_id, User.username == normalise_username(username), User.deleted_at.is_(None)
        )
    )


async def revoke_user_access(uow: UnitOfWork, *, tenant_id: uuid.UUID, user_id: uuid.UUID, expires_in: int) -> None:
    """End every session, grant and refresh token of a user; revoke their access tokens from this commit on."""
    session = uow.session
    now = utcnow()
    for model in (UserSession, Grant, RefreshToken):
        await session.execute(
            update(model)
            .where(model.tenant_id == tenant_id, model.user_id == user_id, model.revoked_at.is_(None))
            .values(revoked_at=now)
            .execution_options(synchronize_session=False)
        )
    await record_revocation(uow, tenant_id=tenant_id, kind="subject", value=str(user_id), expires_in=expires_in)


def _changed_attributes(current: Sequence[Any], new: list[dict[str, Any]]) -> list[str]:
    """Return the multi-valued attributes whose elements differ (order included)."""
    keys = ("position", *VALUE_FIELDS)
    before: dict[str, list[tuple[Any, ...]]] = {}
    for row in current:
        before.setdefault(row.attribute, []).append(tuple(getattr(row, k) for k in keys))
    after: dict[str, list[tuple[Any, ...]]] = {}
    for row in new:
        after.setdefault(row["attribute"], []).append(tuple(row[k] for k in keys))
    return [attr for attr in MULTI_VALUED if sorted(before.get(attr, [])) != sorted(after.get(attr, []))]


__all__ = [
    "KEEP_PASSWORD",
    "USERNAME_TAKEN",
    "Users",
    "check_version",
    "find_by_username",
    "revoke_user_access",
]
