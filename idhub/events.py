"""Domain events: what services say happened, collected by the unit of work and handed on after its commit.

A service raises an event on the request's unit of work (``uow.raise_event(...)``) in the same place it
changes the state the event describes. The unit of work writes every event that has an audit ``action``
as an audit row in the same transaction, commits, and only then hands the events to their consumers
(the in-process revocation state and its broadcast, the caches, the audit log stream). A failed commit
hands nothing on. Events whose ``outcome`` is not ``success`` describe refused attempts (a wrong
password, a refused token request); they are audited even when the request's transaction rolls back.

Events carry identifiers and names, never secrets (no passwords, tokens or keys).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

Outcome = Literal["success", "failure", "blocked"]


@dataclass(frozen=True, slots=True)
class Actor:
    """Who acts: an OAuth client (``client``), a provisioning token, an operator (``cli``), a person (``user``)."""

    type: str
    id: str

    def label(self) -> str:
        """Return ``type:id``, the form kept on archived records."""
        return f"{self.type}:{self.id}"


ANONYMOUS = Actor("anonymous", "")


@dataclass(frozen=True, slots=True, kw_only=True)
class DomainEvent:
    """Something that happened in one tenant; ``action`` names its audit entry (empty: not audited)."""

    action: ClassVar[str] = ""
    target_type: ClassVar[str] = ""

    tenant_id: uuid.UUID

    @property
    def outcome(self) -> Outcome:
        """Return how the attempt ended; state changes are successes."""
        return "success"

    @property
    def target_id(self) -> str:
        """Return the id of the object the event is about."""
        return ""

    def details(self) -> dict[str, Any]:
        """Return what the audit entry records besides actor and target (no secrets)."""
        return {}


# --- directory ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class UserEvent(DomainEvent):
    """An event about one user of the directory."""

    target_type: ClassVar[str] = "User"
    user_id: uuid.UUID

    @property
    def target_id(self) -> str:
        """Return the user's id."""
        return str(self.user_id)


@dataclass(frozen=True, slots=True, kw_only=True)
class UserCreated(UserEvent):
    """A user was added to the directory (``bulk``: as part of a bulk onboarding)."""

    action: ClassVar[str] = "user.create"
    username: str
    bulk: bool = False

    def details(self) -> dict[str, Any]:
        """Return the username and whether it came in bulk."""
        return {"userName": self.username, "bulk": True} if self.bulk else {"userName": self.username}


@dataclass(frozen=True, slots=True, kw_only=True)
class UserUpdated(UserEvent):
    """Attributes of a user changed; ``changed`` names them (never their values)."""

    action: ClassVar[str] = "user.update"
    changed: tuple[str, ...] = ()

    def details(self) -> dict[str, Any]:
        """Return the names of the changed attributes."""
        return {"changed": list(self.changed)}


@dataclass(frozen=True, slots=True, kw_only=True)
class UserDisabled(UserEvent):
    """A user lost access: every session, refresh token and access token was revoked in the same commit."""

    action: ClassVar[str] = "user.disable"


@dataclass(frozen=True, slots=True, kw_only=True)
class UserEnabled(UserEvent):
    """A disabled user may sign in again."""

    action: ClassVar[str] = "user.enable"


@dataclass(frozen=True, slots=True, kw_only=True)
class UserDeleted(UserEvent):
    """A user was deleted: archived, cut off, and their username freed."""

    action: ClassVar[str] = "user.delete"
    username: str

    def details(self) -> dict[str, Any]:
        """Return the username the account had."""
        return {"userName": self.username}


@dataclass(frozen=True, slots=True, kw_only=True)
class GroupEvent(DomainEvent):
    """An event about one group of the directory."""

    target_type: ClassVar[str] = "Group"
    group_id: uuid.UUID

    @property
    def target_id(self) -> str:
        """Return the group's id."""
        return str(self.group_id)


@dataclass(frozen=True, slots=True, kw_only=True)
class GroupCreated(GroupEvent):
    """A group was created."""

    action: ClassVar[str] = "group.create"
    name: str

    def details(self) -> dict[str, Any]:
        """Return the group's name."""
        return {"displayName": self.name}


@dataclass(frozen=True, slots=True, kw_only=True)
class GroupUpdated(GroupEvent):
    """A group's name or external id changed."""

    action: ClassVar[str] = "group.update"
    changed: tuple[str, ...] = ()

    def details(self) -> dict[str, Any]:
        """Return the names of the changed attributes."""
        return {"changed": list(self.changed)}


@dataclass(frozen=True, slots=True, kw_only=True)
class GroupDeleted(GroupEvent):
    """A group and its memberships were deleted."""

    action: ClassVar[str] = "group.delete"
    name: str

    def details(self) -> dict[str, Any]:
        """Return the group's name."""
        return {"displayName": self.name}


