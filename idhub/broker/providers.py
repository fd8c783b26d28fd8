"""A tenant's upstream identity providers: add, list, show, change and remove them.

Every surface (the CLI today, the admin API later) calls these commands. The client secret of an OIDC
or OAuth upstream and the SAML SP private key are sealed with the master key before they are stored;
what is not secret lives in ``config``. An OIDC upstream is configured from its discovery document,
whose issuer must be exactly the one the operator named.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from idhub.broker.connectors.oidc import discover
from idhub.broker.connectors.saml import new_sp_key, parse_idp_metadata
from idhub.broker.errors import UpstreamConfigError
from idhub.broker.fetch import Fetcher, FetchPolicy, check_url
from idhub.broker.mapping import load_mapping
from idhub.crypto.encryption import Sealer
from idhub.errors import Conflict, Invalid, NotFound
from idhub.events import IdentityProviderChanged, IdentityProviderCreated, IdentityProviderDeleted
from idhub.storage.base import utcnow
from idhub.storage.models import IdentityProvider, UserSession
from idhub.storage.models.broker import FederatedIdentity
from idhub.storage.uow import UnitOfWork

ALIAS = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
DOMAIN = re.compile(r"(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}")
Protocol = Literal["oidc", "oauth2", "saml"]


@dataclass(frozen=True, slots=True)
class Preset:
    """What a provider type is: its protocol and what is known about it in advance."""

    protocol: Protocol
    display_name: str
    issuer: str | None = None  # fixed for the social networks that have one issuer
    scopes: tuple[str, ...] = ("openid", "email", "profile")
    # Whether the upstream's ``email_verified`` claim may be believed. Microsoft's ``email`` claim is
    # whatever the account's owner typed (the "nOAuth" takeover class): never a verification.
    email_verified_claim: bool = True
    endpoints: dict[str, str] = field(default_factory=dict)
    hosted_domain_claim: str | None = None  # see OidcConfig.hosted_domain_claim
    own_domains: tuple[str, ...] = ()


PRESETS: dict[str, Preset] = {
    "oidc": Preset("oidc", "OpenID Connect"),
    "google": Preset(
        "oidc",
        "Google",
        issuer="https://accounts.google.com",
        hosted_domain_claim="hd",
        own_domains=("gmail.com", "googlemail.com"),
    ),
    "microsoft": Preset("oidc", "Microsoft", email_verified_claim=False),
    "linkedin": Preset("oidc", "LinkedIn", issuer="https://www.linkedin.com/oauth"),
    "saml": Preset("saml", "SAML 2.0", scopes=()),
    # OAuth 2 plus a profile API (idhub.broker.connectors.oauth2): no discovery, so the endpoints are
    # known here. The issuer is ours to fix: with the network's account id, it is the link key.
    "github": Preset(
        "oauth2",
        "GitHub",
        issuer="https://github.com",
        scopes=("read:user", "user:email"),
        endpoints={
            "authorization_endpoint": "https://github.com/login/oauth/authorize",
            "token_endpoint": "https://github.com/login/oauth/access_token",
            "profile_endpoint": "https://api.github.com/user",
            "emails_endpoint": "https://api.github.com/user/emails",
        },
    ),
    "facebook": Preset(
        "oauth2",
        "Facebook",
        issuer="https://www.facebook.com",
        scopes=("email", "public_profile"),
        endpoints={
            "authorization_endpoint": "https://www.facebook.com/v19.0/dialog/oauth",
            "token_endpoint": "https://graph.facebook.com/v19.0/oauth/access_token",
            "profile_endpoint": "https://graph.facebook.com/v19.0/me?fields=id,name,email,first_name,last_name",
        },
    ),
}


@dataclass(frozen=True, slots=True)
class ProviderInfo:
    """An upstream provider as the other services see it (the secret stays sealed)."""

    id: uuid.UUID
    tenant_id: uuid.UUID
    alias: str
    type: str
    display_name: str
    enabled: bool
    internal: bool
    jit: bool
    config: dict[str, Any]
    secret_sealed: bytes | None

    @property
    def protocol(self) -> Protocol:
        """Return the protocol its connector speaks."""
        return PRESETS[self.type].protocol

    @property
    def policy(self) -> FetchPolicy:
        """Return the outbound fetch policy (private addresses only for ``--internal`` upstreams)."""
        return FetchPolicy(internal=self.internal)

    @property
    def email_domains(self) -> tuple[str, ...]:
        """Return the email domains this upstream is authoritative for (linking and home-realm discovery)."""
        return tuple(self.config.get("email_domains", ()))

    def urls(self, issuer: str) -> dict[str, str]:
        """Return the URLs to register upstream: the OIDC/OAuth callback, or SAML's ACS and metadata."""
        base = f"{issuer}/broker/{self.alias}"
        if self.protocol == "saml":
            metadata = self.config.get("sp_entity_id") or f"{base}/saml/metadata"
            acs = self.config.get("acs_url") or f"{base}/saml/acs"
            return {"acs_url": acs, "metadata_url": metadata, "entity_id": metadata}
        return {"callback_url": f"{base}/callback"}

    def describe(self, issuer: str) -> dict[str, Any]:
        """Return what operators see: everything but the secret."""
        return {
            "id": str(self.id),
            "alias": self.alias,
            "type": self.type,
            "display_name": self.display_name,
            "enabled": self.enabled,
            "internal": self.internal,
            "jit": self.jit,
            "has_secret": self.secret_sealed is not None,
            "config": {k: v for k, v in self.config.items() if k != "sp_certificate"},
            **self.urls(issuer),
        }


