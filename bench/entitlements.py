"""What access policies cost: the entitlement statement of every person's token request, and a big group change.

Prints, on a freshly migrated database (it creates a tenant of its own and leaves it there):

* ``person_entitlement``: the one statement a code exchange or refresh adds (median and p99 microseconds
  of wall time, in one open transaction), for a client without policies, and for a governed client with
  20 group policies and a person three nested groups deep;
* ``group change``: removing a nested group of ``--people`` people (each holding a refresh token at the
  governed client) from the group the policy names: wall time of the unit of work (revocations, audit rows
  and commit included) and the statements it sent.

Usage: ``python bench/entitlements.py [--database-url URL] [--people 10000] [--calls 2000]`` (default:
a SQLite file in a temporary folder; ``IDHUB_BENCH_DATABASE_URL`` also names the database).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import event, insert, text

from idhub.clients.service import create_client
from idhub.context import build_context
from idhub.directory.entitlements import person_entitlement
from idhub.directory.groups import MemberIds
from idhub.directory.profile import UserProfile
from idhub.events import Actor
from idhub.settings import Settings
from idhub.storage.base import utcnow
from idhub.storage.migrate import upgrade
from idhub.storage.tables import GRANTS, REFRESH_TOKENS
from idhub.tenants.service import get_or_create_tenant

ACTOR = Actor("bench", "entitlements")
MASTER_KEY = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="


async def _timed_calls(ctx: Any, client_pk: uuid.UUID, user_id: uuid.UUID, calls: int) -> tuple[float, float]:
    async with ctx.sessionmaker() as session:
        await person_entitlement(session, client_pk=client_pk, user_id=user_id)  # warm the statement cache
        samples = []
        for _ in range(calls):
            started = time.perf_counter()
            await person_entitlement(session, client_pk=client_pk, user_id=user_id)
            samples.append((time.perf_counter() - started) * 1e6)
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.99) - 1]


async def run(database_url: str, people: int, calls: int) -> None:
    data = Path(tempfile.mkdtemp(prefix="idhub-bench-ent-"))
    settings = Settings(database_url=database_url, data_dir=data, master_key=MASTER_KEY, environment="test")
    ctx = build_context(settings)
    try:
        async with ctx.uow(actor=ACTOR, surface="bench") as uow:
            tenant, _ = await get_or_create_tenant(uow, slug=f"bench-{secrets.token_hex(4)}", sealer=ctx.sealer)
            scope = "openid profile " + " ".join(f"s{i}" for i in range(20))
            kw: dict[str, Any] = {"redirect_uris": ["https://rp.example/cb"], "scope": scope}
            open_client, _ = await create_client(uow, tenant_id=tenant.id, name="open", hasher=ctx.secret_hasher, **kw)
            app, _ = await create_client(uow, tenant_id=tenant.id, name="app", hasher=ctx.secret_hasher, **kw)
            directory = ctx.directory(uow)
            created = await directory.users.create_many(
                tenant.id, [UserProfile(user_name=f"p{i:06d}") for i in range(people)]
            )
            user_ids = [i for i in created if isinstance(i, uuid.UUID)]
            deep = user_ids[0]
            inner = await directory.groups.create(tenant.id, name="inner", members=MemberIds(users=frozenset(user_ids)))
            middle = await directory.groups.create(
                tenant.id, name="middle", members=MemberIds(groups=frozenset({inner.id}))
            )
            outer = await directory.groups.create(
                tenant.id, name="outer", members=MemberIds(groups=frozenset({middle.id}))
            )
            for i in range(19):
                other = await directory.groups.create(tenant.id, name=f"other{i}")
                await directory.entitlements.create(
                    tenant.id, client_id=app.client_id, group_id=other.id, scopes=f"s{i}"
                )
            await directory.entitlements.create(
                tenant.id, client_id=app.client_id, group_id=outer.id, scopes="s19 profile"
            )
            tenant_id, app_pk, open_pk, outer_id, middle_id = tenant.id, app.id, open_client.id, outer.id, middle.id

        if ctx.engine.dialect.name == "postgresql":
            # What autovacuum does soon after a bulk load: without statistics the planner scans every
            # membership for the nested groups (about 1.7 ms at 10,000 people) instead of using the index.
            async with ctx.engine.connect() as connection:
                await connection.execute(text("ANALYZE"))
        for label, client_pk in (("client without policies", open_pk), ("governed client, 3 levels deep", app_pk)):
            median, p99 = await _timed_calls(ctx, client_pk, deep, calls)
            print(f"person_entitlement, {label}: median {median:.0f} us, p99 {p99:.0f} us ({calls} calls)")

        now = utcnow()
        grants = [secrets.token_hex(8) for _ in user_ids]
        async with ctx.sessionmaker() as session:
            grant_rows = [
                {
                    "id": g,
                    "tenant_id": tenant_id,
                    "client_id": app_pk,
                    "user_id": u,
                    "scope": "openid s19",
                    "created_at": now,
                }
                for g, u in zip(grants, user_ids, strict=True)
            ]
            token_rows = [
                {
                    "id": uuid.uuid4(),
                    "token_hash": secrets.token_hex(16),
                    "tenant_id": tenant_id,
                    "client_id": app_pk,
                    "grant_id": g,
                    "user_id": u,
                    "scope": "openid s19",
                    "resources": [],
                    "amr": [],
                    "created_at": now,
                    "expires_at": now + timedelta(days=1),
                }
                for g, u in zip(grants, user_ids, strict=True)
            ]
            for start in range(0, len(grant_rows), 2000):
                await session.execute(insert(GRANTS), grant_rows[start : start + 2000])
                await session.execute(insert(REFRESH_TOKENS), token_rows[start : start + 2000])
            await session.commit()

        statements = 0

        def count(*_args: Any) -> None:
            nonlocal statements
            statements += 1

        event.listen(ctx.engine.sync_engine, "before_cursor_execute", count)
        started = time.perf_counter()
        async with ctx.uow(actor=ACTOR, surface="bench") as uow:
            groups = ctx.directory(uow).groups
            await groups.remove_members(await groups.get(tenant_id, outer_id), MemberIds(groups=frozenset({middle_id})))
        elapsed = time.perf_counter() - started
        event.remove(ctx.engine.sync_engine, "before_cursor_execute", count)
        print(
            f"group change: {len(user_ids)} people lose a scope, {len(grants)} grants revoked in {elapsed:.2f} s "
            f"({statements} statements, audit rows and commit included)"
        )
    finally:
        await ctx.close()


def main() -> None:
    """Parse the arguments and run."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = os.environ.get("IDHUB_BENCH_DATABASE_URL")
    parser.add_argument("--database-url", default=default)
    parser.add_argument("--people", type=int, default=10_000)
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()
    url = args.database_url or f"sqlite+aiosqlite:///{tempfile.mkdtemp(prefix='idhub-bench-')}/bench.db"
    upgrade(url)
    asyncio.run(run(url, args.people, args.calls))


if __name__ == "__main__":
    main()
