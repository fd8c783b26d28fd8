"""Register clients and resolve them (with a short in-process cache for the token hot path)."""

from __future__ import annotations

import ipaddress
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from idhub.cache import RefreshingCache
from idhub.clients.redirects import check_jwks_uri, validate_client_uris
from idhub.crypto.jwt import SIGNING_ALGS
from idhub.crypto.secrets import SecretHasher, random_token
from idhub.directory.entitlements import Entitlement, load_machine_policy, machine_entitlement
from idhub.errors import Conflict, Invalid, NotFound
from idhub.events import ClientChanged, ClientCreated, ClientDeleted, ClientSecretRotated
from idhub.storage.base import utcnow
from idhub.storage.faults import FaultCounter, OutageLog, is_fault
from idhub.storage.models import Client, Grant, RefreshToken
from idhub.storage.uow import UnitOfWork
from idhub.tokens.revocation import record_revocation

GRANT_TYPES = ("authorization_code", "refresh_token", "client_credentials")
AUTH_METHODS = ("client_secret_basic", "client_secret_post", "private_key_jwt", "none")
DEFAULT_SCOPE = "openid profile email offline_access"
KNOWN_CLIENTS_LIMIT = 50_000  # clients remembered for stale-if-error (beyond it the memory starts over)
RETRY_PAUSE = 1.0  # seconds after a failed load during which loads serve stale data without trying

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ClientInfo:
    """Immutable snapshot of a client registration, shared between requests."""

    id: uuid.UUID
    tenant_id: uuid.UUID
    client_id: str
    name: str
    secret_hash: str | None
    token_endpoint_auth_method: str
    application_type: str
    redirect_uris: tuple[str, ...]
    post_logout_redirect_uris: tuple[str, ...]
    grant_types: frozenset[str]
    scopes: frozenset[str]
    resources: tuple[str, ...]
    access_token_alg: str | None
    id_token_alg: str
    jwks: dict[str, Any] | None
    jwks_uri: str | None
    first_party: bool
    backchannel_logout_uri: str | None
    enabled: bool
    # Access policies (idhub.directory.entitlements): whether it has any, and what its own tokens may carry.
    governed: bool = False
    machine_scopes: frozenset[str] = frozenset()

    @property
    def is_public(self) -> bool:
        """Public clients cannot keep a secret (RFC 6749 §2.1)."""
        return self.token_endpoint_auth_method == "none"

    @property
    def machine_entitlement(self) -> Entitlement:
        """Return what the client's own (client_credentials) tokens may carry."""
        return machine_entitlement(governed=self.governed, machine_scopes=self.machine_scopes)

    @classmethod
    def from_row(
        cls, row: Client, *, governed: bool = False, machine_scopes: frozenset[str] = frozenset()
    ) -> ClientInfo:
        """Snapshot a database row (with the summary of its access policies)."""
        return cls(
            id=row.id,
            tenant_id=row.tenant_id,
            client_id=row.client_id,
            name=row.name,
            secret_hash=row.secret_hash,
            token_endpoint_auth_method=row.token_endpoint_auth_method,
            application_type=row.application_type,
            redirect_uris=tuple(row.redirect_uris or ()),
            post_logout_redirect_uris=tuple(row.post_logout_redirect_uris or ()),
            grant_types=frozenset(row.grant_types or ()),
            scopes=frozenset((row.scope or "").split()),
            resources=tuple(row.resources or ()),
            access_token_alg=row.access_token_alg,
            id_token_alg=row.id_token_alg,
            jwks=row.jwks,
            jwks_uri=row.jwks_uri,
            first_party=row.first_party,
            backchannel_logout_uri=row.backchannel_logout_uri,
            enabled=row.enabled,
            governed=governed,
            machine_scopes=machine_scopes,
        )


def is_loopback_redirect(uri: str) -> bool:
    """Tell whether ``uri`` is an http loopback IP literal redirect (RFC 8252 §7.3)."""
    parts = urlsplit(uri)
    if parts.scheme != "http" or not parts.hostname:
        return False
    try:
        return ipaddress.ip_address(parts.hostname).is_loopback
    except ValueError:
        return False


def redirect_uri_matches(client: ClientInfo, uri: str) -> bool:
    """Match a requested redirect URI exactly against the registered ones.

    Exact string comparison (RFC 9700 §4.1.3); the only relaxation is the port of a loopback
    IP-literal redirect for native clients (RFC 8252 §7.3).
    """
    if uri in client.redirect_uris:
        return True
    if client.application_type != "native" or not is_loopback_redirect(uri):
        return False
    requested = urlsplit(uri)
    if requested.port is None:  # reading .port also refuses a malformed one (ValueError)
        return False
    for registered in client.redirect_uris:
        if not is_loopback_redirect(registered):
            continue
        reg = urlsplit(registered)
        if (reg.scheme, reg.hostname, reg.path, reg.query) == (
            requested.scheme,
            requested.hostname,
            requested.path,
            requested.query,
        ) and not requested.fragment:
            return True
    return False


