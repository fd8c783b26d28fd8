"""Encryption at rest: AES-256-GCM under keys derived from the master key."""

from __future__ import annotations

import pytest

from idhub.crypto.encryption import DecryptionError, Sealer, derive_key

MASTER = bytes(range(32))
OTHER_MASTER = bytes(range(1, 33))


def test_derive_key_purposes_independent_and_stable() -> None:
    assert derive_key(MASTER, "a") == derive_key(MASTER, "a")
    assert derive_key(MASTER, "a") != derive_key(MASTER, "b")
    assert derive_key(MASTER, "a") != derive_key(OTHER_MASTER, "a")
    assert len(derive_key(MASTER, "a")) == 32


def test_sealer_seal_then_open_same_context_roundtrip() -> None:
    sealer = Sealer(MASTER)
    sealed = sealer.seal(b"private key", context="signing-key:k1")
    assert b"private key" not in sealed
    assert sealer.open(sealed, context="signing-key:k1") == b"private key"


def test_sealer_same_plaintext_twice_different_ciphertexts() -> None:
    sealer = Sealer(MASTER)
    assert sealer.seal(b"x", context="c") != sealer.seal(b"x", context="c")


@pytest.mark.parametrize("position", [0, 1, 12, 13, -1])
def test_sealer_tampered_byte_decryption_error(position: int) -> None:
    sealer = Sealer(MASTER)
    sealed = bytearray(sealer.seal(b"some secret value", context="c"))
    sealed[position] ^= 0x01
    with pytest.raises(DecryptionError):
        sealer.open(bytes(sealed), context="c")


def test_sealer_wrong_context_decryption_error() -> None:
    sealer = Sealer(MASTER)
    sealed = sealer.seal(b"secret", context="signing-key:k1")
    with pytest.raises(DecryptionError):
        sealer.open(sealed, context="signing-key:k2")


def test_sealer_other_master_key_decryption_error() -> None:
    sealed = Sealer(MASTER).seal(b"secret", context="c")
    with pytest.raises(DecryptionError):
        Sealer(OTHER_MASTER).open(sealed, context="c")


@pytest.mark.parametrize("sealed", [b"", b"\x01", b"\x01" + b"\x00" * 27, b"\x02" + b"\x00" * 40])
def test_sealer_truncated_or_unknown_format_decryption_error(sealed: bytes) -> None:
    with pytest.raises(DecryptionError):
        Sealer(MASTER).open(sealed, context="c")
