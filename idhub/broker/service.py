"""Brokered sign-in: send the person to their upstream, then turn the answer into a directory user.

:meth:`Broker.start` seals what the callback needs into ``state`` and returns the upstream URL;
:meth:`Broker.finish` opens ``state`` (same browser, not expired, not used before), lets the upstream's
connector validate its answer, and links the identity to a directory user
(:func:`idhub.broker.linking.link_identity`) and applies the upstream's mapping rules to that user
(:func:`idhub.broker.sync.sync_user`). Every decision is an audit event (``signin.broker``,
``link.create``) with the upstream and, for a refusal, the reason. The page that called ``finish``
then resumes the interaction exactly as a password sign-in does
(:func:`idhub.oidc.interaction.resume_after_login`).
"""

from __future__ import annotations

import hashlib
import hmac
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncSession

from idhub.broker.connector import CallbackInput, Connector, Identity
from idhub.broker.connectors.oauth2 import OAuth2Config, OAuth2Connector
from idhub.broker.connectors.oidc import SCOPE_CLAIMS, OidcConfig, OidcConnector
from idhub.broker.connectors.saml import SamlConfig, SamlConnector, sp_metadata
from idhub.broker.errors import UpstreamRefused
from idhub.broker.fetch import Fetcher
from idhub.broker.jwks import JwksCache
from idhub.broker.linking import Linked, ProofNeeded, link_identity, link_proved
from idhub.broker.mapping import mapping_of
from idhub.broker.proof import consume_proof, new_proof, open_proof, seal_proof
from idhub.broker.provider_cache import ProviderCache
from idhub.broker.providers import ProviderInfo, Providers, open_secret
from idhub.broker.state import browser_binding, consume_state, new_pending, open_state, seal_state
from idhub.broker.sync import sync_user
from idhub.crypto.encryption import Sealer
from idhub.directory import Directory
from idhub.errors import DomainError, NotFound
from idhub.events import BrokeredSignIn
from idhub.storage.single_use import claim
from idhub.storage.uow import UnitOfWork


@dataclass(frozen=True, slots=True)
class LoginRedirect:
    """Where the browser goes upstream, and the sealed state the browser must carry itself (SAML only).

    SAML's ``RelayState`` may hold 80 bytes at most (Bindings §3.4.3, §3.5.3): too little for the sealed
    state, so it carries only the state's random id and the sealed state rides in a cookie next to it.
    """

    url: str
    saml_state: str | None = None


@dataclass(frozen=True, slots=True)
class Finished:
    """A brokered sign-in that got through: which interaction it resumes (None: IdP-initiated), as whom, and how."""

    interaction_id: str | None
    provider: ProviderInfo
    identity: Identity
    linked: Linked
    also: tuple[str, ...] = ()  # methods used here besides the upstream (``pwd`` when ownership was proved)

    @property
    def amr(self) -> list[str]:
        """Return the methods for the session: ``fed`` (RFC 8176 §2), any used here, and the upstream's."""
        return list(dict.fromkeys(["fed", *self.also, *self.identity.amr]))


@dataclass(frozen=True, slots=True)
class ProofRequired:
    """A brokered sign-in that needs its person to sign in with an existing account before it is linked."""

    interaction_id: str
    provider: ProviderInfo
    email: str | None
    reason: str
    token: str  # sealed :class:`idhub.broker.proof.PendingProof`, for the page's form


STANDARD_CLAIMS = frozenset({"sub"}).union(*SCOPE_CLAIMS.values())


