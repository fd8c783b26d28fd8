"""Upstream signing keys (JWKS), cached per ``jwks_uri`` and refetched on an unknown ``kid`` at most once
per interval, so an attacker sending random key ids cannot make idhub hammer the upstream.

Concurrent callers needing the same URI share one fetch (one task per URI, awaited by all). When the
upstream cannot be reached, a set that expired less than :data:`STALE_FOR` ago keeps serving
(stale-if-error) with a warning in the log.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from joserfc.errors import JoseError
from joserfc.jwk import ECKey, KeySet, OKPKey, RSAKey

from idhub.broker.errors import UpstreamRefused, UpstreamUnavailable
from idhub.broker.fetch import Fetcher, FetchPolicy

log = logging.getLogger(__name__)

STALE_FOR = 3600.0  # seconds an expired set may still serve while the upstream cannot be reached
Key = RSAKey | ECKey | OKPKey  # never OctKey: a shared secret published in a JWKS verifies nothing
_KEY_TYPES: dict[str, type[RSAKey] | type[ECKey] | type[OKPKey]] = {"RSA": RSAKey, "EC": ECKey, "OKP": OKPKey}
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})

# RFC 7518 §3.1, RFC 8037 §3.1, RFC 8812 §3.2: the key type (and curve) each JWS algorithm verifies with.
_FIT: dict[str, tuple[str, frozenset[str] | None]] = {
    **{alg: ("RSA", None) for alg in ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")},
    "ES256": ("EC", frozenset({"P-256"})),
    "ES384": ("EC", frozenset({"P-384"})),
    "ES512": ("EC", frozenset({"P-521"})),
    "ES256K": ("EC", frozenset({"secp256k1"})),
    "EdDSA": ("OKP", frozenset({"Ed25519", "Ed448"})),
    "Ed25519": ("OKP", frozenset({"Ed25519"})),
    "Ed448": ("OKP", frozenset({"Ed448"})),
}


@dataclass(frozen=True, slots=True)
class _Entry:
    keys: tuple[tuple[dict[str, Any], Key], ...]  # (public members, imported key)
    fetched_at: float


class JwksCache:
    """The upstreams' published signing keys, by ``jwks_uri``."""

    def __init__(
        self,
        fetcher: Fetcher,
        *,
        ttl: float = 3600.0,
        refetch_interval: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.fetcher = fetcher
        self.ttl = ttl
        self.refetch_interval = refetch_interval
        self.clock = clock
        self._entries: dict[str, _Entry] = {}  # the last good set per URI
        self._attempted: dict[str, float] = {}  # when the last fetch per URI started, good or not
        self._inflight: dict[str, asyncio.Task[_Entry]] = {}

    async def key_set(self, jwks_uri: str, *, policy: FetchPolicy) -> KeySet:
        """Return the upstream's current signature keys (RSA, EC and OKP public keys only)."""
        entry = await self._current(jwks_uri, policy=policy)
        return KeySet([key for _members, key in entry.keys])

    async def key_for(self, jwks_uri: str, kid: str | None, alg: str, *, policy: FetchPolicy) -> Key:
        """Return the key that verifies a JWS whose header names ``kid`` and ``alg`` (RFC 7515 §4.1.4, RFC 7517 §4.5).

        An unknown ``kid`` may mean the upstream rotated its keys: the set is fetched again, but at most
        once per ``refetch_interval`` per URI. Raises ``UpstreamRefused`` with reason ``unknown_key`` (no
        key fits), ``ambiguous_key`` (no ``kid`` and several keys fit) or ``bad_jwks``; ``UpstreamUnavailable``
        when the set cannot be fetched and no usable copy is cached.
        """
        entry = await self._current(jwks_uri, policy=policy)
        found = _select(entry, kid, alg)
        if found is None and kid is not None and self._may_refetch(jwks_uri):
            entry = await self._fetch_shared(jwks_uri, policy=policy)
            found = _select(entry, kid, alg)
        if found is None:
            raise UpstreamRefused("unknown_key", f"no published key fits kid={str(kid)[:64]!r} alg={alg[:16]!r}")
        return found

    def _may_refetch(self, uri: str) -> bool:
        attempted = self._attempted.get(uri)
        return attempted is None or self.clock() - attempted >= self.refetch_interval

    async def _current(self, uri: str, *, policy: FetchPolicy) -> _Entry:
        """Return the cached set while fresh, else fetch; a set that just failed to refresh serves as is."""
        entry = self._entries.get(uri)
        if entry is not None:
            age = self.clock() - entry.fetched_at
            if age < self.ttl:
                return entry
            if age < self.ttl + STALE_FOR and not self._may_refetch(uri):
                return entry  # a refresh failed moments ago: do not retry on every token
        return await self._fetch_shared(uri, policy=policy)

    async def _fetch_shared(self, uri: str, *, policy: FetchPolicy) -> _Entry:
        """Fetch ``uri`` once for every concurrent caller (the first caller's policy applies)."""
        task = self._inflight.get(uri)
        if task is None:
            task = asyncio.create_task(self._fetch(uri, policy=policy), name=f"jwks {uri[:100]}")
            self._inflight[uri] = task
            task.add_done_callback(lambda done: self._settled(uri, done))
        # Shielded: one caller giving up (its own deadline) must not cancel the fetch the others await.
        return await asyncio.shield(task)

    def _settled(self, uri: str, task: asyncio.Task[_Entry]) -> None:
        if self._inflight.get(uri) is task:
            del self._inflight[uri]
        if not task.cancelled():
            task.exception()  # retrieved here, so a failure nobody awaited any more is not reported as lost

    async def _fetch(self, uri: str, *, policy: FetchPolicy) -> _Entry:
        self._attempted[uri] = self.clock()
        try:
            document = await self.fetcher.get_json(uri, policy=policy)
            fresh = _Entry(_parse(document), self.clock())
        except (UpstreamUnavailable, UpstreamRefused) as exc:
            stale = self._entries.get(uri)
            if stale is not None and self.clock() - stale.fetched_at < self.ttl + STALE_FOR:
                log.warning("JWKS %s could not be refreshed (%s); using the keys fetched before", uri, exc.internal)
                return stale
            raise
        self._entries[uri] = fresh
        return fresh


def _parse(document: dict[str, Any]) -> tuple[tuple[dict[str, Any], Key], ...]:
    """Return the public signature keys of a JWK Set (RFC 7517 §5); unusable members are skipped."""
    members = document.get("keys")
    if not isinstance(members, list):
        raise UpstreamRefused("bad_jwks", "the JWKS has no keys array")
    keys: list[tuple[dict[str, Any], Key]] = []
    for member in members:
        if not isinstance(member, dict):
            continue
        # "oct" has no entry here: a symmetric key in a public set is a shared secret, never a verifier.
        key_type = _KEY_TYPES.get(str(member.get("kty")))
        if key_type is None or member.get("use", "sig") != "sig":  # RFC 7517 §4.2
            continue
        ops = member.get("key_ops")
        if ops is not None and (not isinstance(ops, list) or "verify" not in ops):  # RFC 7517 §4.3
            continue
        public = {name: value for name, value in member.items() if name not in _PRIVATE_MEMBERS}
        try:
            keys.append((public, key_type.import_key(public)))
        except (JoseError, ValueError, TypeError, KeyError) as exc:
            log.info("skipping a malformed JWK: %s", type(exc).__name__)
    return tuple(keys)


def _select(entry: _Entry, kid: str | None, alg: str) -> Key | None:
    """Return the one key that fits ``kid`` and ``alg``; no ``kid`` and several fitting keys is refused."""
    fit = _FIT.get(alg)
    if fit is None:
        return None  # HS*, none, or an algorithm this broker does not verify with
    kty, curves = fit
    suitable = [
        key
        for members, key in entry.keys
        if members.get("kty") == kty
        and (curves is None or members.get("crv") in curves)
        and members.get("alg", alg) == alg  # RFC 7517 §4.4: a key bound to another algorithm is not this one's
        and (kid is None or members.get("kid") == kid)
    ]
    if len(suitable) > 1:
        # Without a kid (or with a kid published twice) the signature would be checked against a guess.
        raise UpstreamRefused("ambiguous_key", f"{len(suitable)} published keys fit kid={str(kid)[:64]!r} alg={alg}")
    return suitable[0] if suitable else None
