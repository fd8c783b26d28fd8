"""Encryption at rest with keys derived from the master key (AES-256-GCM, HKDF-SHA256)."""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

_VERSION = b"\x01"


def derive_key(master_key: bytes, purpose: str, *, salt: bytes | None = None) -> bytes:
    """Derive an independent 32-byte key for ``purpose`` (and ``salt``, e.g. one backup file's) from the master key."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=b"idhub:" + purpose.encode()).derive(master_key)


class DecryptionError(Exception):
    """Ciphertext was tampered with or sealed under another master key."""


class Sealer:
    """Seal and open small secrets (private keys, upstream client secrets) with AES-GCM."""

    __slots__ = ("_aead",)

    def __init__(self, master_key: bytes) -> None:
        self._aead = AESGCM(derive_key(master_key, "encryption-at-rest"))

    def seal(self, plaintext: bytes, *, context: str) -> bytes:
        """Encrypt ``plaintext`` bound to ``context`` (authenticated, not encrypted)."""
        nonce = os.urandom(12)
        return _VERSION + nonce + self._aead.encrypt(nonce, plaintext, context.encode())

    def open(self, sealed: bytes, *, context: str) -> bytes:
        """Decrypt what :meth:`seal` produced for the same ``context``."""
        if len(sealed) < 29 or sealed[:1] != _VERSION:
            raise DecryptionError("unknown ciphertext format")
        try:
            return self._aead.decrypt(sealed[1:13], sealed[13:], context.encode())
        except InvalidTag as exc:
            raise DecryptionError("ciphertext does not open under this master key") from exc