class Broker:
    """The broker's shared parts: the outbound fetcher, the JWKS cache and the connectors built from them."""

    def __init__(self, *, sealer: Sealer, cookie_key: bytes, fetcher: Fetcher | None = None) -> None:
        self.sealer = sealer
        self.cookie_key = cookie_key
        self.fetcher = fetcher or Fetcher()
        self.jwks = JwksCache(self.fetcher)
        # Subscribed to IdentityProviderChanged in idhub.context: a change commits, this process forgets.
        self.provider_cache = ProviderCache()

    def providers(self, uow: UnitOfWork) -> Providers:
        """Return the provider commands acting in ``uow``."""
        return Providers(uow, sealer=self.sealer, fetcher=self.fetcher)

    def connector(self, provider: ProviderInfo) -> Connector:
        """Return the connector of ``provider`` (a registry by protocol: adding one touches only this map)."""
        build = _FACTORIES.get(provider.protocol)
        if build is None:
            raise UpstreamRefused("unsupported_provider", f"no connector for {provider.type}")
        return build(self, provider)

    async def start(
        self,
        session: AsyncSession,
        *,
        tenant_id: uuid.UUID,
        alias: str,
        interaction_id: str,
        browser_secret: str,
        callback_url: str,
    ) -> LoginRedirect:
        """Return where the browser goes to start this interaction's sign-in at ``alias`` (nothing is written)."""
        provider = await self._enabled(session, tenant_id, alias)
        pending = new_pending(
            tenant_id=tenant_id,
            provider_id=provider.id,
            interaction_id=interaction_id,
            browser=browser_binding(self.cookie_key, browser_secret),
            now=time.time(),
        )
        state = seal_state(self.sealer, pending)
        if provider.protocol == "saml":
            start = await self.connector(provider).login_url(
                state=pending.id, callback_url=provider.config["acs_url"], secrets=pending.secrets
            )
            return LoginRedirect(start.url, saml_state=state)
        start = await self.connector(provider).login_url(
            state=state, callback_url=callback_url, secrets=pending.secrets
        )
        return LoginRedirect(start.url)

    async def finish(
        self,
        uow: UnitOfWork,
        *,
        directory: Directory,
        tenant_id: uuid.UUID,
        alias: str,
        params: Mapping[str, str],
        browser_secret: str | None,
        callback_url: str,
        saml_state: str | None = None,
    ) -> Finished | ProofRequired:
        """Validate the upstream's answer for a pending sign-in and return the user it signs in as.

        ``saml_state`` is the sealed state a SAML sign-in's browser carried in its cookie. A refusal is
        audited (``signin.broker``, failure, with the reason code) and raised.
        """
        try:
            return await self._finish(
                uow, directory, tenant_id, alias, params, browser_secret, callback_url, saml_state
            )
        except DomainError as exc:
            reason = exc.reason if isinstance(exc, UpstreamRefused) else type(exc).__name__
            uow.raise_event(BrokeredSignIn(tenant_id=tenant_id, alias=alias, result="failure", reason=reason))
            raise

    async def _finish(
        self,
        uow: UnitOfWork,
        directory: Directory,
        tenant_id: uuid.UUID,
        alias: str,
        params: Mapping[str, str],
        browser_secret: str | None,
        callback_url: str,
        saml_state: str | None,
    ) -> Finished | ProofRequired:
        browser = browser_binding(self.cookie_key, browser_secret) if browser_secret else None
        provider = await self.enabled_provider(uow, tenant_id, alias)
        saml = provider.protocol == "saml"
        if saml and not saml_state and provider.config.get("allow_idp_initiated"):
            return await self._idp_initiated(uow, directory, provider, params)
        pending = open_state(self.sealer, saml_state if saml else params.get("state"), browser=browser, now=time.time())
        if pending.provider_id != str(provider.id) or pending.tenant_id != str(tenant_id):
            # The answer came to another upstream's callback than the one the sign-in went to (mix-up).
            raise UpstreamRefused("mix_up", "state was issued for another upstream")
        if saml:
            # RelayState must name the sign-in this browser started (Profiles §4.1.3.3 keeps it intact).
            relay = params.get("RelayState") or ""
            if not hmac.compare_digest(relay.encode(), pending.id.encode()):
                raise UpstreamRefused("bad_relay_state", "RelayState is not the one this browser's sign-in sent")
            callback_url = provider.config["acs_url"]
        answer = CallbackInput(
            params=params, nonce=pending.nonce, code_verifier=pending.code_verifier, request_id=pending.request_id
        )
        # The upstream is asked before anything is written here, so no lock or write transaction is held
        # while it answers (a slow upstream must not hold database resources); the state is used up
        # right after, before anything is believed.
        identity = await self.connector(provider).handle_callback(answer, callback_url=callback_url)
        await consume_state(uow, pending)
        await _claim_assertion(uow, provider, identity)
        try:
            linked = await link_identity(uow, directory=directory, provider=provider, identity=identity)
        except ProofNeeded as needed:
            proof = new_proof(
                tenant_id=tenant_id,
                provider_id=provider.id,
                interaction_id=pending.interaction_id,
                browser=pending.browser,
                identity=identity,
                reason=needed.reason,
                now=time.time(),
            )
            uow.raise_event(
                BrokeredSignIn(
                    tenant_id=tenant_id, alias=alias, result="failure", reason=f"proof_required:{needed.reason}"
                )
            )
            return ProofRequired(
                pending.interaction_id, provider, identity.email, needed.reason, seal_proof(self.sealer, proof)
            )
        await sync_user(uow, directory=directory, provider=provider, identity=identity, linked=linked)
        uow.raise_event(BrokeredSignIn(tenant_id=tenant_id, alias=alias, user_id=linked.user_id, how=linked.how))
        return Finished(pending.interaction_id, provider, identity, linked)

    async def prove(
        self,
        uow: UnitOfWork,
        *,
        tenant_id: uuid.UUID,
        alias: str,
        token: str | None,
        browser_secret: str | None,
        interaction_id: str,
        user_id: uuid.UUID,
    ) -> Finished:
        """Link the upstream identity of a proof token to ``user_id``, who has just signed in with a password.

        The caller has checked the password; this checks the token (same browser, not expired, used
        once, issued for this upstream) and links. A refusal is audited and raised.
        """
        try:
            browser = browser_binding(self.cookie_key, browser_secret) if browser_secret else None
            proof = open_proof(self.sealer, token, browser=browser, now=time.time())
            provider = await self.enabled_provider(uow, tenant_id, alias)
            if proof.provider_id != str(provider.id) or proof.tenant_id != str(tenant_id):
                raise UpstreamRefused("mix_up", "proof token was issued for another upstream")
            if proof.interaction_id != interaction_id:
                raise UpstreamRefused("bad_proof", "proof token was issued for another sign-in")
            await consume_proof(uow, proof)
            identity = proof.identity()
            # No mapping sync here: the token carries only what linking needs; the next sign-in through
            # this link brings the full claims and syncs them.
            linked = await link_proved(uow, provider=provider, identity=identity, user_id=user_id)
        except DomainError as exc:
            reason = exc.reason if isinstance(exc, UpstreamRefused) else type(exc).__name__
            uow.raise_event(BrokeredSignIn(tenant_id=tenant_id, alias=alias, result="failure", reason=reason))
            raise
        uow.raise_event(BrokeredSignIn(tenant_id=tenant_id, alias=alias, user_id=linked.user_id, how=linked.how))
        return Finished(proof.interaction_id, provider, identity, linked, also=("pwd",))

    async def _idp_initiated(
        self, uow: UnitOfWork, directory: Directory, provider: ProviderInfo, params: Mapping[str, str]
    ) -> Finished:
        """Accept an unsolicited SAML Response (Profiles §4.1.5), for upstreams that allow it.

        With no request to answer, the assertion replay cache is the only single-use guard; RelayState
        is never followed (it would be an open redirect). The person lands on their account page.
        """
        answer = CallbackInput(params=params)
        identity = await self.connector(provider).handle_callback(answer, callback_url=provider.config["acs_url"])
        await _claim_assertion(uow, provider, identity)
        linked = await link_identity(uow, directory=directory, provider=provider, identity=identity)
        await sync_user(uow, directory=directory, provider=provider, identity=identity, linked=linked)
        uow.raise_event(
            BrokeredSignIn(tenant_id=provider.tenant_id, alias=provider.alias, user_id=linked.user_id, how=linked.how)
        )
        return Finished(None, provider, identity, linked)

    async def saml_metadata(self, uow: UnitOfWork, tenant_id: uuid.UUID, alias: str) -> bytes:
        """Return the SP metadata of the enabled SAML upstream ``alias`` (SAML Metadata §2.4.4)."""
        provider = await self.enabled_provider(uow, tenant_id, alias)
        if provider.protocol != "saml":
            raise NotFound("no SAML identity provider with this alias")
        return sp_metadata(_saml_config(self, provider))

    async def enabled_provider(self, uow: UnitOfWork, tenant_id: uuid.UUID, alias: str) -> ProviderInfo:
        """Return the enabled upstream ``alias`` or raise :class:`NotFound` (read through the provider cache)."""
        return await self._enabled(uow.session, tenant_id, alias)

    async def _enabled(self, session: AsyncSession, tenant_id: uuid.UUID, alias: str) -> ProviderInfo:
        provider = await self.provider_cache.get(session, tenant_id, alias)
        if provider is None or not provider.enabled:
            raise NotFound("no identity provider with this alias")
        return provider

    async def close(self) -> None:
        """Close outbound connections."""
        await self.fetcher.aclose()


