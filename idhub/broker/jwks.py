"""Upstream signing keys (JWKS), cached per ``jwks_uri`` and refetched on an unknown ``kid`` at most once
per interval, so an attacker sending random key ids cannot make idhub hammer the upstream.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from joserfc.jwk import ECKey, KeySet, OKPKey, RSAKey

from idhub.broker.errors import UpstreamRefused, UpstreamUnavailable
from idhub.broker.fetch import Fetcher, FetchPolicy

log = logging.getLogger(__name__)

STALE_FOR = 3600.0  # seconds an expired set may still serve while the upstream cannot be reached
_KTY_FOR_ALG = {"RS": "RSA", "PS": "RSA", "ES": "EC", "Ed": "OKP"}
_KEY_TYPES: dict[str, Any] = {"RSA": RSAKey, "EC": ECKey, "OKP": OKPKey}
Key = RSAKey | ECKey | OKPKey


@dataclass(slots=True)
class _Entry:
    keys: list[tuple[dict[str, Any], Key]]
    fetched_at: float


class JwksCache:
    """The upstreams' published keys, by URI."""

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
        self._entries: dict[str, _Entry] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def key_set(self, jwks_uri: str, *, policy: FetchPolicy) -> KeySet:
        """Return the upstream's current signing keys."""
        entry = await self._entry(jwks_uri, policy=policy, refresh=False)
        return KeySet([key for _member, key in entry.keys])

    async def key_for(self, jwks_uri: str, kid: str | None, alg: str, *, policy: FetchPolicy) -> Key:
        """Return the key that verifies a JWS whose header names ``kid`` and ``alg`` (RFC 7517 §4)."""
        entry = await self._entry(jwks_uri, policy=policy, refresh=False)
        found = _select(entry, kid, alg)
        if found is None and kid is not None and self.clock() - entry.fetched_at >= self.refetch_interval:
            entry = await self._entry(jwks_uri, policy=policy, refresh=True)  # rotated upstream: look once more
            found = _select(entry, kid, alg)
        if found is None:
            raise UpstreamRefused("unknown_key", f"no published key fits kid={str(kid)[:64]!r} alg={alg}")
        return found

    async def _entry(self, uri: str, *, policy: FetchPolicy, refresh: bool) -> _Entry:
        entry = self._entries.get(uri)
        if entry is not None and not refresh and self.clock() - entry.fetched_at < self.ttl:
            return entry
        lock = self._locks.setdefault(uri, asyncio.Lock())
        async with lock:  # concurrent callers share one fetch
            current = self._entries.get(uri)
            if current is not None and current is not entry:
                return current  # fetched while this caller waited
            try:
                document = await self.fetcher.get_json(uri, policy=policy)
            except UpstreamUnavailable:
                if entry is not None and self.clock() - entry.fetched_at < self.ttl + STALE_FOR:
                    log.warning("JWKS %s unreachable; using the keys fetched before", uri)
                    return entry
                raise
            fresh = _Entry(_parse(document), self.clock())
            self._entries[uri] = fresh
            return fresh


def _parse(document: dict[str, Any]) -> list[tuple[dict[str, Any], Key]]:
    """Return the usable signature keys of a JWK Set; malformed members are skipped (RFC 7517 §5)."""
    members = document.get("keys")
    if not isinstance(members, list):
        raise UpstreamRefused("bad_jwks", "the JWKS has no keys array")
    keys: list[tuple[dict[str, Any], Key]] = []
    for member in members:
        if not isinstance(member, dict):
            continue
        key_type = _KEY_TYPES.get(str(member.get("kty")))  # "oct" (a shared secret) is never a verification key
        if key_type is None or member.get("use", "sig") != "sig":
            continue
        public = {name: value for name, value in member.items() if name not in ("d", "p", "q", "dp", "dq", "qi")}
        try:
            keys.append((public, key_type.import_key(public)))
        except (ValueError, TypeError, KeyError) as exc:
            log.info("skipping a malformed JWK: %s", type(exc).__name__)
    return keys


def _select(entry: _Entry, kid: str | None, alg: str) -> Key | None:
    kty = _KTY_FOR_ALG.get(alg[:2])
    suitable = [
        key
        for member, key in entry.keys
        if member.get("kty") == kty and member.get("alg", alg) == alg and (kid is None or member.get("kid") == kid)
    ]
    if kid is None and len(suitable) > 1:
        raise UpstreamRefused("ambiguous_key", "the token names no kid and several keys fit")
    return suitable[0] if suitable else None
