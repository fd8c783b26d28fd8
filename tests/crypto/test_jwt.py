"""JWT signing and verification with an algorithm allow-list (RFC 8725)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from joserfc.jwk import ECKey, KeySet, RSAKey
from joserfc.jws import JWSRegistry

from idhub.crypto import jwt


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64json(value: Any) -> str:
    return _b64(json.dumps(value, separators=(",", ":")).encode())


@pytest.fixture(scope="module")
def ec_key() -> ECKey:
    return ECKey.generate_key("P-256", private=True)


@pytest.fixture(scope="module")
def rsa_key() -> RSAKey:
    return RSAKey.generate_key(2048, private=True)


def _keyset(key: ECKey | RSAKey, kid: str, alg: str) -> KeySet:
    public = key.as_dict(private=False)
    public.update(kid=kid, alg=alg, use="sig")
    return KeySet.import_key_set({"keys": [public]})


CLAIMS = {"iss": "https://idp.example/tenants/a", "sub": "u1", "iat": 1700000000, "exp": 1700000600}


@pytest.mark.parametrize("alg", ["ES256", "RS256"])
def test_sign_then_verify_allowed_alg_returns_claims(alg: str, ec_key: ECKey, rsa_key: RSAKey) -> None:
    key = ec_key if alg == "ES256" else rsa_key
    token = jwt.sign(CLAIMS, key, alg=alg, kid="k1", typ="at+jwt")
    assert jwt.peek_header(token) == {"alg": alg, "kid": "k1", "typ": "at+jwt"}
    assert jwt.verify(token, _keyset(key, "k1", alg), typ="at+jwt") == CLAIMS


def test_sign_es256_signature_verifies_with_cryptography(ec_key: ECKey) -> None:
    token = jwt.sign(CLAIMS, ec_key, alg="ES256", kid="k1")
    header, payload, signature = token.split(".")
    raw = base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4))
    assert len(raw) == 64  # RFC 7518 §3.4: R || S, not DER
    der = utils.encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    public = load_pem_public_key(ec_key.as_pem(private=False))
    assert isinstance(public, ec.EllipticCurvePublicKey)
    public.verify(der, f"{header}.{payload}".encode(), ec.ECDSA(hashes.SHA256()))


@pytest.mark.parametrize("alg", ["none", "HS256", "ES512", "PS256"])
def test_sign_alg_not_allowed_value_error(alg: str, ec_key: ECKey) -> None:
    with pytest.raises(ValueError):
        jwt.sign(CLAIMS, ec_key, alg=alg, kid="k1")


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
def test_verify_alg_none_refused(alg: str, ec_key: ECKey) -> None:
    token = f"{_b64json({'alg': alg, 'kid': 'k1', 'typ': 'at+jwt'})}.{_b64json(CLAIMS)}."
    with pytest.raises(jwt.InvalidJWT):
        jwt.verify(token, _keyset(ec_key, "k1", "ES256"), typ="at+jwt")


def test_verify_hs256_resigned_with_public_key_refused(rsa_key: RSAKey) -> None:
    # The classic key-confusion attack: HMAC keyed with the published public key.
    signing_input = f"{_b64json({'alg': 'HS256', 'kid': 'k1', 'typ': 'at+jwt'})}.{_b64json(CLAIMS)}"
    for secret in (rsa_key.as_pem(private=False), json.dumps(rsa_key.as_dict(private=False)).encode()):
        signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
        with pytest.raises(jwt.InvalidJWT):
            jwt.verify(f"{signing_input}.{_b64(signature)}", _keyset(rsa_key, "k1", "RS256"))


def test_verify_alg_outside_given_allow_list_refused(rsa_key: RSAKey) -> None:
    token = jwt.sign(CLAIMS, rsa_key, alg="RS256", kid="k1")
    with pytest.raises(jwt.InvalidJWT):
        jwt.verify(token, _keyset(rsa_key, "k1", "RS256"), algorithms=("ES256",))


def test_verify_typ_mismatch_refused(ec_key: ECKey) -> None:
    token = jwt.sign(CLAIMS, ec_key, alg="ES256", kid="k1", typ="JWT")
    with pytest.raises(jwt.InvalidJWT):
        jwt.verify(token, _keyset(ec_key, "k1", "ES256"), typ="at+jwt")


def test_verify_typ_with_application_prefix_accepted(ec_key: ECKey) -> None:
    header = {"alg": "ES256", "kid": "k1", "typ": "application/at+jwt"}
    signing_input = f"{_b64json(header)}.{_b64json(CLAIMS)}".encode()
    signature = JWSRegistry.algorithms["ES256"].sign(signing_input, ec_key)
    token = f"{signing_input.decode()}.{_b64(signature)}"
    assert jwt.verify(token, _keyset(ec_key, "k1", "ES256"), typ="at+jwt") == CLAIMS


def test_verify_tampered_payload_refused(ec_key: ECKey) -> None:
    header, _payload, signature = jwt.sign(CLAIMS, ec_key, alg="ES256", kid="k1").split(".")
    forged = f"{header}.{_b64json({**CLAIMS, 'sub': 'admin'})}.{signature}"
    with pytest.raises(jwt.InvalidJWT):
        jwt.verify(forged, _keyset(ec_key, "k1", "ES256"))


def test_verify_other_key_same_kid_refused(ec_key: ECKey) -> None:
    token = jwt.sign(CLAIMS, ECKey.generate_key("P-256", private=True), alg="ES256", kid="k1")
    with pytest.raises(jwt.InvalidJWT):
        jwt.verify(token, _keyset(ec_key, "k1", "ES256"))


def test_verify_unknown_kid_refused(ec_key: ECKey) -> None:
    token = jwt.sign(CLAIMS, ec_key, alg="ES256", kid="other")
    with pytest.raises(jwt.InvalidJWT):
        jwt.verify(token, _keyset(ec_key, "k1", "ES256"))


def test_verify_payload_not_object_refused(ec_key: ECKey) -> None:
    signing_input = f"{_b64json({'alg': 'ES256', 'kid': 'k1'})}.{_b64json([1, 2])}".encode()
    token = f"{signing_input.decode()}.{_b64(JWSRegistry.algorithms['ES256'].sign(signing_input, ec_key))}"
    with pytest.raises(jwt.InvalidJWT):
        jwt.verify(token, _keyset(ec_key, "k1", "ES256"))


@pytest.mark.parametrize("token", ["", "a", "a.b", "a.b.c.d", "!!.!!.!!", "x" * 20000])
def test_verify_malformed_or_oversized_refused(token: str, ec_key: ECKey) -> None:
    with pytest.raises(jwt.InvalidJWT):
        jwt.verify(token, _keyset(ec_key, "k1", "ES256"))


@pytest.mark.parametrize("token", ["", "abc", "a.b"])
def test_peek_header_malformed_invalid_jwt(token: str) -> None:
    with pytest.raises(jwt.InvalidJWT):
        jwt.peek_header(token)


def test_verify_does_not_check_time_claims(ec_key: ECKey) -> None:
    expired = {**CLAIMS, "exp": int(time.time()) - 3600}
    token = jwt.sign(expired, ec_key, alg="ES256", kid="k1")
    assert jwt.verify(token, _keyset(ec_key, "k1", "ES256"))["exp"] == expired["exp"]
