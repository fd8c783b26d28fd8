"""The JWKS cache: one fetch per URI per TTL, bounded refetch on unknown kids, strict key selection, stale-if-error.

Caching is about how often the fetcher is asked, so most tests count calls on a fetcher stand-in with a
hand-driven clock; one test goes through the real fetcher to a loopback server.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from joserfc.jwk import ECKey, OctKey, OKPKey, RSAKey

from idhub.broker.errors import UpstreamRefused, UpstreamUnavailable
from idhub.broker.fetch import Fetcher, FetchPolicy
from idhub.broker.jwks import STALE_FOR, JwksCache

URI = "https://idp.example/jwks"
POLICY = FetchPolicy()
TTL = 3600.0
INTERVAL = 60.0

# Throwaway test keys, generated once per module (RSA generation is the slow part).
RSA_1 = RSAKey.generate_key(2048, parameters={"kid": "rsa-1", "use": "sig", "alg": "RS256"})
RSA_2 = RSAKey.generate_key(2048, parameters={"kid": "rsa-2"})
EC_1 = ECKey.generate_key("P-256", parameters={"kid": "ec-1", "use": "sig"})
ED_1 = OKPKey.generate_key("Ed25519", parameters={"kid": "ed-1"})
X25519 = OKPKey.generate_key("X25519", parameters={"kid": "x-1"})
OCT = OctKey.generate_key(256, parameters={"kid": "hmac"})


def public(key: Any, **extra: Any) -> dict[str, Any]:
    return {**key.as_dict(private=False), **extra}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class StubFetcher(Fetcher):
    """Answer ``get_json`` with ``document`` (or fail), counting the calls; optionally slow."""

    def __init__(self, document: dict[str, Any]) -> None:
        super().__init__()
        self.document = document
        self.calls = 0
        self.delay = 0.0
        self.fail: Exception | None = None

    async def get_json(
        self, url: str, *, policy: FetchPolicy, headers: Mapping[str, str] | None = None
    ) -> dict[str, Any]:
        self.calls += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail is not None:
            raise self.fail
        return json.loads(json.dumps(self.document))


def make(document: dict[str, Any]) -> tuple[JwksCache, StubFetcher, Clock]:
    fetcher, clock = StubFetcher(document), Clock()
    return JwksCache(fetcher, ttl=TTL, refetch_interval=INTERVAL, clock=clock), fetcher, clock


def keys(*members: dict[str, Any]) -> dict[str, Any]:
    return {"keys": list(members)}


async def refused(reason: str, cache: JwksCache, kid: str | None, alg: str) -> None:
    with pytest.raises(UpstreamRefused) as caught:
        await cache.key_for(URI, kid, alg, policy=POLICY)
    assert caught.value.reason == reason, caught.value.internal


# --- caching --------------------------------------------------------------------------------------------


async def test_jwks_cache_hit_does_not_refetch() -> None:
    cache, fetcher, clock = make(keys(public(RSA_1), public(EC_1)))
    first = await cache.key_for(URI, "rsa-1", "RS256", policy=POLICY)
    clock.now += TTL - 1
    again = await cache.key_for(URI, "ec-1", "ES256", policy=POLICY)
    key_set = await cache.key_set(URI, policy=POLICY)
    assert fetcher.calls == 1
    assert first.kid == "rsa-1" and again.kid == "ec-1"
    assert sorted(str(key.kid) for key in key_set.keys) == ["ec-1", "rsa-1"]


async def test_jwks_cache_expired_refetches() -> None:
    cache, fetcher, clock = make(keys(public(RSA_1)))
    await cache.key_for(URI, "rsa-1", "RS256", policy=POLICY)
    clock.now += TTL
    await cache.key_for(URI, "rsa-1", "RS256", policy=POLICY)
    assert fetcher.calls == 2


async def test_jwks_cache_separate_per_uri() -> None:
    cache, fetcher, _clock = make(keys(public(RSA_1)))
    await cache.key_for(URI, "rsa-1", "RS256", policy=POLICY)
    await cache.key_for(URI + "2", "rsa-1", "RS256", policy=POLICY)
    assert fetcher.calls == 2


async def test_jwks_unknown_kid_refetches_once_per_interval() -> None:
    cache, fetcher, clock = make(keys(public(RSA_1)))
    await refused("unknown_key", cache, "random-1", "RS256")  # the first fetch just happened: no second
    assert fetcher.calls == 1
    clock.now += INTERVAL
    await refused("unknown_key", cache, "random-2", "RS256")  # may have rotated: look once more
    assert fetcher.calls == 2
    for n in range(20):  # an attacker's random kids within the interval cost nothing upstream
        clock.now += 1
        await refused("unknown_key", cache, f"random-{n + 3}", "RS256")
    assert fetcher.calls == 2
    clock.now += INTERVAL
    await refused("unknown_key", cache, "random-x", "RS256")
    assert fetcher.calls == 3


async def test_jwks_unknown_kid_after_rotation_found() -> None:
    cache, fetcher, clock = make(keys(public(RSA_1)))
    await cache.key_for(URI, "rsa-1", "RS256", policy=POLICY)
    fetcher.document = keys(public(RSA_1), public(RSA_2))
    clock.now += INTERVAL
    assert (await cache.key_for(URI, "rsa-2", "RS256", policy=POLICY)).kid == "rsa-2"
    assert fetcher.calls == 2


async def test_jwks_concurrent_callers_share_one_fetch() -> None:
    cache, fetcher, clock = make(keys(public(RSA_1)))
    fetcher.delay = 0.05
    found = await asyncio.gather(*(cache.key_for(URI, "rsa-1", "RS256", policy=POLICY) for _ in range(10)))
    assert fetcher.calls == 1
    assert {key.kid for key in found} == {"rsa-1"}
    clock.now += INTERVAL  # and concurrent unknown kids share the one refetch
    results = await asyncio.gather(
        *(cache.key_for(URI, f"new-{n}", "RS256", policy=POLICY) for n in range(10)), return_exceptions=True
    )
    assert fetcher.calls == 2
    assert all(isinstance(result, UpstreamRefused) for result in results)


async def test_jwks_concurrent_failure_shared() -> None:
    cache, fetcher, _clock = make(keys(public(RSA_1)))
    fetcher.delay, fetcher.fail = 0.05, UpstreamUnavailable("down")
    results = await asyncio.gather(
        *(cache.key_for(URI, "rsa-1", "RS256", policy=POLICY) for _ in range(5)), return_exceptions=True
    )
    assert fetcher.calls == 1
    assert all(isinstance(result, UpstreamUnavailable) for result in results)


async def test_jwks_one_caller_cancelled_others_served() -> None:
    cache, fetcher, _clock = make(keys(public(RSA_1)))
    fetcher.delay = 0.05
    impatient = asyncio.create_task(cache.key_for(URI, "rsa-1", "RS256", policy=POLICY))
    patient = asyncio.create_task(cache.key_for(URI, "rsa-1", "RS256", policy=POLICY))
    await asyncio.sleep(0.01)
    impatient.cancel()
    assert (await patient).kid == "rsa-1"
    assert fetcher.calls == 1


# --- stale-if-error -------------------------------------------------------------------------------------


async def test_jwks_stale_set_used_when_upstream_down(caplog: pytest.LogCaptureFixture) -> None:
    cache, fetcher, clock = make(keys(public(RSA_1)))
    await cache.key_for(URI, "rsa-1", "RS256", policy=POLICY)
    clock.now += TTL + 10
    fetcher.fail = UpstreamUnavailable("down")
    with caplog.at_level(logging.WARNING, logger="idhub.broker.jwks"):
        assert (await cache.key_for(URI, "rsa-1", "RS256", policy=POLICY)).kid == "rsa-1"
    assert fetcher.calls == 2
    assert any("could not be refreshed" in record.getMessage() for record in caplog.records)
    clock.now += 1  # a refresh just failed: no retry on every token while the interval lasts
    await cache.key_for(URI, "rsa-1", "RS256", policy=POLICY)
    assert fetcher.calls == 2
    clock.now += INTERVAL
    await cache.key_for(URI, "rsa-1", "RS256", policy=POLICY)
    assert fetcher.calls == 3


async def test_jwks_stale_set_used_when_upstream_answers_junk() -> None:
    cache, fetcher, clock = make(keys(public(RSA_1)))
    await cache.key_for(URI, "rsa-1", "RS256", policy=POLICY)
    clock.now += TTL
    fetcher.document = {"not": "a jwks"}
    assert (await cache.key_for(URI, "rsa-1", "RS256", policy=POLICY)).kid == "rsa-1"


async def test_jwks_stale_set_too_old_raises() -> None:
    cache, fetcher, clock = make(keys(public(RSA_1)))
    await cache.key_for(URI, "rsa-1", "RS256", policy=POLICY)
    clock.now += TTL + STALE_FOR
    fetcher.fail = UpstreamUnavailable("down")
    with pytest.raises(UpstreamUnavailable):
        await cache.key_for(URI, "rsa-1", "RS256", policy=POLICY)


async def test_jwks_unreachable_without_cache_raises() -> None:
    cache, fetcher, _clock = make(keys(public(RSA_1)))
    fetcher.fail = UpstreamUnavailable("down")
    with pytest.raises(UpstreamUnavailable):
        await cache.key_set(URI, policy=POLICY)
    fetcher.fail = None
    assert (await cache.key_for(URI, "rsa-1", "RS256", policy=POLICY)).kid == "rsa-1"


# --- key selection --------------------------------------------------------------------------------------


async def test_jwks_no_kid_single_suitable_key_selected() -> None:
    cache, _fetcher, _clock = make(keys(public(RSA_1), public(EC_1), public(ED_1)))
    assert (await cache.key_for(URI, None, "RS256", policy=POLICY)).kid == "rsa-1"
    assert (await cache.key_for(URI, None, "ES256", policy=POLICY)).kid == "ec-1"
    assert (await cache.key_for(URI, None, "EdDSA", policy=POLICY)).kid == "ed-1"


async def test_jwks_no_kid_two_keys_refused() -> None:
    cache, _fetcher, _clock = make(keys(public(RSA_1), public(RSA_2)))
    await refused("ambiguous_key", cache, None, "RS256")
    assert (await cache.key_for(URI, "rsa-2", "RS256", policy=POLICY)).kid == "rsa-2"


async def test_jwks_kid_published_twice_refused() -> None:
    cache, _fetcher, _clock = make(keys(public(RSA_1), public(RSA_2, kid="rsa-1")))
    await refused("ambiguous_key", cache, "rsa-1", "RS256")


async def test_jwks_oct_key_refused() -> None:
    cache, _fetcher, _clock = make(keys(public(OCT), public(RSA_1)))
    for alg in ("HS256", "RS256"):
        await refused("unknown_key", cache, "hmac", alg)
    await refused("unknown_key", cache, None, "HS256")
    assert [key.kid for key in (await cache.key_set(URI, policy=POLICY)).keys] == ["rsa-1"]


@pytest.mark.parametrize(
    ("kid", "alg"),
    [
        ("rsa-1", "PS256"),  # the key says RS256 only
        ("rsa-1", "RS384"),
        ("rsa-1", "ES256"),  # an RSA key for an EC algorithm
        ("ec-1", "RS256"),
        ("ec-1", "ES384"),  # P-256 for an algorithm on P-384
        ("ed-1", "ES256"),
        ("x-1", "EdDSA"),  # X25519 is for key agreement, not signatures
        ("enc-1", "RS256"),  # use: enc
        ("ops-1", "RS256"),  # key_ops without verify
        ("rsa-1", "none"),
    ],
)
async def test_jwks_alg_or_kty_mismatch_skipped(kid: str, alg: str) -> None:
    cache, _fetcher, _clock = make(
        keys(
            public(RSA_1),
            public(EC_1),
            public(ED_1),
            public(X25519),
            public(RSA_2, kid="enc-1", use="enc"),
            public(RSA_2, kid="ops-1", key_ops=["encrypt"]),
        )
    )
    await refused("unknown_key", cache, kid, alg)


async def test_jwks_mismatched_keys_skipped_without_kid() -> None:
    # An EC key and an RS512-only key do not count towards ambiguity for RS256.
    cache, _fetcher, _clock = make(keys(public(EC_1), public(RSA_2, alg="RS512"), public(RSA_1)))
    assert (await cache.key_for(URI, None, "RS256", policy=POLICY)).kid == "rsa-1"


@pytest.mark.parametrize("document", [{}, {"keys": "x"}, {"keys": {"kty": "RSA"}}, {"keys": None}])
async def test_jwks_malformed_set_refused(document: dict[str, Any]) -> None:
    cache, _fetcher, _clock = make(document)
    await refused("bad_jwks", cache, "rsa-1", "RS256")


async def test_jwks_malformed_members_skipped() -> None:
    cache, _fetcher, _clock = make(
        keys(
            "not an object",  # type: ignore[arg-type]
            {"kty": "RSA", "kid": "broken", "n": 123, "e": "AQAB"},
            {"kty": "RSA", "kid": "broken-2", "n": "!!", "e": "AQAB"},
            {"kty": "EC", "kid": "broken-3", "crv": "P-999", "x": "a", "y": "b"},
            {"kty": "RSA", "kid": "broken-4", "n": "AQAB", "e": "AQAB", "use": 5},
            {"kid": "no-kty"},
            public(RSA_1),
        )
    )
    assert (await cache.key_for(URI, None, "RS256", policy=POLICY)).kid == "rsa-1"


async def test_jwks_private_members_dropped() -> None:
    cache, _fetcher, _clock = make(keys(RSA_1.as_dict(private=True)))
    key = await cache.key_for(URI, "rsa-1", "RS256", policy=POLICY)
    assert not key.is_private


# --- through the real fetcher ---------------------------------------------------------------------------


class _JwksServer(ThreadingHTTPServer):
    daemon_threads = True
    hits = 0


class _JwksHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _JwksServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.server.hits += 1
        body = json.dumps(keys(public(RSA_1), public(OCT))).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def jwks_server() -> Iterator[_JwksServer]:
    server = _JwksServer(("127.0.0.1", 0), _JwksHandler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=1)


async def test_jwks_over_loopback_cached(jwks_server: _JwksServer) -> None:
    fetcher = Fetcher()
    try:
        cache = JwksCache(fetcher)
        uri = f"http://127.0.0.1:{jwks_server.server_address[1]}/jwks"
        policy = FetchPolicy(internal=True, timeout=2.0)
        for _ in range(3):
            assert (await cache.key_for(uri, "rsa-1", "RS256", policy=policy)).kid == "rsa-1"
        assert jwks_server.hits == 1
    finally:
        await fetcher.aclose()