async def create_client(
    uow: UnitOfWork,
    *,
    tenant_id: uuid.UUID,
    name: str,
    hasher: SecretHasher,
    redirect_uris: list[str] | None = None,
    grant_types: list[str] | None = None,
    scope: str | None = None,
    public: bool = False,
    token_endpoint_auth_method: str | None = None,
    post_logout_redirect_uris: list[str] | None = None,
    backchannel_logout_uri: str | None = None,
    resources: list[str] | None = None,
    access_token_alg: str | None = None,
    jwks: dict[str, Any] | None = None,
    jwks_uri: str | None = None,
    first_party: bool = False,
    application_type: str | None = None,
    client_id: str | None = None,
    allow_private_backchannel: bool = False,
    allow_private_jwks_uri: bool = False,
) -> tuple[Client, str | None]:
    """Register a client; return it and its secret (shown once, stored only as a keyed hash).

    Every URI goes through the one validator (:func:`idhub.clients.redirects.validate_client_uris`);
    ``allow_private_backchannel`` lets the back-channel logout URI name a loopback or private host.
    """
    redirect_uris = list(redirect_uris or [])
    if not name.strip() or len(name) > 200:
        raise Invalid("client name must be 1-200 characters")
    application_type = validate_client_uris(
        redirect_uris=redirect_uris,
        post_logout_redirect_uris=post_logout_redirect_uris or [],
        backchannel_logout_uri=backchannel_logout_uri,
        application_type=application_type,
        allow_private_backchannel=allow_private_backchannel,
    )
    if grant_types is None:
        grant_types = ["authorization_code", "refresh_token"] if redirect_uris else ["client_credentials"]
    for grant in grant_types:
        if grant not in GRANT_TYPES:
            raise Invalid(f"unsupported grant type {grant!r}")
    if "authorization_code" in grant_types and not redirect_uris:
        raise Invalid("the authorization_code grant needs at least one redirect URI")
    method = token_endpoint_auth_method or ("none" if public else "client_secret_basic")
    if method not in AUTH_METHODS:
        raise Invalid(f"unsupported token_endpoint_auth_method {method!r}")
    if public and method != "none":
        raise Invalid("a public client authenticates with 'none'")
    if method == "none" and "client_credentials" in grant_types:
        raise Invalid("a public client cannot use client_credentials")
    check_keys(method, jwks, jwks_uri, allow_private=allow_private_jwks_uri)
    if access_token_alg is not None and access_token_alg not in SIGNING_ALGS:
        raise Invalid(f"access_token_alg must be one of {', '.join(SIGNING_ALGS)}")
    secret = random_token(32) if method in ("client_secret_basic", "client_secret_post") else None
    client = Client(
        tenant_id=tenant_id,
        client_id=client_id or random_token(16),
        name=name.strip(),
        secret_hash=hasher.hash(secret) if secret else None,
        token_endpoint_auth_method=method,
        application_type=application_type,
        redirect_uris=redirect_uris,
        post_logout_redirect_uris=list(post_logout_redirect_uris or []),
        grant_types=list(grant_types),
        scope=" ".join(dict.fromkeys((scope if scope is not None else DEFAULT_SCOPE).split())),
        resources=list(resources or []),
        access_token_alg=access_token_alg,
        jwks=jwks,
        jwks_uri=jwks_uri,
        first_party=first_party,
        backchannel_logout_uri=backchannel_logout_uri,
    )
    session = uow.session
    session.add(client)
    try:
        async with session.begin_nested():
            await session.flush()
    except IntegrityError as exc:
        raise Conflict("client_id already exists") from exc
    uow.raise_event(ClientCreated(tenant_id=tenant_id, client_id=client.client_id, name=client.name))
    return client, secret


UPDATABLE = frozenset(
    {
        "name",
        "redirect_uris",
        "post_logout_redirect_uris",
        "backchannel_logout_uri",
        "grant_types",
        "scope",
        "resources",
        "access_token_alg",
        "jwks",
        "jwks_uri",
        "first_party",
        "enabled",
    }
)


def check_keys(method: str, jwks: dict[str, Any] | None, jwks_uri: str | None, *, allow_private: bool) -> None:
    """Check how a client publishes its keys: by value or by reference, never both (RFC 7591 §2)."""
    if jwks is not None and jwks_uri is not None:
        raise Invalid("give jwks or jwks_uri, not both (RFC 7591 §2)")
    if jwks is not None and (not isinstance(jwks.get("keys"), list) or not jwks["keys"]):
        raise Invalid("jwks must be a JWK Set with at least one key (RFC 7517 §5)")
    if jwks_uri is not None:
        check_jwks_uri(jwks_uri, allow_private=allow_private)
    if method == "private_key_jwt" and not (jwks or jwks_uri):
        raise Invalid("private_key_jwt needs the client's public keys (jwks or jwks_uri)")


