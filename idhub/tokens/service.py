"""Issue and validate the JWTs idhub signs: access tokens (RFC 9068) and ID tokens (OIDC Core §2)."""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import os
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from idhub.clients.service import ClientInfo
from idhub.crypto import jwt
from idhub.crypto.keys import KeyStore
from idhub.crypto.secrets import random_token
from idhub.crypto.signer import BatchSigner
from idhub.errors import Invalid, Unavailable
from idhub.settings import TokenSettings
from idhub.tenants.service import TenantInfo
from idhub.tokens.revocation import RevocationState

AT_TYP = "at+jwt"
# RSA signatures (~0.25 ms each) go to a small thread pool; ES256 ones to one batching thread.
OFFLOADED_ALGS = frozenset({"RS256"})
BATCHED_ALGS = frozenset({"ES256"})
CLOCK_SKEW = 30


class TokenInvalid(Invalid):
    """An access token is malformed, badly signed, expired, revoked or foreign; ``internal`` says which (logs only)."""

    def __init__(self, reason: str) -> None:
        super().__init__("the token is not valid", internal=reason)


class SigningUnavailable(Unavailable):
    """The tenant has no active key for the requested algorithm (an operator must fix it)."""


def left_half_hash(value: str) -> str:
    """Return ``at_hash``/``c_hash`` for SHA-256 based algorithms (OIDC Core §3.1.3.6)."""
    digest = hashlib.sha256(value.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest[: len(digest) // 2]).rstrip(b"=").decode()


class TokenService:
    """Sign access and ID tokens with the tenant's active keys; validate access tokens fast."""

    def __init__(
        self, *, keys: KeyStore, revocations: RevocationState, settings: TokenSettings, cache_size: int = 20000
    ) -> None:
        self.keys = keys
        self.revocations = revocations
        self.settings = settings
        self._verified: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._offloaded = OFFLOADED_ALGS
        self._batched = BATCHED_ALGS
        self._batch_signer = BatchSigner()
        self._executor = ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2), thread_name_prefix="idhub-sign")
        self._cache_size = cache_size

    async def _signing_key(self, tenant: TenantInfo, alg: str) -> tuple[jwt.SigningKeyType, str]:
        tenant_keys = await self.keys.get(tenant.id)
        key = tenant_keys.active(alg)
        if key is None:
            raise SigningUnavailable(
                "the server cannot sign tokens right now", internal=f"tenant {tenant.slug} has no active {alg} key"
            )
        return key.key, key.kid

    async def issue_access_token(
        self,
        *,
        tenant: TenantInfo,
        client: ClientInfo,
        subject: str,
        scope: str,
        audience: str | list[str],
        grant_id: str | None = None,
        auth_time: int | None = None,
        session_id: str | None = None,
        now: int | None = None,
    ) -> tuple[str, int]:
        """Return a signed access token (RFC 9068 §2.2) and its lifetime in seconds."""
        issued_at = int(time.time()) if now is None else now
        ttl = self.settings.access_token_ttl
        claims: dict[str, Any] = {
            "iss": tenant.issuer,
            "sub": subject,
            "aud": audience,
            "client_id": client.client_id,
            "scope": scope,
            "exp": issued_at + ttl,
            "iat": issued_at,
            "jti": random_token(16),
        }
        if auth_time is not None:
            claims["auth_time"] = auth_time
        if grant_id is not None:
            claims["gid"] = grant_id
        if session_id is not None:
            claims["sid"] = session_id
        alg = client.access_token_alg or tenant.access_token_alg
        key, kid = await self._signing_key(tenant, alg)
        return await self._sign(claims, key, alg=alg, kid=kid, typ=AT_TYP), ttl

    async def issue_id_token(
        self,
        *,
        tenant: TenantInfo,
        client: ClientInfo,
        subject: str,
        auth_time: int,
        nonce: str | None = None,
        amr: list[str] | None = None,
        acr: str | None = None,
        session_id: str | None = None,
        access_token: str | None = None,
        extra_claims: dict[str, Any] | None = None,
    ) -> str:
        """Return an ID token (OIDC Core §2, §3.1.3.6 ``at_hash``), signed with the client's ID token alg.

        ``amr`` (RFC 8176) and ``acr`` say how the user signed in; each is left out when unknown.
        """
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": tenant.issuer,
            "sub": subject,
            "aud": client.client_id,
            "azp": client.client_id,
            "exp": now + self.settings.id_token_ttl,
            "iat": now,
            "auth_time": auth_time,
        }
        if nonce is not None:
            claims["nonce"] = nonce
        if amr:
            claims["amr"] = list(amr)
        if acr:
            claims["acr"] = acr
        if session_id is not None:
            claims["sid"] = session_id
        if access_token is not None:
            claims["at_hash"] = left_half_hash(access_token)
        if extra_claims:
            for name, value in extra_claims.items():
                claims.setdefault(name, value)
        alg = client.id_token_alg or "RS256"
        key, kid = await self._signing_key(tenant, alg)
        return await self._sign(claims, key, alg=alg, kid=kid, typ="JWT")

    async def _sign(self, claims: dict[str, Any], key: jwt.SigningKeyType, *, alg: str, kid: str, typ: str) -> str:
        """Sign off the event loop.

        OpenSSL releases the GIL while it signs, so signing on other threads lets the loop serve
        other requests meanwhile: an RSA signature (about 0.25 ms) is worth a thread-pool hand-over
        per token; an ES256 one (about 21 µs) only when hand-overs are batched (:class:`BatchSigner`).
        """
        if alg in self._batched:
            return str(
                await self._batch_signer.run(functools.partial(jwt.sign, claims, key, alg=alg, kid=kid, typ=typ))
            )
        if alg in self._offloaded:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(
                self._executor, functools.partial(jwt.sign, claims, key, alg=alg, kid=kid, typ=typ)
            )
        return jwt.sign(claims, key, alg=alg, kid=kid, typ=typ)

    def close(self) -> None:
        """Stop the signing threads."""
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._batch_signer.close()

    async def verify_own_jwt(self, *, tenant: TenantInfo, token: str, typ: str | None) -> dict[str, Any]:
        """Verify a JWT this tenant signed (signature, allowed alg, issuer); no time checks."""
        tenant_keys = await self.keys.get(tenant.id)
        try:
            claims = jwt.verify(token, tenant_keys.verify_set, typ=typ)
        except jwt.InvalidJWT:
            # A key rotated in another process may be unknown here yet: reload once.
            tenant_keys = await self.keys.get(tenant.id, max_age=1.0)
            try:
                claims = jwt.verify(token, tenant_keys.verify_set, typ=typ)
            except jwt.InvalidJWT as exc:
                raise TokenInvalid(str(exc)) from exc
        if claims.get("iss") != tenant.issuer:
            raise TokenInvalid("token was issued by another issuer")
        return claims

    async def validate_access_token(self, *, tenant: TenantInfo, token: str) -> dict[str, Any]:
        """Return the claims of a live access token of this tenant or raise :class:`TokenInvalid`.

        Signatures are verified once per token and remembered (bounded LRU); expiry and revocation
        are checked on every call, so a revoked token is refused on the next request.
        """
        claims = self._verified.get(token)
        if claims is None:
            claims = await self.verify_own_jwt(tenant=tenant, token=token, typ=AT_TYP)
            for name in ("sub", "client_id", "exp", "iat", "jti"):
                if name not in claims:
                    raise TokenInvalid(f"access token lacks {name}")
            if not isinstance(claims["exp"], int | float) or not isinstance(claims["iat"], int | float):
                raise TokenInvalid("exp/iat must be numbers")
            self._verified[token] = claims
            if len(self._verified) > self._cache_size:
                self._verified.popitem(last=False)
        elif claims["iss"] != tenant.issuer:
            raise TokenInvalid("token was issued by another issuer")
        if claims["exp"] <= time.time():
            self._verified.pop(token, None)
            raise TokenInvalid("token expired")
        if self.revocations.is_revoked(tenant.key, claims):
            raise TokenInvalid("token revoked")
        return claims
