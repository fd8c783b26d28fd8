"""Password hashing with argon2id through passlib's API (maintained ``libpass``)."""

from __future__ import annotations

import asyncio

from passlib.context import CryptContext

from idhub.settings import PasswordSettings


class PasswordHasher:
    """Hash, verify and upgrade passwords; parameters at or above OWASP's argon2id minimum."""

    def __init__(self, settings: PasswordSettings) -> None:
        self._context = CryptContext(
            schemes=["argon2"],
            argon2__type="ID",
            argon2__memory_cost=settings.memory_cost_kib,
            argon2__rounds=settings.time_cost,
            argon2__parallelism=settings.parallelism,
        )
        # Verified against when the account does not exist, so both paths cost the same.
        self._dummy_hash = self._context.hash("idhub-dummy-password")

    def hash(self, password: str) -> str:
        """Return an argon2id hash of ``password``."""
        return str(self._context.hash(password))

    async def hash_off_loop(self, password: str) -> str:
        """Hash on a worker thread: argon2 takes tens of milliseconds and releases the GIL."""
        return await asyncio.to_thread(self.hash, password)

    async def verify_off_loop(self, password: str, stored_hash: str | None) -> tuple[bool, str | None]:
        """Verify on a worker thread (see :meth:`hash_off_loop`); same answer as :meth:`verify`."""
        return await asyncio.to_thread(self.verify, password, stored_hash)

    def verify(self, password: str, stored_hash: str | None) -> tuple[bool, str | None]:
        """Verify ``password``; return ``(ok, new_hash)`` where ``new_hash`` is set when parameters changed."""
        if not stored_hash:
            self._context.verify(password, self._dummy_hash)
            return False, None
        try:
            ok, new_hash = self._context.verify_and_update(password, stored_hash)
        except (ValueError, TypeError):
            return False, None
        return bool(ok), new_hash
