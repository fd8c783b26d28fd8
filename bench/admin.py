#!/usr/bin/env python3
"""Benchmark the admin API's lists at 100,000 people on PostgreSQL, and print the figures.

One idhub server process (``idhub serve --workers 1``, started as ``bench/run.py`` starts it) on
PostgreSQL (database ``bench_admin``, created if missing and reset first). ``--users`` people (default
100,000) are put in the directory first, in-process through the directory's bulk command
(``Users.create_many``, the one SCIM /Bulk uses; each is audited, so the audit log holds 100,000 entries
too), followed, as after a SCIM /Bulk onboarding, by idhub's ``ANALYZE`` of the grown tables; that load is
not what is measured. The admin client of ``idhub init`` gets a token by
client_credentials (scope ``idhub:admin``); every request sends it as ``Authorization: Bearer``. The client
is one keep-alive httpx client sending requests one after another.

Scenarios (warm-up requests first, then measured ones; latencies client-side):
1. first page: ``GET /admin/v1/tenants/bench/users?limit=100``;
2. a page at a random depth: the same with ``cursor`` set after a random person (keyset pagination:
   a page costs the same anywhere in the list);
3. a username prefix: ``?username_prefix=user9&limit=100``;
4. an exact email: ``?email=user<random>@acme.example``;
5. the audit log, newest first, and a page at a random depth of it;
6. the whole list, walked page by page (``limit=200``) from the first cursor to the last: every person
   once. Target: each list request p99 well under a second, and the whole walk **under 30 s**.

The server runs on one CPU core and this process on another (``--server-cpu``, default 0;
``--client-cpu``, default 1), as in ``bench/run.py``; PostgreSQL is not pinned.

Usage: ``python bench/admin.py [--users 100000] [--no-pin]``; ``--users 2000`` is a smoke run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as base  # bench/run.py: server, CLI and pinning helpers

DEFAULT_DATABASE_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/bench_admin"
TARGET_USERS = 100_000
BATCH = 1000
WARMUP, REQUESTS = 20, 300
WALK_PAGE = 200
WALK_TARGET_S = 30.0
DOMAIN = "acme.example"


def percentile(values: list[float], p: float) -> float:
    """Return the ``p``-th percentile (nearest rank) of ``values`` in milliseconds."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))] * 1000


def seed(env: dict[str, str], users: int) -> float:
    """Put ``users`` people in the bench tenant through the directory's bulk command; return seconds."""
    from idhub.context import build_context
    from idhub.directory.profile import UserProfile, ValueRecord
    from idhub.events import Actor
    from idhub.settings import Settings

    settings = Settings(
        database_url=env["IDHUB_DATABASE_URL"],
        master_key=env["IDHUB_MASTER_KEY"],
        data_dir=Path(env["IDHUB_DATA_DIR"]),
        public_url=env["IDHUB_PUBLIC_URL"],
    )

    async def work() -> float:
        ctx = build_context(settings)
        await ctx.start()
        try:
            tenant = await ctx.tenants.get(base.TENANT)
            assert tenant is not None
            start = time.perf_counter()
            for first in range(0, users, BATCH):
                profiles = [
                    UserProfile(
                        user_name=f"user{i:06d}",
                        values=(ValueRecord("emails", value=f"user{i:06d}@{DOMAIN}", type="work", primary=True),),
                        given_name="Ada",
                        family_name=f"Lovelace{i}",
                    )
                    for i in range(first, min(users, first + BATCH))
                ]
                async with ctx.uow(actor=Actor("cli", "bench"), surface="cli") as uow:
                    results = await ctx.directory(uow).users.create_many(tenant.id, profiles)
                errors = [r for r in results if isinstance(r, Exception)]
                if errors:
                    raise RuntimeError(f"seeding refused {len(errors)} people: {errors[0]}")
            await ctx.audit.writer.flush()
            # What SCIM /Bulk onboarding does after its load: ANALYZE the grown tables (idhub.storage.statistics).
            await ctx.statistics.inserted(("user", "user_value", "audit_event"), users)
            await ctx.statistics.wait()
            return time.perf_counter() - start
        finally:
            await ctx.close()

    return asyncio.run(work())


def measure(http: httpx.Client, name: str, make_url: Any, check: Any) -> dict[str, Any]:
    """Send ``WARMUP`` then ``REQUESTS`` requests built by ``make_url``; return the figure."""
    for _ in range(WARMUP):
        check(http.get(make_url()))
    times = []
    for _ in range(REQUESTS):
        url = make_url()
        start = time.perf_counter()
        answer = http.get(url)
        times.append(time.perf_counter() - start)
        check(answer)
    return {"name": name, "requests": REQUESTS, "p50_ms": percentile(times, 50), "p99_ms": percentile(times, 99)}


def full_page(size: int) -> Any:
    def check(answer: httpx.Response) -> None:
        if answer.status_code != 200 or len(answer.json()["items"]) != size:
            raise RuntimeError(f"unexpected answer {answer.status_code}: {answer.text[:300]}")

    return check