def _oidc(broker: Broker, provider: ProviderInfo) -> Connector:
    config = provider.config
    return OidcConnector(
        OidcConfig(
            issuer=config["issuer"],
            client_id=config["client_id"],
            client_secret=open_secret(broker.sealer, provider),
            authorization_endpoint=config["authorization_endpoint"],
            token_endpoint=config["token_endpoint"],
            jwks_uri=config["jwks_uri"],
            userinfo_endpoint=config.get("userinfo_endpoint"),
            scopes=tuple(config.get("scopes") or ("openid", "email", "profile")),
            token_auth_method=config.get("token_auth_method", "client_secret_basic"),
            iss_parameter_supported=bool(config.get("iss_parameter_supported")),
            email_verified_claim=bool(config.get("email_verified_claim", True)),
            hosted_domain_claim=config.get("hosted_domain_claim"),
            own_domains=tuple(config.get("own_domains") or ()),
            policy=provider.policy,
            wanted_claims=_wanted_claims(provider),
            userinfo_always=config.get("userinfo") == "always",
        ),
        fetcher=broker.fetcher,
        jwks=broker.jwks,
    )


def _wanted_claims(provider: ProviderInfo) -> frozenset[str]:
    """Return the non-standard claims idhub reads from ``provider`` (its mapping rules and its link claim)."""
    names = set(mapping_of(provider.config).claim_names())
    if link_claim := provider.config.get("link_claim"):
        names.add(link_claim)
    return frozenset(names - STANDARD_CLAIMS)


