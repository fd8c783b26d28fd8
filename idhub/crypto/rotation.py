"""Scheduled key rotation: a tenant that sets ``key_rotation_days`` gets new signing keys that often.

Every process checks the schedule every ``interval`` seconds (with jitter); :func:`rotate_if_due` reads the
active keys' age with them locked, so two processes that check at once rotate once. A rotation retires the
active keys (published until every token they signed has expired) and activates the next ones, which
were already published: relying parties that cache the JWKS never see an unknown ``kid``.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from sqlalchemy import select

from idhub.crypto.encryption import Sealer
from idhub.crypto.keys import rotate_if_due
from idhub.events import Actor
from idhub.storage.models import Tenant
from idhub.storage.tasks import cancel, repeat
from idhub.storage.uow import UnitOfWorkFactory

log = logging.getLogger(__name__)

SETTING = "key_rotation_days"
SCHEDULER = Actor("scheduler", "key-rotation")


def rotation_days(settings: dict[str, object]) -> int | None:
    """Return a tenant's rotation period in days, or ``None`` when it rotates only on demand."""
    value = settings.get(SETTING)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


class KeyRotationSchedule:
    """Rotate due tenants' keys now (:meth:`run_once`) or every ``interval`` seconds (:meth:`start`)."""

    def __init__(
        self, uow: UnitOfWorkFactory, *, sealer: Sealer, max_token_lifetime: timedelta, interval: float
    ) -> None:
        self._uow = uow
        self._sealer = sealer
        self._max_token_lifetime = max_token_lifetime
        self._interval = interval
        self._task: asyncio.Task[None] | None = None

    async def run_once(self) -> dict[str, list[str]]:
        """Rotate every tenant whose schedule is due; return the new active kids by tenant slug."""
        async with self._uow(actor=SCHEDULER, surface="scheduler") as uow:
            rows = (await uow.session.execute(select(Tenant.id, Tenant.slug, Tenant.settings))).all()
        rotated: dict[str, list[str]] = {}
        for tenant_id, slug, settings in rows:
            days = rotation_days(settings or {})
            if days is None:
                continue
            async with self._uow(actor=SCHEDULER, surface="scheduler") as uow:
                kids = await rotate_if_due(
                    uow,
                    tenant_id=tenant_id,
                    sealer=self._sealer,
                    max_token_lifetime=self._max_token_lifetime,
                    every=timedelta(days=days),
                )
            if kids is not None:
                rotated[slug] = kids
        return rotated

    def start(self) -> None:
        """Check the schedule in the background, first after a random part of the interval."""
        if self._task is None and self._interval > 0:
            self._task = asyncio.create_task(self._loop(), name="idhub-key-rotation")

    async def stop(self) -> None:
        """Stop checking."""
        task, self._task = self._task, None
        await cancel(task)

    async def _loop(self) -> None:
        await repeat(
            self._interval,
            self.run_once,
            log=log,
            done="signing keys rotated on schedule: %s",
            failed="scheduled key rotation failed; retrying at the next interval",
        )
