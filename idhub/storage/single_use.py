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
writer of that family does (:func:`idhub.tokens.refresh.lock_grant_of_token`); otherwise two losers lock the
same rows in opposite orders and one of them is aborted as a deadlock.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Row, Table, Update, bindparam, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from idhub.storage.tables import USED_VALUES


def consuming(
    table: Table,
    *,
    used: str,
    where: Sequence[ColumnElement[bool]],
    returning: Sequence[Any],
    also: Sequence[str] = (),
) -> Update:
    """Build (once, at import) the statement :func:`consume` runs on one kind of single-use row.

    ``used`` names the row's "used at" column (``consumed_at``, ``rotated_at``, ``completed_at``): only
    a row where it is still NULL and ``where`` holds is changed, and it is set to the parameter
    ``p_now``. ``where`` uses bound parameters named ``p_...``, given to :func:`consume`; ``also`` are
    further columns the winning statement sets, each from the parameter ``p_<column>``.
    """
    values: dict[str, Any] = {used: bindparam("p_now")} | {name: bindparam(f"p_{name}") for name in also}
    return update(table).where(table.c[used].is_(None), *where).values(values).returning(*returning)


async def consume(session: AsyncSession, statement: Update, parameters: Mapping[str, Any]) -> Row[Any] | None:
    """Mark one live row used with a statement from :func:`consuming`; return its ``returning`` when this call won.

    ``None`` means another request won, or there was no such live row; the caller looks closer only if
    it must tell those apart.
    """
    return (await session.execute(statement, parameters)).first()


_CLAIM_VALUES: dict[str, Any] = {
    "tenant_id": bindparam("p_tenant_id"),
    "namespace": bindparam("p_namespace"),
    "value": bindparam("p_value"),
    "expires_at": bindparam("p_expires_at"),
}
# INSERT ... ON CONFLICT DO NOTHING RETURNING, per dialect (the same SQL on both), built once.
_CLAIMS = {
    name: builder(USED_VALUES).values(_CLAIM_VALUES).on_conflict_do_nothing().returning(USED_VALUES.c.value)
    for name, builder in (("postgresql", postgresql_insert), ("sqlite", sqlite_insert))
}


async def claim(
    session: AsyncSession, *, tenant_id: uuid.UUID, namespace: str, value: str, expires_at: datetime
) -> bool:
    """Record ``value`` as used in ``namespace`` until ``expires_at``; tell whether this call was the first."""
    statement = _CLAIMS[session.get_bind().dialect.name]
    parameters = {"p_tenant_id": tenant_id, "p_namespace": namespace, "p_value": value, "p_expires_at": expires_at}
    return (await session.execute(statement, parameters)).first() is not None