async def _claim_assertion(uow: UnitOfWork, provider: ProviderInfo, identity: Identity) -> None:
    """Use a SAML assertion up (Profiles §4.1.4.5): its ID is kept until the connector would refuse it anyway.

    The replay cache is the database's single-use table, so it holds across processes and restarts.
    """
    assertion_id = identity.claims.get("assertion_id")
    if not isinstance(assertion_id, str):
        return
    until = identity.claims.get("not_on_or_after")
    expires = datetime.fromtimestamp(until if isinstance(until, int) else time.time() + 3600, UTC)
    value = assertion_id if len(assertion_id) <= 200 else hashlib.sha256(assertion_id.encode()).hexdigest()
    won = await claim(
        uow.session,
        tenant_id=provider.tenant_id,
        namespace=f"saml_assertion:{provider.id}",
        value=value,
        expires_at=expires,
    )
    if not won:
        raise UpstreamRefused("assertion_replayed", "this assertion was used before")


def _saml_config(broker: Broker, provider: ProviderInfo) -> SamlConfig:
    config = provider.config
    return SamlConfig(
        sp_entity_id=config["sp_entity_id"],
        acs_url=config["acs_url"],
        idp_entity_id=config["idp_entity_id"],
        idp_sso_url=config["idp_sso_url"],
        idp_certificates=tuple(config["idp_certificates"]),
        sp_private_key_pem=open_secret(broker.sealer, provider),
        sp_certificate_pem=config.get("sp_certificate"),
        allow_idp_initiated=bool(config.get("allow_idp_initiated")),
    )


def _saml(broker: Broker, provider: ProviderInfo) -> Connector:
    return SamlConnector(_saml_config(broker, provider))


def _oauth2(broker: Broker, provider: ProviderInfo) -> Connector:
    config = provider.config
    secret = open_secret(broker.sealer, provider)
    if secret is None:
        raise UpstreamRefused("no_client_secret", f"the {provider.type} upstream has no client secret")
    return OAuth2Connector(
        OAuth2Config(
            network=provider.type,
            issuer=config["issuer"],
            client_id=config["client_id"],
            client_secret=secret,
            authorization_endpoint=config["authorization_endpoint"],
            token_endpoint=config["token_endpoint"],
            profile_endpoint=config["profile_endpoint"],
            emails_endpoint=config.get("emails_endpoint"),
            scopes=tuple(config.get("scopes") or ()),
            policy=provider.policy,
        ),
        fetcher=broker.fetcher,
    )


_FACTORIES = {"oidc": _oidc, "oauth2": _oauth2, "saml": _saml}