def info_of(row: IdentityProvider) -> ProviderInfo:
    """Return the service view of a stored provider."""
    return ProviderInfo(
        id=row.id,
        tenant_id=row.tenant_id,
        alias=row.alias,
        type=row.type,
        display_name=row.display_name,
        enabled=row.enabled,
        internal=row.internal,
        jit=row.jit,
        config=dict(row.config or {}),
        secret_sealed=row.secret_encrypted,
    )


def secret_context(provider_id: uuid.UUID) -> str:
    """Return the sealing context of one provider's secret (a sealed secret opens only for its provider)."""
    return f"idp-secret:{provider_id}"


def open_secret(sealer: Sealer, provider: ProviderInfo) -> str | None:
    """Return the provider's client secret or SP private key, unsealed."""
    if provider.secret_sealed is None:
        return None
    return sealer.open(provider.secret_sealed, context=secret_context(provider.id)).decode()


def check_alias(alias: str) -> str:
    """Return ``alias`` if it is usable in URLs: lowercase letters, digits, ``-`` and ``_``."""
    if not ALIAS.fullmatch(alias):
        raise Invalid("an alias is 1 to 64 lowercase letters, digits, '-' or '_', starting with a letter or digit")
    return alias


def check_domains(domains: Sequence[str]) -> list[str]:
    """Return the email domains, lower-cased, each a valid DNS name."""
    checked = []
    for domain in domains:
        value = domain.strip().lower()
        if not DOMAIN.fullmatch(value):
            raise Invalid(f"not an email domain: {domain[:100]!r}")
        checked.append(value)
    return list(dict.fromkeys(checked))


@dataclass(frozen=True, slots=True)
class NewProvider:
    """What an operator gives to add an upstream."""

    alias: str
    type: str
    issuer: str | None = None
    client_id: str | None = None
    client_secret: str | None = None
    metadata_xml: bytes | None = None
    metadata_url: str | None = None
    internal: bool = False
    jit: bool = True
    display_name: str | None = None
    email_domains: tuple[str, ...] = ()
    link_claim: str | None = None  # upstream claim matched against the directory's externalId
    tenant_issuer: str | None = None  # fixes a SAML SP's entity ID and ACS URL at creation
    allow_idp_initiated: bool = False  # SAML: accept unsolicited Responses (off unless asked for)
    userinfo: str | None = None  # OIDC: "auto" (read only when the ID token lacks claims) or "always"
    mapping: str | bytes | None = None  # mapping rules as JSON (idhub.broker.mapping), checked before saving
    # OAuth 2 networks: endpoints that replace the preset's, for a stand-in on loopback (``internal`` only).
    endpoints: dict[str, str] | None = None


USERINFO_MODES = ("auto", "always")


def _userinfo_mode(mode: str, protocol: str) -> str:
    """Check a UserInfo mode: ``auto`` reads UserInfo only when the ID token lacks claims idhub reads."""
    if protocol != "oidc":
        raise Invalid("the UserInfo mode is a setting of OpenID Connect upstreams")
    if mode not in USERINFO_MODES:
        raise Invalid(f"userinfo is one of {', '.join(USERINFO_MODES)}")
    return mode


