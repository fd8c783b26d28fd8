"""All tables; importing this package registers them on ``Base.metadata``."""

from idhub.storage.models.audit import AuditChainHead, AuditEvent
from idhub.storage.models.broker import FederatedIdentity, IdentityProvider
from idhub.storage.models.client import Client
from idhub.storage.models.consent import Consent
from idhub.storage.models.grant import AuthorizationCode, Grant, RefreshToken
from idhub.storage.models.group import Group, GroupMember
from idhub.storage.models.interaction import Interaction
from idhub.storage.models.key import SigningKey
from idhub.storage.models.policy import AccessPolicy
from idhub.storage.models.provisioning import ProvisioningToken
from idhub.storage.models.revocation import Revocation, UsedValue
from idhub.storage.models.session import UserSession
from idhub.storage.models.tenant import Tenant
from idhub.storage.models.user import User, UserValue

__all__ = [
    "AccessPolicy",
    "AuditChainHead",
    "AuditEvent",
    "AuthorizationCode",
    "Client",
    "Consent",
    "FederatedIdentity",
    "Grant",
    "Group",
    "GroupMember",
    "IdentityProvider",
    "Interaction",
    "ProvisioningToken",
    "RefreshToken",
    "Revocation",
    "SigningKey",
    "Tenant",
    "UsedValue",
    "User",
    "UserSession",
    "UserValue",
]
