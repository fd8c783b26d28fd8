"""Single-use consumption: one atomic statement that tells its caller whether it won.

Authorization codes, refresh tokens, interactions (and the broker's ``state``) exist as rows before
they are used: :func:`consume` marks one used with a conditional ``UPDATE ... WHERE <used> IS NULL
RETURNING``, and only the request whose statement changed the row gets it back. Values that are first
seen when they are used (the ``jti`` of a client assertion, RFC 7523 §3; a SAML assertion ID) are
claimed with :func:`claim`, an ``INSERT ... ON CONFLICT DO NOTHING RETURNING`` into ``used_value``:
the first insert wins. Both are one statement, so parallel requests on any number of processes get
exactly one winner, on PostgreSQL and SQLite alike; nothing reads and then writes.

On PostgreSQL a losing ``UPDATE`` that had to wait for the winner keeps a lock on the row it re-checked
until its transaction ends. A caller that goes on to change related rows (a replayed code or refresh
token revokes its grant) must therefore lock the parent row first, before :func:`consume`, as every other
writer of that family does (:func:`idhub.tokens.refresh.lock_grant_of`); otherwise two losers lock the
same rows in opposite orders and one of them is aborted as a deadlock.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Row, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from idhub.storage.models import UsedValue


async def consume(
    session: AsyncSession,
    model: Any,
    *,
    used: InstrumentedAttribute[Any],
    where: Sequence[ColumnElement[bool]],
    now: datetime,
    returning: Sequence[Any],
    also: Mapping[str, Any] | None = None,
) -> Row[Any] | None:
    """Mark one live row of ``model`` used at ``now``; return ``returning`` of it when this call won.

    ``used`` is the row's "used at" column (``consumed_at``, ``rotated_at``, ``completed_at``): only a
    row where it is still NULL and ``where`` holds is changed. ``None`` means another request won, or
    there was no such live row; the caller looks closer only if it must tell those apart. ``also`` are
    further columns the winning statement sets (by attribute name), in the same round trip.
    """
    result = await session.execute(
        update(model)
        .where(used.is_(None), *where)
        .values({used.key: now, **(also or {})})
        .returning(*returning)
        .execution_options(synchronize_session=False)
    )
    return result.first()


async def claim(
    session: AsyncSession, *, tenant_id: uuid.UUID, namespace: str, value: str, expires_at: datetime
) -> bool:
    """Record ``value`` as used in ``namespace`` until ``expires_at``; tell whether this call was the first."""
    dialect = session.get_bind().dialect.name
    builder = postgresql_insert if dialect == "postgresql" else sqlite_insert
    statement = (
        builder(UsedValue)
        .values(tenant_id=tenant_id, namespace=namespace, value=value, expires_at=expires_at)
        .on_conflict_do_nothing()
        .returning(UsedValue.value)
    )
    return (await session.execute(statement)).first() is not None
