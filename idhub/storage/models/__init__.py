"""All tables; importing this package registers them on ``Base.metadata``."""

from idhub.storage.models.client import Client
from idhub.storage.models.consent import Consent
from idhub.storage.models.grant import AuthorizationCode, Grant, RefreshToken
from idhub.storage.models.interaction import Interaction
from idhub.storage.models.key import SigningKey
from idhub.storage.models.revocation import Revocation, UsedJti
from idhub.storage.models.session import UserSession
from idhub.storage.models.tenant import Tenant
from idhub.storage.models.user import User

__all__ = [
    "AuthorizationCode",
    "Client",
    "Consent",
    "Grant",
    "Interaction",
    "RefreshToken",
    "Revocation",
    "SigningKey",
    "Tenant",
    "UsedJti",
    "User",
    "UserSession",
]