def check_client(
    client: Client, *, allow_private_backchannel: bool = False, allow_private_jwks_uri: bool = False
) -> None:
    """Check a client's registration as a whole (the rules :func:`create_client` applies, after a change)."""
    if not client.name.strip() or len(client.name) > 200:
        raise Invalid("client name must be 1-200 characters")
    client.application_type = validate_client_uris(
        redirect_uris=list(client.redirect_uris or []),
        post_logout_redirect_uris=list(client.post_logout_redirect_uris or []),
        backchannel_logout_uri=client.backchannel_logout_uri,
        application_type=client.application_type,
        allow_private_backchannel=allow_private_backchannel,
    )
    grants = list(client.grant_types or [])
    for grant in grants:
        if grant not in GRANT_TYPES:
            raise Invalid(f"unsupported grant type {grant!r}")
    if "authorization_code" in grants and not client.redirect_uris:
        raise Invalid("the authorization_code grant needs at least one redirect URI")
    method = client.token_endpoint_auth_method
    if method == "none" and "client_credentials" in grants:
        raise Invalid("a public client cannot use client_credentials")
    check_keys(method, client.jwks, client.jwks_uri, allow_private=allow_private_jwks_uri)
    if client.access_token_alg is not None and client.access_token_alg not in SIGNING_ALGS:
        raise Invalid(f"access_token_alg must be one of {', '.join(SIGNING_ALGS)}")


async def get_client(uow: UnitOfWork, *, tenant_id: uuid.UUID, client_id: str) -> Client:
    """Return the tenant's client ``client_id`` (enabled or not), or raise :class:`NotFound`."""
    client = await uow.session.scalar(
        select(Client).where(Client.tenant_id == tenant_id, Client.client_id == client_id)
    )
    if client is None:
        raise NotFound("client not found")
    return client


async def update_client(
    uow: UnitOfWork,
    client: Client,
    changes: dict[str, Any],
    *,
    token_lifetime: int,
    allow_private_backchannel: bool = False,
    allow_private_jwks_uri: bool = False,
) -> Client:
    """Change a client's registration; the whole result is checked as at registration.

    Disabling a client revokes its grants and every token it holds (RFC 7009 §2.1 lets a server revoke
    related tokens); the change reaches every process's client cache at commit.
    """
    unknown = set(changes) - UPDATABLE
    if unknown:
        raise Invalid(f"cannot change {', '.join(sorted(unknown))}")
    was_enabled = client.enabled
    for name, value in changes.items():
        if name == "scope":
            value = " ".join(dict.fromkeys(str(value or "").split()))
        setattr(client, name, value)
    # A fetched URI that stays as it was keeps the allowance it was registered with.
    check_client(
        client,
        allow_private_backchannel=allow_private_backchannel or "backchannel_logout_uri" not in changes,
        allow_private_jwks_uri=allow_private_jwks_uri or "jwks_uri" not in changes,
    )
    client.updated_at = utcnow()
    await uow.session.flush()
    if was_enabled and not client.enabled:
        await _cut_off(uow, client, token_lifetime)
    uow.raise_event(ClientChanged(tenant_id=client.tenant_id, client_id=client.client_id))
    return client


async def rotate_client_secret(uow: UnitOfWork, client: Client, *, hasher: SecretHasher) -> str:
    """Give a confidential client a new secret; return it (shown once). The old one stops working at commit."""
    if client.token_endpoint_auth_method not in ("client_secret_basic", "client_secret_post"):
        raise Invalid("only a client that authenticates with a secret has one to rotate")
    secret = random_token(32)
    client.secret_hash = hasher.hash(secret)
    client.updated_at = utcnow()
    await uow.session.flush()
    uow.raise_event(ClientSecretRotated(tenant_id=client.tenant_id, client_id=client.client_id))
    return secret


async def delete_client(uow: UnitOfWork, client: Client, *, token_lifetime: int) -> None:
    """Remove a client with its grants and refresh tokens; its access tokens are refused from this commit on.

    ``token_lifetime`` (seconds) is how long the revocation must last: the longest access-token lifetime.
    """
    await _cut_off(uow, client, token_lifetime)
    await uow.session.execute(delete(Client).where(Client.id == client.id))
    uow.raise_event(ClientDeleted(tenant_id=client.tenant_id, client_id=client.client_id))


