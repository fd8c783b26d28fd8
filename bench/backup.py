#!/usr/bin/env python3
"""Benchmark ``idhub backup``, ``idhub backup verify`` and ``idhub restore`` on PostgreSQL with 100,000 users.

1. The source database (``bench_backup_src``, created if missing and reset) is migrated and set up through
   the CLI (``idhub migrate``, ``idhub init``), then seeded off the clock with ``COPY``: ``--users`` users
   (default 100,000) with one email each (``user_value``), 100 groups and one membership per user.
2. ``idhub backup --output FILE --json`` (every tenant) is timed as the operator runs it: the wall time of the
   command, process start included. Target: < 30 s.
3. ``idhub backup verify --input FILE --json``: the whole file decrypted and checked (reported, no target).
4. ``idhub restore --input FILE --json`` into a fresh, empty database (``bench_backup_dst``, reset first):
   migrations to the backup's revision, every row inserted in one transaction, migrations to head. Target:
   < 30 s. The restored counts must equal the backed-up ones.

This is not a test: it prints figures (and the machine they come from) and exits non-zero when a target is
missed or a step failed. ``python bench/backup.py --users 5000`` is a quick smoke run.

Usage: ``python bench/backup.py [--users 100000] [--source-url URL] [--target-url URL] [--json-out FILE]``
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import secrets
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as base  # bench/run.py: CLI, database and machine helpers

SOURCE_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/bench_backup_src"
TARGET_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/bench_backup_dst"
TARGET_USERS = 100_000
TARGET_SECONDS = 30.0
GROUPS = 100


def _dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


def seed(url: str, users: int) -> dict[str, int]:
    """Add ``users`` users with an email each, ``GROUPS`` groups and one membership per user (COPY)."""
    import asyncpg

    async def work() -> dict[str, int]:
        conn = await asyncpg.connect(_dsn(url), timeout=10)
        try:
            tenant_id = await conn.fetchval("SELECT id FROM tenant WHERE slug = $1", base.TENANT)
            now = datetime.now(UTC)
            group_ids = [uuid.uuid4() for _ in range(GROUPS)]
            await conn.copy_records_to_table(
                "group",
                records=[(gid, tenant_id, f"Team {i}", f"team {i}", 1, now, now) for i, gid in enumerate(group_ids)],
                columns=("id", "tenant_id", "display_name", "display_name_key", "version", "created_at", "updated_at"),
            )
            user_rows, value_rows, member_rows = [], [], []
            for i in range(users):
                uid = uuid.uuid4()
                name = f"user{i:06d}@acme.example"
                user_rows.append(
                    (
                        uid,
                        tenant_id,
                        name,
                        name,
                        name,
                        False,
                        "Given",
                        "Family",
                        f"User {i}",
                        True,
                        1,
                        now,
                        now,
                        "bench",
                    )
                )
                value_rows.append((uuid.uuid4(), uid, "emails", 0, name, "work", True))
                member_rows.append((uuid.uuid4(), group_ids[i % GROUPS], uid))
            await conn.copy_records_to_table(
                "user",
                records=user_rows,
                columns=(
                    "id",
                    "tenant_id",
                    "username",
                    "user_name",
                    "email",
                    "email_verified",
                    "given_name",
                    "family_name",
                    "display_name",
                    "enabled",
                    "version",
                    "created_at",
                    "updated_at",
                    "created_by",
                ),
            )
            await conn.copy_records_to_table(
                "user_value",
                records=value_rows,
                columns=("id", "user_id", "attribute", "position", "value", "type", "primary"),
            )
            await conn.copy_records_to_table("group_member", records=member_rows, columns=("id", "group_id", "user_id"))
            await conn.execute('ANALYZE "user"; ANALYZE user_value; ANALYZE group_member')
            return {"user": users, "user_value": users, "group": GROUPS, "group_member": users}
        finally:
            await conn.close()

    return asyncio.run(work())


def timed_cli(env: dict[str, str], *args: str) -> tuple[float, dict[str, Any]]:
    """Run an ``idhub`` command; return its wall time (process start included) and its JSON output."""
    started = time.perf_counter()
    completed = subprocess.run(
        [*base.IDHUB, *args], env=env, cwd=base.REPO_DIR, capture_output=True, text=True, check=False
    )
    elapsed = time.perf_counter() - started
    if completed.returncode != 0:
        raise RuntimeError(f"idhub {' '.join(args)} failed: {completed.stderr.strip() or completed.stdout.strip()}")
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    return elapsed, result


def main() -> int:
    """Run the benchmark and print the report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--users", type=int, default=TARGET_USERS)
    parser.add_argument("--source-url", default=SOURCE_URL)
    parser.add_argument("--target-url", default=TARGET_URL)
    parser.add_argument("--json-out", default=None)
    args = parser.parse_args()

    machine = base.machine_info()
    work = Path(tempfile.mkdtemp(prefix="idhub-bench-backup-"))
    master = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()
    common = {
        "PATH": "/usr/bin:/bin:/usr/local/bin",
        "IDHUB_MASTER_KEY": master,
        "IDHUB_DATA_DIR": str(work / "data"),
        "IDHUB_LOG_LEVEL": "WARNING",
        "IDHUB_PUBLIC_URL": "http://127.0.0.1:8000",
    }
    source = {**common, "IDHUB_DATABASE_URL": args.source_url}
    target = {**common, "IDHUB_DATABASE_URL": args.target_url}
    file = work / "bench.idhub-backup"
    figures: dict[str, Any] = {"users": args.users}
    failures: list[str] = []
    try:
        base.reset_database(args.source_url)
        base.reset_database(args.target_url)
        base.idhub_cli(source, "migrate")
        base.idhub_cli(source, "init", "--tenant", base.TENANT)
        started = time.perf_counter()
        seeded = seed(args.source_url, args.users)
        figures["seed_seconds"] = round(time.perf_counter() - started, 2)
        figures["seeded"] = seeded

        seconds, taken = timed_cli(source, "backup", "--output", str(file), "--json")
        figures["backup_seconds"] = round(seconds, 2)
        figures["file_bytes"] = taken["bytes"]
        figures["rows"] = taken["rows"]
        seconds, checked = timed_cli(source, "backup", "verify", "--input", str(file), "--json")
        figures["verify_seconds"] = round(seconds, 2)
        seconds, restored = timed_cli(target, "restore", "--input", str(file), "--json")
        figures["restore_seconds"] = round(seconds, 2)
        if not (taken["tables"] == checked["tables"] == restored["tables"]):
            failures.append("the restored counts differ from the backed-up ones")
        for table, count in seeded.items():
            if taken["tables"].get(table) != count:
                failures.append(f"table {table}: backed up {taken['tables'].get(table)} rows, seeded {count}")
    except Exception as exc:
        failures.append(f"{type(exc).__name__}: {exc}")
    finally:
        file.unlink(missing_ok=True)

    smoke = args.users < TARGET_USERS
    verdicts = {}
    for step in ("backup", "restore"):
        value = figures.get(f"{step}_seconds")
        ok = value is not None and value < TARGET_SECONDS
        verdicts[step] = "PASS" if ok else "FAIL"
        if not ok:
            failures.append(f"{step} took {value} s (target < {TARGET_SECONDS:.0f} s)")
    print(f"idhub backup / verify / restore on PostgreSQL, {args.users:,} users" + (" (smoke run)" if smoke else ""))
    print(f"machine: {machine['cpu_model']}, {machine['nproc']} vCPU, load {machine['load_average_at_start']}")
    print(f"seeded (COPY, off the clock): {figures.get('seeded')} in {figures.get('seed_seconds')} s")
    print(f"rows in the backup: {figures.get('rows')}, file size: {figures.get('file_bytes', 0) / 1e6:.1f} MB")
    print(f"backup  : {figures.get('backup_seconds')} s  {verdicts['backup']} (target < {TARGET_SECONDS:.0f} s)")
    print(f"verify  : {figures.get('verify_seconds')} s")
    print(f"restore : {figures.get('restore_seconds')} s  {verdicts['restore']} (target < {TARGET_SECONDS:.0f} s)")
    for failure in failures:
        print(f"FAIL: {failure}")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"machine": machine, "figures": figures, "failures": failures}))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