@dataclass(frozen=True, slots=True, kw_only=True)
class MembershipChanged(GroupEvent):
    """Direct members of a group were added or removed (ids of users and groups)."""

    action: ClassVar[str] = "group.members"
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()

    def details(self) -> dict[str, Any]:
        """Return the members added and removed."""
        return {"added": list(self.added), "removed": list(self.removed)}


# --- tokens, grants and revocation -------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class RevocationRecorded(DomainEvent):
    """A revocation entry was appended to the log; processes apply it in memory (not audited itself)."""

    kind: str
    value: str
    created_at: float
    expires_at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class GrantRevoked(DomainEvent):
    """A grant was revoked with its refresh and access tokens (``reason``: why, for the audit log)."""

    action: ClassVar[str] = "grant.revoke"
    target_type: ClassVar[str] = "Grant"
    grant_id: str
    reason: str

    @property
    def target_id(self) -> str:
        """Return the grant's id."""
        return self.grant_id

    def details(self) -> dict[str, Any]:
        """Return why the grant was revoked."""
        return {"reason": self.reason}


@dataclass(frozen=True, slots=True, kw_only=True)
class AccessTokenRevoked(DomainEvent):
    """One access token was revoked by its client (RFC 7009)."""

    action: ClassVar[str] = "token.revoke"
    target_type: ClassVar[str] = "AccessToken"
    jti: str

    @property
    def target_id(self) -> str:
        """Return the token's ``jti``."""
        return self.jti


@dataclass(frozen=True, slots=True, kw_only=True)
class TokensIssued(DomainEvent):
    """The token endpoint issued tokens for a grant type (``kinds``: access_token, id_token, refresh_token)."""

    action: ClassVar[str] = "token.grant"
    target_type: ClassVar[str] = "Client"
    client_id: str
    grant_type: str
    subject: str
    kinds: tuple[str, ...]

    @property
    def target_id(self) -> str:
        """Return the client that got the tokens."""
        return self.client_id

    def details(self) -> dict[str, Any]:
        """Return the grant type, the subject and what was issued."""
        return {"grant_type": self.grant_type, "sub": self.subject, "issued": list(self.kinds)}


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenRequestRefused(DomainEvent):
    """A token, introspection or revocation request was refused (``error``: the OAuth error code)."""

    action: ClassVar[str] = "token.refuse"
    target_type: ClassVar[str] = "Client"
    client_id: str
    endpoint: str
    error: str
    grant_type: str | None = None
    reason: str | None = None

    @property
    def outcome(self) -> Outcome:
        """Return ``failure``: the request was refused."""
        return "failure"

    @property
    def target_id(self) -> str:
        """Return the client that asked (as it named itself)."""
        return self.client_id

    def details(self) -> dict[str, Any]:
        """Return the endpoint, the error code and, for operators, the reason."""
        details: dict[str, Any] = {"endpoint": self.endpoint, "error": self.error}
        if self.grant_type is not None:
            details["grant_type"] = self.grant_type
        if self.reason:
            details["reason"] = self.reason
        return details


# --- sign-in --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class SignIn(DomainEvent):
    """A password sign-in attempt: ``user_id`` is set when the username named a live account."""

    action: ClassVar[str] = "signin.password"
    target_type: ClassVar[str] = "User"
    user_id: uuid.UUID | None
    result: Outcome
    reason: str | None = None

    @property
    def outcome(self) -> Outcome:
        """Return whether the sign-in succeeded, failed, or was refused by the abuse limits."""
        return self.result

    @property
    def target_id(self) -> str:
        """Return the account's id, empty when the username named none."""
        return str(self.user_id) if self.user_id is not None else ""

    def details(self) -> dict[str, Any]:
        """Return why an attempt failed (for operators; never shown to the person)."""
        return {"reason": self.reason} if self.reason else {}


# --- clients, keys, tenants, credentials --------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientChanged(DomainEvent):
    """A client was registered or changed; processes drop their cached copy."""

    action: ClassVar[str] = "client.update"
    target_type: ClassVar[str] = "Client"
    client_id: str

    @property
    def target_id(self) -> str:
        """Return the client's ``client_id``."""
        return self.client_id


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientCreated(ClientChanged):
    """A client was registered."""

    action: ClassVar[str] = "client.create"
    name: str

    def details(self) -> dict[str, Any]:
        """Return the client's name."""
        return {"name": self.name}


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientSecretRotated(ClientChanged):
    """A client got a new secret (shown once); the old one stops working at this commit."""

    action: ClassVar[str] = "client.rotate_secret"


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientDeleted(ClientChanged):
    """A client was removed with its grants; its tokens are refused from this commit on."""

    action: ClassVar[str] = "client.delete"


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionRevoked(DomainEvent):
    """An operator ended a person's SSO session (and the grants made in it)."""

    action: ClassVar[str] = "session.revoke"
    target_type: ClassVar[str] = "Session"
    session_id: str
    user_id: uuid.UUID

    @property
    def target_id(self) -> str:
        """Return the session's id."""
        return self.session_id

    def details(self) -> dict[str, Any]:
        """Return whose session it was."""
        return {"user_id": str(self.user_id)}