async def _cut_off(uow: UnitOfWork, client: Client, token_lifetime: int) -> None:
    """Revoke a client's grants and refresh tokens and, through the revocation state, its access tokens."""
    now = utcnow()
    session = uow.session
    for model in (Grant, RefreshToken):
        await session.execute(
            update(model)
            .where(model.client_id == client.id, model.revoked_at.is_(None))
            .values(revoked_at=now)
            .execution_options(synchronize_session=False)
        )
    await record_revocation(
        uow, tenant_id=client.tenant_id, kind="client", value=client.client_id, expires_in=token_lifetime
    )


class ClientCache:
    """Resolve ``(tenant, client_id)`` to a :class:`ClientInfo`, cached for ``ttl`` seconds.

    The token endpoint authenticates a client on every call; the cache keeps that off the database.
    Changes made in this process invalidate at once; other processes see them within about ``ttl``.
    When a reload fails because the database is down or too slow, the client as last loaded is served
    for up to ``stale_if_error`` seconds after that load (stale-if-error), so machine-to-machine traffic
    rides out a failover; past that, or for a client never loaded, the fault is the caller's 503.
    """

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        ttl: float = 5.0,
        *,
        stale_if_error: float = 60.0,
        faults: FaultCounter | None = None,
    ):
        self._sessionmaker = sessionmaker
        self._cache: RefreshingCache[tuple[uuid.UUID, str], ClientInfo | None] = RefreshingCache(self._load, ttl=ttl)
        self._stale_if_error = stale_if_error
        self._faults = faults
        self._outage = OutageLog(log, "loading clients from the database")
        self._failed_at = 0.0
        self._probing = False
        # The last successful load of each known client: (monotonic time, snapshot).
        self._known: dict[tuple[uuid.UUID, str], tuple[float, ClientInfo]] = {}

    def on_change(self, event: ClientChanged) -> None:
        """Drop a changed client once its change commits (the unit of work's consumer)."""
        self.invalidate(event.tenant_id, event.client_id)

    def invalidate(self, tenant_id: uuid.UUID | None = None, client_id: str | None = None) -> None:
        """Forget one client, a tenant's clients, or everything."""
        if tenant_id is None:
            self._cache.invalidate()
            self._known.clear()
            return
        if client_id is None:
            self._cache.invalidate(lambda key: key[0] == tenant_id)
            for key in [k for k in self._known if k[0] == tenant_id]:
                del self._known[key]
        else:
            self._cache.invalidate(lambda key: key == (tenant_id, client_id))
            self._known.pop((tenant_id, client_id), None)

    async def get(self, tenant_id: uuid.UUID, client_id: str) -> ClientInfo | None:
        """Return the enabled client or ``None``."""
        if not client_id or len(client_id) > 64:
            return None
        return await self._cache.get((tenant_id, client_id))

    async def _load(self, key: tuple[uuid.UUID, str]) -> ClientInfo | None:
        known = self._known.get(key)
        # While the database is down, one load at a time finds out whether it is back.
        waiting = self._probing or time.monotonic() - self._failed_at < RETRY_PAUSE
        if known is not None and self._outage.down and waiting and self._may_serve(known):
            return self._serve_stale(known)
        probing, self._probing = self._probing, self._outage.down
        try:
            async with self._sessionmaker() as session:
                row = await session.scalar(select(Client).where(Client.tenant_id == key[0], Client.client_id == key[1]))
                # Policy changes raise ClientChanged (this process drops the snapshot at once; others
                # within ``ttl``, as for any change to the registration).
                governed, machine_scopes = (
                    await load_machine_policy(session, row.id) if row is not None else (False, frozenset[str]())
                )
        except Exception as exc:
            if not is_fault(exc):
                raise
            self._failed_at = time.monotonic()
            self._outage.failed(exc, f"serving clients as last loaded for up to {self._stale_if_error:g} s")
            known = self._known.get(key)
            if known is None or not self._may_serve(known):
                raise
            return self._serve_stale(known)
        finally:
            self._probing = probing
        self._outage.recovered()
        info = (
            ClientInfo.from_row(row, governed=governed, machine_scopes=machine_scopes)
            if row is not None and row.enabled
            else None
        )
        if info is None:
            self._known.pop(key, None)
        else:
            if len(self._known) >= KNOWN_CLIENTS_LIMIT and key not in self._known:
                self._known.clear()
            self._known[key] = (time.monotonic(), info)
        return info

    def _may_serve(self, known: tuple[float, ClientInfo]) -> bool:
        """Tell whether a client loaded at ``known[0]`` may still stand in for a failed load."""
        return time.monotonic() - known[0] <= self._stale_if_error

    def _serve_stale(self, known: tuple[float, ClientInfo]) -> ClientInfo:
        if self._faults is not None:
            self._faults.count_fault("database", "stale_client")
        return known[1]
