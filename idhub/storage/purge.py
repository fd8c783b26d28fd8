"""Scheduled purge of rows that can no longer matter, so single-use and revocation tables stay small.

* ``revocation`` rows once every token they revoke has expired (``expires_at``);
* ``used_value`` rows (client-assertion ``jti`` and the like) once the value could no longer be accepted;
* authorization codes and refresh tokens a day after they expired: until then a replay of a used one
  is still recognised and revokes its grant (RFC 6749 §4.1.2, RFC 9700 §4.14.2); after that it is
  simply unknown;
* interactions (parked authorization requests) once they expired.

Every process runs the purge on its own schedule (with jitter); the deletes are idempotent and bounded
(``batch`` rows per statement, a few statements per run), so processes never hold long locks.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, select, tuple_

from idhub.storage.base import utcnow
from idhub.storage.models import AuthorizationCode, Interaction, RefreshToken, Revocation, UsedValue
from idhub.storage.tasks import cancel, repeat
from idhub.storage.uow import UnitOfWorkFactory

log = logging.getLogger(__name__)

REPLAY_EVIDENCE = timedelta(days=1)


def _targets() -> list[tuple[str, Any, Any, timedelta]]:
    """Return ``(name, model, primary-key columns, grace after expiry)`` for every purged table."""
    return [
        ("revocation", Revocation, (Revocation.id,), timedelta(0)),
        ("used_value", UsedValue, (UsedValue.tenant_id, UsedValue.namespace, UsedValue.value), timedelta(0)),
        ("authorization_code", AuthorizationCode, (AuthorizationCode.code_hash,), REPLAY_EVIDENCE),
        ("refresh_token", RefreshToken, (RefreshToken.id,), REPLAY_EVIDENCE),
        ("interaction", Interaction, (Interaction.id,), timedelta(0)),
    ]


class Purger:
    """Delete expired rows now (:meth:`run_once`) or every ``interval`` seconds (:meth:`start`)."""

    def __init__(self, uow: UnitOfWorkFactory, *, interval: float, batch: int = 5000, rounds: int = 20) -> None:
        self._uow = uow
        self._interval = interval
        self._batch = batch
        self._rounds = rounds
        self._task: asyncio.Task[None] | None = None

    async def run_once(self) -> dict[str, int]:
        """Purge every table once; return how many rows went from each."""
        now = utcnow()
        counts: dict[str, int] = {}
        for name, model, key, grace in _targets():
            total = 0
            for _ in range(self._rounds):
                deleted = await self._delete_batch(model, key, now - grace)
                total += deleted
                if deleted < self._batch:
                    break
            counts[name] = total
        return counts

    async def _delete_batch(self, model: Any, key: tuple[Any, ...], cutoff: Any) -> int:
        victims = select(*key).where(model.expires_at < cutoff).limit(self._batch)
        # Composite keys compare as a row value (PostgreSQL, and SQLite since 3.15).
        condition = key[0].in_(victims.scalar_subquery()) if len(key) == 1 else tuple_(*key).in_(victims)
        async with self._uow(surface="purge") as uow:
            result = await uow.session.execute(
                delete(model).where(condition).execution_options(synchronize_session=False)
            )
        return int(getattr(result, "rowcount", 0) or 0)

    def start(self) -> None:
        """Run the purge in the background, first after a random part of the interval."""
        if self._task is None and self._interval > 0:
            self._task = asyncio.create_task(self._loop(), name="idhub-purge")

    async def stop(self) -> None:
        """Stop the background purge."""
        task, self._task = self._task, None
        await cancel(task)

    async def _loop(self) -> None:
        await repeat(
            self._interval,
            self._purged,
            log=log,
            done="purged expired rows: %s",
            failed="purge failed; retrying at the next interval",
        )

    async def _purged(self) -> dict[str, int]:
        counts = await self.run_once()
        return counts if any(counts.values()) else {}