@dataclass(frozen=True, slots=True, kw_only=True)
class PolicyChanged(ClientChanged):
    """An access policy of a client changed (``group_id`` ``None``: its machine policy); caches drop the client."""

    action: ClassVar[str] = "policy.update"
    target_type: ClassVar[str] = "AccessPolicy"
    policy_id: uuid.UUID
    group_id: uuid.UUID | None
    scopes: tuple[str, ...] = ()

    @property
    def target_id(self) -> str:
        """Return the policy's id."""
        return str(self.policy_id)

    def details(self) -> dict[str, Any]:
        """Return the client, the subject (a group, or the client's machine policy) and the scopes."""
        subject = {"machine": True} if self.group_id is None else {"group_id": str(self.group_id)}
        return {"client_id": self.client_id, **subject, "scope": " ".join(self.scopes)}


@dataclass(frozen=True, slots=True, kw_only=True)
class PolicyCreated(PolicyChanged):
    """An access policy was created (its client is governed from now on)."""

    action: ClassVar[str] = "policy.create"


@dataclass(frozen=True, slots=True, kw_only=True)
class PolicyDeleted(PolicyChanged):
    """An access policy was deleted (``scopes``: what it granted)."""

    action: ClassVar[str] = "policy.delete"


@dataclass(frozen=True, slots=True, kw_only=True)
class KeysRotated(DomainEvent):
    """The tenant's signing keys moved on: next -> active -> retired."""

    action: ClassVar[str] = "keys.rotate"
    target_type: ClassVar[str] = "Tenant"
    active_kids: tuple[str, ...] = field(default_factory=tuple)

    @property
    def target_id(self) -> str:
        """Return the tenant's id."""
        return str(self.tenant_id)

    def details(self) -> dict[str, Any]:
        """Return the key ids now active."""
        return {"active_kids": list(self.active_kids)}


@dataclass(frozen=True, slots=True, kw_only=True)
class TenantChanged(DomainEvent):
    """A tenant was created or its settings changed."""

    action: ClassVar[str] = "tenant.update"
    target_type: ClassVar[str] = "Tenant"
    slug: str
    changed: tuple[str, ...] = ()

    @property
    def target_id(self) -> str:
        """Return the tenant's id."""
        return str(self.tenant_id)

    def details(self) -> dict[str, Any]:
        """Return the slug and the changed settings' names."""
        return {"slug": self.slug, "changed": list(self.changed)}


@dataclass(frozen=True, slots=True, kw_only=True)
class TenantCreated(TenantChanged):
    """A tenant was created with its first signing keys."""

    action: ClassVar[str] = "tenant.create"


@dataclass(frozen=True, slots=True, kw_only=True)
class CredentialEvent(DomainEvent):
    """An event about a bearer credential that is not an OAuth token (a SCIM provisioning token)."""

    target_type: ClassVar[str] = "ProvisioningToken"
    credential_id: uuid.UUID
    name: str

    @property
    def target_id(self) -> str:
        """Return the credential's id."""
        return str(self.credential_id)

    def details(self) -> dict[str, Any]:
        """Return the credential's name."""
        return {"name": self.name}


@dataclass(frozen=True, slots=True, kw_only=True)
class ProvisioningTokenCreated(CredentialEvent):
    """A provisioning token was created (the token itself is shown once and never recorded)."""

    action: ClassVar[str] = "provisioning_token.create"


@dataclass(frozen=True, slots=True, kw_only=True)
class ProvisioningTokenRevoked(CredentialEvent):
    """A provisioning token was revoked; every process refuses it from this commit on."""

    action: ClassVar[str] = "provisioning_token.revoke"


# --- brokering ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class IdentityProviderChanged(DomainEvent):
    """An upstream identity provider was added, changed or removed; processes drop their cached connector."""

    action: ClassVar[str] = "idp.update"
    target_type: ClassVar[str] = "IdentityProvider"
    provider_id: uuid.UUID
    alias: str
    changed: tuple[str, ...] = ()

    @property
    def target_id(self) -> str:
        """Return the provider's id."""
        return str(self.provider_id)

    def details(self) -> dict[str, Any]:
        """Return the alias and the changed settings' names (never a secret's value)."""
        return {"alias": self.alias, "changed": list(self.changed)}


@dataclass(frozen=True, slots=True, kw_only=True)
class IdentityProviderCreated(IdentityProviderChanged):
    """An upstream identity provider was added."""

    action: ClassVar[str] = "idp.create"


