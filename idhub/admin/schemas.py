"""Request and response bodies of the admin API.

Requests reject unknown fields (``extra="forbid"``), so a typo is a 422 rather than a silently ignored
setting. Fields the server owns (``id``, timestamps, versions, ``client_id``, secrets) are accepted and
dropped, so a caller may send back what it read; the server never takes an id or a secret from a caller.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, StringConstraints, model_validator

SERVER_OWNED = frozenset(
    {
        "id",
        "created_at",
        "updated_at",
        "deleted_at",
        "version",
        "client_id",
        "client_secret",
        "secret",
        "token",
        "secret_hash",
        "token_hash",
        "groups",
        "last_seen_at",
    }
)

Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=255)]
OptionalText = Annotated[str, StringConstraints(strip_whitespace=True, max_length=255)] | None
Uri = Annotated[str, StringConstraints(min_length=1, max_length=2000)]
ScopeText = Annotated[str, StringConstraints(max_length=2000)]


class Body(BaseModel):
    """A request body: unknown fields refused, server-owned ones dropped."""

    # No str_max_length: pydantic releases differ in whether it shows in the JSON schema, and the served
    # document must not depend on the installed release. Strings are bounded per field and by the body cap.
    model_config = ConfigDict(extra="forbid")
    server_owned: ClassVar[frozenset[str]] = SERVER_OWNED

    @model_validator(mode="before")
    @classmethod
    def _drop_server_owned(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {key: value for key, value in data.items() if key not in cls.server_owned}
        return data


class Out(BaseModel):
    """A response body."""

    model_config = ConfigDict(extra="allow")


# --- users -------------------------------------------------------------------------------------------
class UserProfileFields(Body):
    """The single-valued attributes an admin may set on a person (all optional)."""

    email: Annotated[str, StringConstraints(strip_whitespace=True, max_length=320)] | None = None
    external_id: OptionalText = None
    display_name: OptionalText = None
    given_name: OptionalText = None
    family_name: OptionalText = None
    middle_name: OptionalText = None
    nick_name: OptionalText = None
    title: OptionalText = None
    user_type: OptionalText = None
    preferred_language: OptionalText = None
    locale: OptionalText = None
    timezone: OptionalText = None
    employee_number: OptionalText = None
    cost_center: OptionalText = None
    organization: OptionalText = None
    division: OptionalText = None
    department: OptionalText = None


class UserCreate(UserProfileFields):
    """A new person."""

    username: Text
    active: bool = True
    password: SecretStr | None = Field(default=None, description="initial password; never returned")


class UserPatch(UserProfileFields):
    """A change to a person (JSON merge patch, RFC 7396: fields sent are set, ``null`` clears)."""

    username: Text | None = None
    active: bool | None = None
    password: SecretStr | None = Field(default=None, description="new password; null removes it")


class UserOut(Out):
    """A person as the admin API shows them."""

    id: str
    username: str
    email: str | None
    email_verified: bool
    active: bool
    created_at: datetime
    updated_at: datetime
    version: int


# --- groups ------------------------------------------------------------------------------------------
class GroupCreate(Body):
    """A new group."""

    name: Text
    external_id: OptionalText = None


class GroupPatch(Body):
    """A change to a group."""

    name: Text | None = None
    external_id: OptionalText = None


class GroupOut(Out):
    """A group."""

    id: str
    name: str
    external_id: str | None
    created_at: datetime
    updated_at: datetime
    version: int


class MemberChange(Body):
    """People and groups to add to or remove from a group."""

    server_owned: ClassVar[frozenset[str]] = SERVER_OWNED - {"groups"}

    users: list[str] = Field(default_factory=list, max_length=1000)
    groups: list[str] = Field(default_factory=list, max_length=1000)


# --- clients -----------------------------------------------------------------------------------------
GrantType = Literal["authorization_code", "refresh_token", "client_credentials"]
AuthMethod = Literal["client_secret_basic", "client_secret_post", "private_key_jwt", "none"]


class ClientCreate(Body):
    """A new OAuth client."""

    name: Text
    redirect_uris: list[Uri] = Field(default_factory=list, max_length=50)
    post_logout_redirect_uris: list[Uri] = Field(default_factory=list, max_length=50)
    backchannel_logout_uri: Uri | None = None
    grant_types: list[GrantType] | None = None
    scope: ScopeText | None = None
    token_endpoint_auth_method: AuthMethod | None = None
    application_type: Literal["web", "native"] | None = None
    resources: list[Uri] = Field(default_factory=list, max_length=20)
    access_token_alg: Literal["ES256", "RS256"] | None = None
    jwks: dict[str, Any] | None = None
    jwks_uri: Uri | None = None
    first_party: bool = False


class ClientPatch(Body):
    """A change to a client's registration."""

    name: Text | None = None
    redirect_uris: list[Uri] | None = Field(default=None, max_length=50)
    post_logout_redirect_uris: list[Uri] | None = Field(default=None, max_length=50)
    backchannel_logout_uri: Uri | None = None
    grant_types: list[GrantType] | None = None
    scope: ScopeText | None = None
    resources: list[Uri] | None = Field(default=None, max_length=20)
    access_token_alg: Literal["ES256", "RS256"] | None = None
    jwks: dict[str, Any] | None = None
    jwks_uri: Uri | None = None
    first_party: bool | None = None
    enabled: bool | None = None