def cursor_after(username: str) -> str:
    """Return the cursor that continues after ``username`` (the API's opaque format, built the same way)."""
    from idhub.admin.pagination import encode_cursor

    return encode_cursor([username])


def run_bench(args: argparse.Namespace, work: Path, pinning: base.Pinning) -> tuple[list[dict[str, Any]], list[str]]:
    """Set up the server and the directory, then measure."""
    port = base.free_port()
    base_url = f"http://127.0.0.1:{port}"
    env = base.server_env(args.database_url, base_url, work)
    notes: list[str] = []
    print("  resetting database, migrating, seeding ...", flush=True)
    base.reset_database(args.database_url)
    base.idhub_cli(env, "migrate")
    init = base.idhub_cli(env, "init", "--tenant", base.TENANT)
    seconds = seed(env, args.users)
    notes.append(f"seeded {args.users} people (and their audit entries) in {seconds:.1f} s (not measured below)")
    argv = [*base.IDHUB, "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    server = base.Server("idhub", argv, env=env, cwd=work, log_dir=work, pinning=pinning)
    results: list[dict[str, Any]] = []
    with base.running(server, f"{base_url}/healthz"), pinning.load_generator(), httpx.Client(timeout=120) as http:
        token = http.post(
            f"{init['issuer']}/token",
            data={"grant_type": "client_credentials", "scope": "idhub:admin"},
            auth=(init["admin_client_id"], init["admin_client_secret"]),
        ).json()["access_token"]
        http.headers["authorization"] = f"Bearer {token}"
        users = f"{base_url}/admin/v1/tenants/{base.TENANT}/users"
        audit = f"{base_url}/admin/v1/tenants/{base.TENANT}/audit"
        n = args.users
        rand = random.Random(7)
        page = min(100, n)
        deep = max(1, n - page)
        results.append(measure(http, "first page (limit=100)", lambda: f"{users}?limit=100", full_page(page)))
        results.append(
            measure(
                http,
                "page at a random depth",
                lambda: f"{users}?limit=100&cursor={cursor_after(f'user{rand.randrange(deep):06d}')}",
                full_page(page),
            )
        )
        prefix_size = min(100, sum(1 for i in range(n) if f"{i:06d}".startswith("09")) or 0)
        if prefix_size:
            results.append(
                measure(
                    http,
                    "username prefix",
                    lambda: f"{users}?username_prefix=user09&limit=100",
                    full_page(min(100, prefix_size)),
                )
            )
        results.append(
            measure(http, "exact email", lambda: f"{users}?email=user{rand.randrange(n):06d}@{DOMAIN}", full_page(1))
        )
        first = http.get(f"{audit}?limit=100").json()
        results.append(measure(http, "audit log, first page", lambda: f"{audit}?limit=100", full_page(min(100, n + 1))))
        cursor = first["next_cursor"]
        if cursor:
            results.append(
                measure(http, "audit log, second page", lambda: f"{audit}?limit=100&cursor={cursor}", full_page(100))
            )
        start = time.perf_counter()
        seen = pages = 0
        url: str | None = f"{users}?limit={WALK_PAGE}"
        while url:
            answer = http.get(url)
            if answer.status_code != 200:
                raise RuntimeError(f"walk: {answer.status_code} {answer.text[:300]}")
            body = answer.json()
            seen += len(body["items"])
            pages += 1
            url = f"{users}?limit={WALK_PAGE}&cursor={body['next_cursor']}" if body["next_cursor"] else None
        walk = time.perf_counter() - start
        if seen != n:
            raise RuntimeError(f"the walk saw {seen} people, not {n}")
        results.append({"name": f"whole list walked ({pages} pages of {WALK_PAGE})", "seconds": walk, "people": seen})
    return results, notes


def main() -> int:
    """Run the benchmark and print the report."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=TARGET_USERS)
    parser.add_argument(
        "--database-url", default=os.environ.get("IDHUB_BENCH_ADMIN_DATABASE_URL", DEFAULT_DATABASE_URL)
    )
    base.add_pinning_arguments(parser)
    args = parser.parse_args()
    pinning = base.pinning_from_args(parser, args)
    print("\n".join(base.pinning_header(pinning.as_dict())), flush=True)
    machine = base.machine_info(pinning)
    print(
        f"machine: {machine['cpu_model']}, {machine['nproc']} CPUs, Python {machine['python']}, "
        f"load average at start {machine['load_average_at_start']}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="idhub-bench-admin-") as tmp:
        results, notes = run_bench(args, Path(tmp), pinning)
    print()
    for note in notes:
        print(note)
    failed = False
    for result in results:
        if "seconds" in result:
            ok = result["seconds"] < WALK_TARGET_S
            failed |= not ok
            verdict = "PASS" if ok else "FAIL"
            print(
                f"{result['name']}: {result['seconds']:.2f} s for {result['people']} people "
                f"(target < {WALK_TARGET_S:.0f} s: {verdict})"
            )
        else:
            print(
                f"{result['name']}: p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms "
                f"({result['requests']} requests)"
            )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