@dataclass(frozen=True, slots=True, kw_only=True)
class IdentityProviderDeleted(IdentityProviderChanged):
    """An upstream identity provider was removed, with its links."""

    action: ClassVar[str] = "idp.delete"


@dataclass(frozen=True, slots=True, kw_only=True)
class LinkEvent(DomainEvent):
    """An upstream account was linked to, or unlinked from, a directory user."""

    target_type: ClassVar[str] = "User"
    user_id: uuid.UUID
    link_id: uuid.UUID
    alias: str
    how: str = ""  # existing | external_id | email | jit | proof | operator | self (the account page)

    @property
    def target_id(self) -> str:
        """Return the user's id."""
        return str(self.user_id)

    def details(self) -> dict[str, Any]:
        """Return the upstream's alias, the link and how it was made or removed."""
        return {"alias": self.alias, "link_id": str(self.link_id), "how": self.how}


@dataclass(frozen=True, slots=True, kw_only=True)
class LinkCreated(LinkEvent):
    """A new link: from now on this upstream account signs in as the user."""

    action: ClassVar[str] = "link.create"


@dataclass(frozen=True, slots=True, kw_only=True)
class LinkRemoved(LinkEvent):
    """A link was removed; the sessions it created were ended."""

    action: ClassVar[str] = "link.delete"


@dataclass(frozen=True, slots=True, kw_only=True)
class BrokeredSignIn(DomainEvent):
    """A sign-in through an upstream: who (when known), through which upstream, and why it was refused."""

    action: ClassVar[str] = "signin.broker"
    target_type: ClassVar[str] = "User"
    alias: str
    user_id: uuid.UUID | None = None
    result: Outcome = "success"
    reason: str | None = None
    how: str | None = None

    @property
    def outcome(self) -> Outcome:
        """Return whether the brokered sign-in succeeded."""
        return self.result

    @property
    def target_id(self) -> str:
        """Return the user's id (empty when the sign-in was refused before a user was found)."""
        return str(self.user_id) if self.user_id is not None else ""

    def details(self) -> dict[str, Any]:
        """Return the upstream, how the user was found and why a refusal happened (never shown to the person)."""
        details: dict[str, Any] = {"alias": self.alias}
        if self.how:
            details["how"] = self.how
        if self.reason:
            details["reason"] = self.reason
        return details


# --- audit ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditArchived(DomainEvent):
    """A tenant's oldest audit entries moved to a sealed archive file (retention); the chain records where."""

    action: ClassVar[str] = "audit.archive"
    target_type: ClassVar[str] = "Tenant"
    file: str
    entries: int
    unchained: int
    first_seq: int | None
    last_seq: int | None
    last_hash: str | None

    @property
    def target_id(self) -> str:
        """Return the tenant's id."""
        return str(self.tenant_id)

    def details(self) -> dict[str, Any]:
        """Return the file's name and the range of entries it holds."""
        return {
            "file": self.file,
            "entries": self.entries,
            "unchained": self.unchained,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "last_hash": self.last_hash,
        }


# --- backups and archived records -------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class BackupTaken(DomainEvent):
    """A backup holding the tenant's data was written (``file_id`` names the file; ``scope`` ``all`` or the tenant)."""

    action: ClassVar[str] = "backup.create"
    target_type: ClassVar[str] = "Tenant"
    file_id: str
    scope: str

    @property
    def target_id(self) -> str:
        """Return the tenant's id."""
        return str(self.tenant_id)

    def details(self) -> dict[str, Any]:
        """Return the file's id and the backup's scope."""
        return {"file_id": self.file_id, "scope": self.scope}


@dataclass(frozen=True, slots=True, kw_only=True)
class BackupRestored(DomainEvent):
    """The tenant was restored from a backup (its file id and when the backup was taken)."""

    action: ClassVar[str] = "backup.restore"
    target_type: ClassVar[str] = "Tenant"
    file_id: str
    taken_at: str

    @property
    def target_id(self) -> str:
        """Return the tenant's id."""
        return str(self.tenant_id)

    def details(self) -> dict[str, Any]:
        """Return the file's id and when the backup was taken."""
        return {"file_id": self.file_id, "taken_at": self.taken_at}


@dataclass(frozen=True, slots=True, kw_only=True)
class ArchivedUserPurged(UserEvent):
    """The archived record of a deleted user was removed for good once its retention period ended."""

    action: ClassVar[str] = "user.purge"
    deleted_at: str

    def details(self) -> dict[str, Any]:
        """Return when the user had been deleted."""
        return {"deleted": self.deleted_at}


@dataclass(frozen=True, slots=True, kw_only=True)
class UserDataExported(UserEvent):
    """A person's data was exported (GDPR Art. 15 access, Art. 20 portability)."""

    action: ClassVar[str] = "user.export"