class ClientOut(Out):
    """A client's registration (never its secret)."""

    client_id: str
    name: str
    token_endpoint_auth_method: str
    application_type: str
    redirect_uris: list[str]
    post_logout_redirect_uris: list[str]
    grant_types: list[str]
    scope: str
    enabled: bool
    created_at: datetime
    updated_at: datetime


class ClientSecretOut(ClientOut):
    """A client with its new secret, shown this once."""

    client_secret: str | None


# --- provisioning tokens -----------------------------------------------------------------------------
class ProvisioningTokenCreate(Body):
    """A new SCIM provisioning token."""

    name: Text


class ProvisioningTokenOut(Out):
    """A provisioning token as listed (never the token)."""

    id: str
    name: str
    created_at: datetime
    revoked_at: datetime | None


class ProvisioningTokenSecretOut(ProvisioningTokenOut):
    """A new provisioning token with the token itself, shown this once."""

    token: str


# --- pages -------------------------------------------------------------------------------------------
class Page(BaseModel):
    """One page of a list; ``next_cursor`` continues it (``null`` on the last page)."""

    items: list[dict[str, Any]]
    next_cursor: str | None


# --- identity providers ------------------------------------------------------------------------------
IdpType = Literal["oidc", "saml", "google", "microsoft", "github", "facebook", "linkedin"]


class IdentityProviderCreate(Body):
    """A new upstream identity provider (the upstream's own client id and secret are inputs here)."""

    server_owned: ClassVar[frozenset[str]] = SERVER_OWNED - {"client_id", "client_secret"}

    alias: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    type: IdpType
    issuer: Uri | None = None
    client_id: Annotated[str, StringConstraints(min_length=1, max_length=255)] | None = None
    client_secret: SecretStr | None = None
    metadata_xml: Annotated[str, StringConstraints(max_length=1_000_000)] | None = None
    metadata_url: Uri | None = None
    internal: bool = Field(default=False, description="private and loopback addresses (system administrators)")
    jit: bool = True
    display_name: OptionalText = None
    email_domains: list[Annotated[str, StringConstraints(max_length=253)]] = Field(default_factory=list, max_length=50)
    link_claim: Annotated[str, StringConstraints(max_length=64)] | None = None
    allow_idp_initiated: bool = False
    userinfo: Literal["auto", "always"] | None = None
    mapping: dict[str, Any] | None = None


class IdentityProviderPatch(Body):
    """A change to an upstream; what is not sent stays."""

    server_owned: ClassVar[frozenset[str]] = SERVER_OWNED - {"client_secret"}

    enabled: bool | None = None
    jit: bool | None = None
    display_name: OptionalText = None
    client_secret: SecretStr | None = None
    email_domains: list[Annotated[str, StringConstraints(max_length=253)]] | None = Field(default=None, max_length=50)
    link_claim: Annotated[str, StringConstraints(max_length=64)] | None = None
    mapping: dict[str, Any] | None = None
    metadata_xml: Annotated[str, StringConstraints(max_length=1_000_000)] | None = None
    metadata_url: Uri | None = None
    allow_idp_initiated: bool | None = None
    userinfo: Literal["auto", "always"] | None = None


# --- tenants -----------------------------------------------------------------------------------------
class TenantCreate(Body):
    """A new tenant (system administrators)."""

    slug: Annotated[str, StringConstraints(min_length=1, max_length=63)]
    name: OptionalText = None


class TenantPatch(Body):
    """A change to a tenant's settings."""

    name: Text | None = None
    access_token_alg: Literal["ES256", "RS256"] | None = None
    key_rotation_days: Annotated[int, Field(ge=1, le=3650)] | None = Field(
        default=None, description="rotate the signing keys this often (null: only on demand)"
    )
    audit_retention_days: Annotated[int, Field(ge=1, le=36500)] | Literal["default"] | None = Field(
        default=None,
        description="keep audit entries this long in the database, then archive them (null: forever; "
        '"default": the server\'s IDHUB_AUDIT__RETENTION_DAYS)',
    )


# --- access policies ---------------------------------------------------------------------------------
class PolicyCreate(Body):
    """A new access policy: a group (or, with ``machine``, the client itself) gets scopes at a client."""

    server_owned: ClassVar[frozenset[str]] = SERVER_OWNED - {"client_id"}

    client_id: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    group_id: Annotated[str, StringConstraints(max_length=64)] | None = None
    machine: bool = Field(default=False, description="the client's own policy for client_credentials")
    scope: Annotated[str, StringConstraints(min_length=1, max_length=2000)]


class PolicyPatch(Body):
    """New scopes for a policy (they replace the old ones)."""

    scope: Annotated[str, StringConstraints(min_length=1, max_length=2000)]
