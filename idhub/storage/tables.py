"""Core table handles, for the statements that read and write without the ORM.

A statement on a mapped class goes through the ORM's compile and bulk-persistence steps even when no
object is involved; on the table it is plain Core. The hot paths (a sign-in's dozen statements) and the
list pages use these: on PostgreSQL the ORM route costs the client 60 to 70% more CPU per statement
(``python bench/db_roundtrips.py``: ``session_entity`` against ``session_table``).
"""

from __future__ import annotations

from typing import cast

from sqlalchemy import Table

from idhub.storage.models import (
    AccessPolicy,
    AuditChainHead,
    AuditEvent,
    AuthorizationCode,
    FederatedIdentity,
    Grant,
    Group,
    GroupMember,
    Interaction,
    RefreshToken,
    Revocation,
    UsedValue,
    User,
    UserSession,
    UserValue,
)

ACCESS_POLICIES = cast(Table, AccessPolicy.__table__)
AUDIT_CHAIN_HEADS = cast(Table, AuditChainHead.__table__)
AUDIT_EVENTS = cast(Table, AuditEvent.__table__)
AUTHORIZATION_CODES = cast(Table, AuthorizationCode.__table__)
FEDERATED_IDENTITIES = cast(Table, FederatedIdentity.__table__)
GRANTS = cast(Table, Grant.__table__)
GROUPS = cast(Table, Group.__table__)
GROUP_MEMBERS = cast(Table, GroupMember.__table__)
INTERACTIONS = cast(Table, Interaction.__table__)
REFRESH_TOKENS = cast(Table, RefreshToken.__table__)
REVOCATIONS = cast(Table, Revocation.__table__)
USED_VALUES = cast(Table, UsedValue.__table__)
USERS = cast(Table, User.__table__)
USER_SESSIONS = cast(Table, UserSession.__table__)
USER_VALUES = cast(Table, UserValue.__table__)

# A grant's start and state with what a token response reads of its user: whether it is live
# (idhub.directory.rules.is_live) and its claims (idhub.oidc.claims). The row stands in for the user:
# ``id`` is the user's.
GRANT_AND_USER_COLUMNS = (
    GRANTS.c.created_at.label("grant_created_at"),
    GRANTS.c.revoked_at.label("grant_revoked_at"),
    USERS.c.id,
    USERS.c.enabled,
    USERS.c.deleted_at,
    USERS.c.username,
    USERS.c.name,
    USERS.c.given_name,
    USERS.c.family_name,
    USERS.c.email,
    USERS.c.email_verified,
    USERS.c.updated_at,
)