class Providers:
    """Commands on a tenant's upstream identity providers, acting in one unit of work."""

    def __init__(self, uow: UnitOfWork, *, sealer: Sealer, fetcher: Fetcher) -> None:
        self.uow = uow
        self.sealer = sealer
        self.fetcher = fetcher

    async def create(self, tenant_id: uuid.UUID, new: NewProvider) -> ProviderInfo:
        """Add an upstream; an OIDC one is checked against its discovery document first."""
        alias = check_alias(new.alias)
        mapping = load_mapping(new.mapping) if new.mapping is not None else None
        preset = PRESETS.get(new.type)
        if preset is None:
            raise Invalid(f"unknown provider type {new.type!r}; one of {', '.join(sorted(PRESETS))}")
        config: dict[str, Any] = {"email_domains": check_domains(new.email_domains)}
        if new.link_claim:
            config["link_claim"] = new.link_claim[:64]
        if mapping is not None:
            config["mapping"] = mapping.describe()
        provider_id = uuid.uuid4()
        secret: str | None
        if new.userinfo is not None:
            config["userinfo"] = _userinfo_mode(new.userinfo, preset.protocol)
        if preset.protocol == "oidc":
            config |= await self._oidc_config(new, preset)
            secret = new.client_secret
        elif preset.protocol == "oauth2":
            config |= self._oauth2_config(new, preset)
            secret = new.client_secret
        elif preset.protocol == "saml":
            config |= await self._saml_config(new)
            # The SP key decrypts assertions: sealed with the master key like a client secret.
            secret = config.pop("sp_private_key")
        else:
            raise Invalid(f"provider type {new.type!r} is not supported yet")
        if await self._find(tenant_id, alias) is not None:
            raise Conflict(f"an identity provider with alias {alias!r} exists")
        row = IdentityProvider(
            id=provider_id,
            tenant_id=tenant_id,
            alias=alias,
            type=new.type,
            display_name=(new.display_name or preset.display_name)[:200],
            internal=new.internal,
            jit=new.jit,
            config=config,
            secret_encrypted=None
            if secret is None
            else self.sealer.seal(secret.encode(), context=secret_context(provider_id)),
        )
        self.uow.session.add(row)
        await self.uow.session.flush()
        self.uow.raise_event(IdentityProviderCreated(tenant_id=tenant_id, provider_id=row.id, alias=alias))
        return info_of(row)

    async def _oidc_config(self, new: NewProvider, preset: Preset) -> dict[str, Any]:
        issuer = preset.issuer or new.issuer
        if not issuer:
            raise Invalid("--issuer is required for this provider type")
        if preset.issuer and new.issuer and new.issuer != preset.issuer:
            raise Invalid(f"the {new.type} issuer is {preset.issuer}")
        if not new.client_id:
            raise Invalid("--client-id is required for an OpenID Connect upstream")
        check_url(issuer, internal=new.internal)
        document = await discover(self.fetcher, issuer, policy=FetchPolicy(internal=new.internal))
        endpoints = {name: document.get(name) for name in ("authorization_endpoint", "token_endpoint", "jwks_uri")}
        userinfo = document.get("userinfo_endpoint")
        for url in (*endpoints.values(), userinfo):
            if url is not None:
                try:
                    check_url(str(url), internal=new.internal)
                except UpstreamConfigError as exc:
                    raise Invalid(f"the discovery document names a refused endpoint: {exc.detail}") from exc
        methods = document.get("token_endpoint_auth_methods_supported") or ["client_secret_basic"]
        return {
            "issuer": issuer,
            "client_id": new.client_id,
            **endpoints,
            "userinfo_endpoint": userinfo if isinstance(userinfo, str) else None,
            "scopes": list(preset.scopes),
            "token_auth_method": "client_secret_basic" if "client_secret_basic" in methods else "client_secret_post",
            "iss_parameter_supported": document.get("authorization_response_iss_parameter_supported") is True,
            "email_verified_claim": preset.email_verified_claim,
            "hosted_domain_claim": preset.hosted_domain_claim,
            "own_domains": list(preset.own_domains),
        }

    def _oauth2_config(self, new: NewProvider, preset: Preset) -> dict[str, Any]:
        """Return an OAuth 2 network's configuration: its preset endpoints, a stand-in's for internal tests.

        Nothing is fetched: these networks publish no discovery document. Endpoint overrides are for
        ``--internal`` stand-ins only: the identity's issuer stays the network's, so pointing a public
        upstream at another host (a GitHub Enterprise server, say) would let its account ids collide
        with the network's own under one link key.
        """
        if new.issuer and new.issuer != preset.issuer:
            raise Invalid(f"the {new.type} issuer is {preset.issuer}")
        if not new.client_id or not new.client_secret:
            raise Invalid(f"--client-id and --client-secret-stdin are required for a {preset.display_name} upstream")
        overrides = dict(new.endpoints or {})
        if overrides and not new.internal:
            raise Invalid("endpoint overrides are for internal (test) upstreams only")
        unknown = sorted(set(overrides) - set(preset.endpoints))
        if unknown:
            raise Invalid(f"unknown endpoint {unknown[0][:40]!r} for {new.type}")
        endpoints = {**preset.endpoints, **overrides}
        for url in endpoints.values():
            try:
                check_url(url, internal=new.internal)
            except UpstreamConfigError as exc:
                raise Invalid(f"refused endpoint: {exc.detail}") from exc
        return {"issuer": preset.issuer, "client_id": new.client_id, **endpoints, "scopes": list(preset.scopes)}

    async def _saml_config(self, new: NewProvider) -> dict[str, Any]:
        """Read the IdP's metadata (a file, or a URL fetched through the outbound guard) and make the SP's key."""
        if not new.tenant_issuer:
            raise Invalid("the tenant's issuer is needed to name the SAML service provider")
        if (new.metadata_xml is None) == (new.metadata_url is None):
            raise Invalid("a SAML upstream needs --metadata-file or --metadata-url (one of them)")
        entity_id, sso_url, certificates = await self._idp_metadata(new.metadata_xml, new.metadata_url, new.internal)
        base = f"{new.tenant_issuer}/broker/{new.alias}/saml"
        key_pem, certificate_pem = new_sp_key(f"{base}/metadata")
        return {
            "idp_entity_id": entity_id,
            "idp_sso_url": sso_url,
            "idp_certificates": list(certificates),
            "metadata_url": new.metadata_url,
            # Fixed at creation: the IdP trusts this entity ID and posts to this ACS URL, so they must
            # not move when the public URL of a deployment is changed later.
            "sp_entity_id": f"{base}/metadata",
            "acs_url": f"{base}/acs",
            "sp_certificate": certificate_pem,
            "allow_idp_initiated": new.allow_idp_initiated,
            "sp_private_key": key_pem,
        }

    async def _idp_metadata(
        self, xml: bytes | None, url: str | None, internal: bool
    ) -> tuple[str, str, tuple[str, ...]]:
        """Return the entity ID, SSO URL and signing certificates of IdP metadata given inline or by URL."""
        if url is not None:
            check_url(url, internal=internal)
            xml = await self.fetcher.get_bytes(url, policy=FetchPolicy(internal=internal))
        assert xml is not None
        try:
            entity_id, sso_url, certificates = parse_idp_metadata(xml)
            check_url(sso_url, internal=internal)
        except UpstreamConfigError as exc:
            raise Invalid(f"the IdP metadata is refused: {exc.detail}") from exc
        return entity_id, sso_url, certificates

    async def list(self, tenant_id: uuid.UUID) -> list[ProviderInfo]:
        """Return the tenant's upstreams, by alias."""
        rows = await self.uow.session.scalars(
            select(IdentityProvider).where(IdentityProvider.tenant_id == tenant_id).order_by(IdentityProvider.alias)
        )
        return [info_of(row) for row in rows]

    async def get(self, tenant_id: uuid.UUID, alias: str) -> ProviderInfo:
        """Return one upstream by alias, or raise :class:`NotFound`."""
        row = await self._find(tenant_id, alias)
        if row is None:
            raise NotFound("no identity provider with this alias")
        return info_of(row)

    async def update(
        self,
        tenant_id: uuid.UUID,
        alias: str,
        *,
        enabled: bool | None = None,
        jit: bool | None = None,
        display_name: str | None = None,
        client_secret: str | None = None,
        email_domains: Sequence[str] | None = None,
        link_claim: str | None = None,
        mapping: str | bytes | None = None,
        clear_mapping: bool = False,
        metadata_xml: bytes | None = None,
        metadata_url: str | None = None,
        allow_idp_initiated: bool | None = None,
        userinfo: str | None = None,
    ) -> ProviderInfo:
        """Change an upstream's settings; only what is given changes (``mapping`` is JSON mapping rules).

        New SAML metadata (a file, or a URL) replaces the IdP's SSO URL and signing certificates (a
        certificate rollover); it must name the same IdP, since the links made so far are its subjects.
        """
        if metadata_xml is not None and metadata_url is not None:
            raise Invalid("give --metadata-file or --metadata-url, not both")
        if mapping is not None and clear_mapping:
            raise Invalid("give a mapping or clear it, not both")
        rules = load_mapping(mapping) if mapping is not None else None
        row = await self._find(tenant_id, alias)
        if row is None:
            raise NotFound("no identity provider with this alias")
        changed: list[str] = []
        if enabled is not None and enabled != row.enabled:
            row.enabled, changed = enabled, [*changed, "enabled"]
        if jit is not None and jit != row.jit:
            row.jit, changed = jit, [*changed, "jit"]
        if display_name is not None:
            row.display_name, changed = display_name[:200], [*changed, "display_name"]
        if client_secret is not None:
            row.secret_encrypted = self.sealer.seal(client_secret.encode(), context=secret_context(row.id))
            changed.append("client_secret")
        config = dict(row.config or {})
        if email_domains is not None:
            config["email_domains"] = check_domains(email_domains)
            changed.append("email_domains")
        if link_claim is not None:
            if link_claim:
                config["link_claim"] = link_claim[:64]
            else:
                config.pop("link_claim", None)
            changed.append("link_claim")
        if rules is not None or (clear_mapping and "mapping" in config):
            if rules is not None:
                config["mapping"] = rules.describe()
            else:
                config.pop("mapping", None)
            changed.append("mapping")
        saml_change = metadata_xml is not None or metadata_url is not None or allow_idp_initiated is not None
        if saml_change and PRESETS[row.type].protocol != "saml":
            raise Invalid("metadata and IdP-initiated sign-in are settings of SAML upstreams")
        if metadata_xml is not None or metadata_url is not None:
            entity_id, sso_url, certificates = await self._idp_metadata(metadata_xml, metadata_url, row.internal)
            if entity_id != config.get("idp_entity_id"):
                raise Invalid("the metadata names another IdP; add it as a new upstream")
            config |= {"idp_sso_url": sso_url, "idp_certificates": list(certificates)}
            if metadata_url is not None:
                config["metadata_url"] = metadata_url
            changed.append("metadata")
        if allow_idp_initiated is not None and allow_idp_initiated != bool(config.get("allow_idp_initiated")):
            config["allow_idp_initiated"] = allow_idp_initiated
            changed.append("allow_idp_initiated")
        mode = _userinfo_mode(userinfo, PRESETS[row.type].protocol) if userinfo is not None else None
        if mode is not None and mode != config.get("userinfo", "auto"):
            config["userinfo"] = mode
            changed.append("userinfo")
        row.config = config
        row.updated_at = utcnow()
        await self.uow.session.flush()
        self.uow.raise_event(
            IdentityProviderChanged(tenant_id=tenant_id, provider_id=row.id, alias=row.alias, changed=tuple(changed))
        )
        return info_of(row)

    async def delete(self, tenant_id: uuid.UUID, alias: str) -> ProviderInfo:
        """Remove an upstream with its links; the sessions that came through it end now."""
        row = await self._find(tenant_id, alias)
        if row is None:
            raise NotFound("no identity provider with this alias")
        info = info_of(row)
        links = select(FederatedIdentity.id).where(FederatedIdentity.provider_id == row.id)
        session = self.uow.session
        await session.execute(
            update(UserSession)
            .where(UserSession.link_id.in_(links), UserSession.revoked_at.is_(None))
            .values(revoked_at=utcnow())
        )
        await session.execute(delete(FederatedIdentity).where(FederatedIdentity.provider_id == row.id))
        await session.delete(row)
        await session.flush()
        self.uow.raise_event(IdentityProviderDeleted(tenant_id=tenant_id, provider_id=info.id, alias=info.alias))
        return info

    async def _find(self, tenant_id: uuid.UUID, alias: str) -> IdentityProvider | None:
        return await self.uow.session.scalar(
            select(IdentityProvider).where(IdentityProvider.tenant_id == tenant_id, IdentityProvider.alias == alias)
        )


async def find_provider(session: AsyncSession, tenant_id: uuid.UUID, alias: str) -> ProviderInfo | None:
    """Return the enabled upstream ``alias`` of the tenant, or ``None``."""
    if not ALIAS.fullmatch(alias):
        return None
    row = await session.scalar(
        select(IdentityProvider).where(
            IdentityProvider.tenant_id == tenant_id, IdentityProvider.alias == alias, IdentityProvider.enabled.is_(True)
        )
    )
    return info_of(row) if row is not None else None
