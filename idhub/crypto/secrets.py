"""Random identifiers, keyed hashing of high-entropy secrets, constant-time comparison."""

from __future__ import annotations

import base64
import hmac
import os


def random_token(nbytes: int = 32) -> str:
    """Return a urlsafe random string carrying ``nbytes`` bytes of entropy."""
    return base64.urlsafe_b64encode(os.urandom(nbytes)).rstrip(b"=").decode()  # as secrets.token_urlsafe


def constant_time_equals(a: str | bytes, b: str | bytes) -> bool:
    """Compare two values without leaking where they differ."""
    if isinstance(a, str):
        a = a.encode()
    if isinstance(b, str):
        b = b.encode()
    return hmac.compare_digest(a, b)


class SecretHasher:
    """Keyed hash (HMAC-SHA256) for high-entropy secrets: client secrets, codes, tokens.

    These secrets carry >= 256 bits of entropy, so a slow password hash adds nothing but latency on
    the token endpoint's hot path; the key (derived from the master key) means a stolen database
    alone does not allow offline checks of guesses.
    """

    __slots__ = ("_key",)

    def __init__(self, key: bytes) -> None:
        self._key = key

    def hash(self, secret: str) -> str:
        """Return the hex digest that is stored in place of ``secret``."""
        return hmac.digest(self._key, secret.encode(), "sha256").hex()  # one-shot OpenSSL HMAC

    def verify(self, secret: str, stored_hash: str | None) -> bool:
        """Check ``secret`` against ``stored_hash`` in constant time."""
        if not stored_hash:
            return False
        return hmac.compare_digest(self.hash(secret), stored_hash)
