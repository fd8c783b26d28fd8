"""Random tokens, keyed hashing of high-entropy secrets, constant-time comparison."""

from __future__ import annotations

import base64

import pytest

from idhub.crypto.secrets import SecretHasher, constant_time_equals, random_token


def test_random_token_default_carries_32_bytes_urlsafe() -> None:
    token = random_token()
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    assert len(raw) == 32
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def test_random_token_repeated_calls_unique() -> None:
    assert len({random_token(16) for _ in range(1000)}) == 1000


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [("abc", "abc", True), ("abc", "abd", False), (b"abc", "abc", True), ("abc", "abcd", False), ("", "", True)],
)
def test_constant_time_equals_str_and_bytes_compares_values(a: str | bytes, b: str | bytes, expected: bool) -> None:
    assert constant_time_equals(a, b) is expected


def test_secret_hasher_same_key_deterministic_hex_digest() -> None:
    hasher = SecretHasher(b"k" * 32)
    digest = hasher.hash("s3cret")
    assert digest == hasher.hash("s3cret")
    assert len(digest) == 64 and int(digest, 16) >= 0
    assert "s3cret" not in digest


def test_secret_hasher_other_key_other_digest() -> None:
    assert SecretHasher(b"a" * 32).hash("x") != SecretHasher(b"b" * 32).hash("x")


def test_secret_hasher_verify_right_secret_true_wrong_false() -> None:
    hasher = SecretHasher(b"k" * 32)
    stored = hasher.hash("client-secret")
    assert hasher.verify("client-secret", stored) is True
    assert hasher.verify("client-secreT", stored) is False
    assert SecretHasher(b"j" * 32).verify("client-secret", stored) is False


@pytest.mark.parametrize("stored", [None, ""])
def test_secret_hasher_verify_no_stored_hash_false(stored: str | None) -> None:
    assert SecretHasher(b"k" * 32).verify("anything", stored) is False
