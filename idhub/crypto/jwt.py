"""Sign and verify JWTs with joserfc, the one JOSE library of idhub (Authlib brings it too).

Only the algorithms in :data:`SIGNING_ALGS` are accepted anywhere; ``none`` and HMAC algorithms are
never in an allow-list, so an unsigned or re-signed token fails verification.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ec import ECDSA, EllipticCurvePrivateKey
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, KeySet, RSAKey
from joserfc.jws import JWSRegistry
from joserfc.util import urlsafe_b64encode

SIGNING_ALGS: tuple[str, ...] = ("ES256", "RS256")
# Algorithms accepted from clients for private_key_jwt (RFC 7523).
CLIENT_ASSERTION_ALGS: tuple[str, ...] = ("ES256", "ES384", "RS256", "RS384", "RS512", "PS256", "EdDSA")

SigningKeyType = ECKey | RSAKey


class InvalidJWT(Exception):
    """The token is malformed, unsigned, signed with a wrong key or algorithm, or of a wrong type."""


_header_cache: dict[tuple[str, str, str], bytes] = {}


def _header_segment(alg: str, kid: str, typ: str) -> bytes:
    key = (alg, kid, typ)
    segment = _header_cache.get(key)
    if segment is None:
        header = json.dumps({"alg": alg, "kid": kid, "typ": typ}, separators=(",", ":")).encode()
        segment = urlsafe_b64encode(header)
        if len(_header_cache) < 1024:
            _header_cache[key] = segment
    return segment


def sign(claims: dict[str, Any], key: SigningKeyType, *, alg: str, kid: str, typ: str = "JWT") -> str:
    """Return a compact JWS of ``claims``.

    The signature is computed by joserfc's algorithm implementation; only the compact form
    (``b64(header).b64(payload).b64(sig)``, RFC 7515 §7.1) is assembled here, with the header segment
    cached, because this runs once per issued token on the token endpoint's hot path.
    """
    if alg not in SIGNING_ALGS:
        raise ValueError(f"signing algorithm {alg} is not allowed")
    payload = urlsafe_b64encode(orjson.dumps(claims))
    signing_input = _header_segment(alg, kid, typ) + b"." + payload
    if alg == "ES256" and isinstance(key, ECKey):
        signature = _sign_es256(signing_input, key)
    else:
        signature = JWSRegistry.algorithms[alg].sign(signing_input, key)
    return (signing_input + b"." + urlsafe_b64encode(signature)).decode()


_ECDSA_SHA256 = ECDSA(hashes.SHA256())


# joserfc's ``ECKey.private_key`` property re-derives the cryptography object (with ABC isinstance
# checks) on every access; the hot path remembers it per key object (few keys: one per tenant and state).
_ec_private_keys: dict[int, tuple[ECKey, EllipticCurvePrivateKey]] = {}


def _ec_private_key(key: ECKey) -> EllipticCurvePrivateKey:
    entry = _ec_private_keys.get(id(key))
    if entry is None or entry[0] is not key:
        private = key.private_key
        if not isinstance(private, EllipticCurvePrivateKey):
            raise ValueError("an ES256 signing key must be a private EC key")
        if len(_ec_private_keys) >= 1024:
            _ec_private_keys.clear()
        entry = _ec_private_keys[id(key)] = (key, private)
    return entry[1]


def _sign_es256(signing_input: bytes, key: ECKey) -> bytes:
    """Sign with ECDSA P-256/SHA-256 and encode ``R || S`` as 32-byte big-endian halves (RFC 7518 §3.4).

    joserfc's ES256 implementation does the same but looks the key up and builds its objects on every
    call; access tokens are signed thousands of times a second, so the hot path calls the primitive
    directly. Verification always goes through joserfc (tests check that joserfc verifies these).
    """
    der = _ec_private_key(key).sign(signing_input, _ECDSA_SHA256)
    r, s = decode_dss_signature(der)
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def peek_header(token: str) -> dict[str, Any]:
    """Return the protected header without verifying anything (used only to pick a key)."""
    try:
        obj = jws.extract_compact(token.encode())
    except (JoseError, ValueError, TypeError) as exc:
        raise InvalidJWT("malformed token") from exc
    return dict(obj.protected)


def verify(
    token: str,
    keys: KeySet,
    *,
    algorithms: tuple[str, ...] = SIGNING_ALGS,
    typ: str | None = None,
) -> dict[str, Any]:
    """Verify the signature of ``token`` against ``keys`` and return its claims.

    The key is chosen by ``kid`` (or tried in turn when absent); ``typ``, when given, must match
    (RFC 8725 §3.11, explicit typing). Time-based claims are checked by the caller.
    """
    if len(token) > 16384:
        raise InvalidJWT("token too large")
    try:
        obj = jws.deserialize_compact(token, keys, algorithms=list(algorithms))
    except (JoseError, ValueError, TypeError, KeyError) as exc:
        raise InvalidJWT("signature or format invalid") from exc
    header = obj.protected
    if header.get("alg") not in algorithms:
        raise InvalidJWT("algorithm not allowed")
    if typ is not None and str(header.get("typ", "")).lower() not in {typ.lower(), "application/" + typ.lower()}:
        raise InvalidJWT("unexpected token type")
    try:
        claims = json.loads(obj.payload)
    except ValueError as exc:
        raise InvalidJWT("payload is not JSON") from exc
    if not isinstance(claims, dict):
        raise InvalidJWT("payload is not a JSON object")
    return claims
