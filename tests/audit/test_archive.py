"""Audit retention: the oldest entries move to sealed files, the head keeps an anchor, and tampering is found.

Each test makes a tenant with a few audited changes, archives them (a cutoff just after they were
written), then tampers as someone with database or file access but without the master key would: the
anchor changed by SQL, a prefix deleted without an anchor, a byte flipped in a file, a file missing.
"""

from __future__ import annotations

import base64
import json
import os
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import delete, select, update

from idhub.audit.archive import (
    ArchivedFile,
    ArchiveReport,
    archive_tenant,
    check_files,
    retention_days,
    verify_with_archives,
)
from idhub.audit.chain import Verdict, verify
from idhub.cli import main
from idhub.crypto.encryption import derive_key
from idhub.errors import Invalid
from idhub.storage.tables import AUDIT_CHAIN_HEADS, AUDIT_EVENTS
from idhub.tenants.service import TenantInfo
from tests.conftest import TEST_ACTOR, TEST_MASTER_KEY, Env

KEY = derive_key(base64.urlsafe_b64decode(TEST_MASTER_KEY), "audit-archive")


def _tenant(env: Env, users: int = 4) -> TenantInfo:
    tenant = env.tenant()
    for index in range(users):
        env.user(tenant, f"user{index}", password=None)
    return tenant


def _archive(env: Env, tenant: TenantInfo, directory: Path, batch: int = 2) -> list[ArchivedFile]:
    # A cutoff of now: every entry written so far is due, the archive run's own entries are not.
    async def work() -> list[ArchivedFile]:
        return await archive_tenant(
            env.ctx.uow_factory,
            chain=env.ctx.audit.chain,
            key=KEY,
            tenant_id=tenant.id,
            slug=tenant.slug,
            days=1,
            directory=directory,
            batch=batch,
            actor=TEST_ACTOR,
            now=datetime.now(UTC) + timedelta(days=1),
        )

    return env.run(work)


def _verify(env: Env, tenant: TenantInfo) -> Verdict:
    async def work() -> Verdict:
        async with env.ctx.sessionmaker() as session:
            return await verify(session, env.ctx.audit.chain, tenant.id, batch=2)

    return env.run(work)


def _verify_with(env: Env, tenant: TenantInfo, paths: list[Path]) -> ArchiveReport:
    async def work() -> ArchiveReport:
        async with env.ctx.sessionmaker() as session:
            return await verify_with_archives(
                session, chain=env.ctx.audit.chain, key=KEY, tenant_id=tenant.id, paths=paths, batch=2
            )

    return env.run(work)


def _sql(env: Env, statement: Any) -> None:
    async def work() -> None:
        async with env.ctx.sessionmaker() as session, session.begin():
            await session.execute(statement)

    env.run(work)


def _seqs(env: Env, tenant: TenantInfo) -> list[int]:
    async def work() -> list[int]:
        async with env.ctx.sessionmaker() as session:
            query = select(AUDIT_EVENTS.c.seq).where(AUDIT_EVENTS.c.tenant_id == tenant.id).order_by(AUDIT_EVENTS.c.seq)
            return list((await session.scalars(query)).all())

    return env.run(work)


def test_archive_moves_the_prefix_into_sealed_files_and_keeps_an_anchor(env: Env, tmp_path: Path) -> None:
    tenant = _tenant(env)  # entries 1 (tenant) to 5 (users)
    files = _archive(env, tenant, tmp_path)
    assert [(found.first_seq, found.last_seq) for found in files] == [(1, 2), (3, 4), (5, 5)]
    # Each batch recorded itself on the chain (entries 6 to 8), after the cutoff: they stay.
    assert _seqs(env, tenant) == [6, 7, 8]
    verdict = _verify(env, tenant)
    assert verdict.intact and verdict.anchor is not None and verdict.anchor.seq == 5 and verdict.entries == 3
    report = _verify_with(env, tenant, [found.path for found in files])
    assert report.intact and report.starts_at == 1
    header = json.loads(files[0].path.read_text().splitlines()[0])
    assert header["format"] == "idhub-audit-archive" and header["tenant"] == tenant.slug
    assert header["first_seq"] == 1 and header["prev_hash"] == "0" * 64
    lines = [json.loads(line) for line in files[1].path.read_text().splitlines()[1:-1]]
    assert [line["seq"] for line in lines] == [3, 4]
    assert {"actor_id", "target_id", "outcome", "source_address", "request_id", "hash"} <= set(lines[0])
    # A later run takes the first run's own records; new appends chain on after the anchor.
    again = _archive(env, tenant, tmp_path, batch=10)
    assert [(found.first_seq, found.last_seq) for found in again] == [(6, 8)]
    env.user(tenant, "later", password=None)
    assert _verify(env, tenant).intact
    assert _verify_with(env, tenant, [found.path for found in files + again]).intact


def test_a_forged_anchor_fails_the_head_mac(env: Env, tmp_path: Path) -> None:
    tenant = _tenant(env)
    _archive(env, tenant, tmp_path)
    _sql(
        env,
        update(AUDIT_CHAIN_HEADS).where(AUDIT_CHAIN_HEADS.c.tenant_id == tenant.id).values(archived_seq=2),
    )
    verdict = _verify(env, tenant)
    assert not verdict.intact and "head was changed" in (verdict.reason or "")


def test_a_prefix_deleted_without_an_anchor_is_found(env: Env) -> None:
    tenant = _tenant(env)
    _sql(env, delete(AUDIT_EVENTS).where(AUDIT_EVENTS.c.tenant_id == tenant.id, AUDIT_EVENTS.c.seq <= 2))
    verdict = _verify(env, tenant)
    assert not verdict.intact and verdict.broken_seq == 3 and verdict.reason == "entry 1 is missing"


def test_entries_deleted_after_the_anchor_are_found(env: Env, tmp_path: Path) -> None:
    tenant = _tenant(env)
    _archive(env, tenant, tmp_path, batch=3)  # 1-3, 4-5; the database keeps 6 and 7
    _sql(env, delete(AUDIT_EVENTS).where(AUDIT_EVENTS.c.tenant_id == tenant.id, AUDIT_EVENTS.c.seq == 6))
    verdict = _verify(env, tenant)
    assert verdict.broken_seq == 7 and "entry 6 is missing" in (verdict.reason or "")


def test_a_flipped_byte_in_a_file_is_found(env: Env, tmp_path: Path) -> None:
    tenant = _tenant(env)
    files = _archive(env, tenant, tmp_path)
    data = bytearray(files[1].path.read_bytes())
    at = data.index(b'"actor_id": "') + len(b'"actor_id": "')
    data[at] ^= 0x01
    files[1].path.write_bytes(bytes(data))
    report = _verify_with(env, tenant, [found.path for found in files])
    assert not report.intact and report.broken_file == files[1].path
    assert "seal does not match" in (report.reason or "")


def test_a_missing_middle_file_is_found(env: Env, tmp_path: Path) -> None:
    tenant = _tenant(env)
    files = _archive(env, tenant, tmp_path)
    report = _verify_with(env, tenant, [files[0].path, files[2].path])
    assert not report.intact and report.broken_file == files[2].path
    assert "entries 3 to 4 are in no archive file" in (report.reason or "")
    offline = check_files([files[0].path, files[2].path], chain=env.ctx.audit.chain, key=KEY)
    assert not offline.intact and "missing" in (offline.reason or "")


def test_a_missing_newest_file_is_found(env: Env, tmp_path: Path) -> None:
    tenant = _tenant(env)
    files = _archive(env, tenant, tmp_path)
    report = _verify_with(env, tenant, [files[0].path, files[1].path])
    assert not report.intact and "entries 5 to 5 were archived but are in no archive file" in (report.reason or "")


def test_a_run_that_died_before_its_delete_leaves_an_overlap_that_verifies(env: Env, tmp_path: Path) -> None:
    tenant = _tenant(env)

    class Died(Exception):
        pass

    async def die_before_commit() -> None:
        from idhub.audit.archive import _archive_batch

        with pytest.raises(Died):
            async with env.ctx.uow_factory(actor=TEST_ACTOR, surface="test") as uow:
                found = await _archive_batch(
                    uow,
                    chain=env.ctx.audit.chain,
                    key=KEY,
                    tenant_id=tenant.id,
                    slug=tenant.slug,
                    cutoff=datetime.now(UTC),
                    directory=tmp_path,
                    batch=3,
                )
                assert found is not None and found.path.exists()
                raise Died  # the process dies: the file is on disk, the delete never commits

    env.run(die_before_commit)
    [written] = list(tmp_path.iterdir())
    assert _seqs(env, tenant) == [1, 2, 3, 4, 5]  # nothing vanished
    report = _verify_with(env, tenant, [written])
    assert report.intact, report.reason
    # The next run archives the same entries again (the same file name) and moves on.
    files = _archive(env, tenant, tmp_path, batch=3)
    assert files[0].path == written
    assert _verify_with(env, tenant, [found.path for found in files]).intact


def test_unchained_entries_from_before_the_chain_are_archived_too(env: Env, tmp_path: Path) -> None:
    tenant = _tenant(env, users=1)
    old = datetime.now(UTC) - timedelta(days=400)
    legacy = [
        {
            "id": uuid.uuid4(),
            "tenant_id": tenant.id,
            "occurred_at": old + timedelta(minutes=index),
            "actor_type": "cli",
            "actor_id": "old",
            "action": "user.create",
            "target_type": "User",
            "target_id": str(index),
            "outcome": "success",
            "details": {},
        }
        for index in range(3)
    ]
    _sql(env, AUDIT_EVENTS.insert().values(legacy))
    files = _archive(env, tenant, tmp_path, batch=2)
    assert [(found.unchained, found.entries) for found in files] == [(2, 0), (1, 1), (0, 1)]
    verdict = _verify(env, tenant)
    assert verdict.intact and verdict.unchained == 0
    report = _verify_with(env, tenant, [found.path for found in files])
    assert report.intact and sum(file.unchained for file in report.files) == 3


def test_files_of_another_tenant_are_refused(env: Env, tmp_path: Path) -> None:
    first, second = _tenant(env, 1), _tenant(env, 1)
    files = _archive(env, first, tmp_path)
    with pytest.raises(Invalid):
        _verify_with(env, second, [files[0].path])


def test_retention_days_tenant_setting_overrides_the_default() -> None:
    assert retention_days({}, 30) == 30
    assert retention_days({"audit_retention_days": 7}, 30) == 7
    assert retention_days({"audit_retention_days": None}, 30) is None


def test_cli_audit_archive_verify_and_tamper(tmp_path: Path) -> None:
    data = tmp_path / "data"
    environ = {
        "IDHUB_DATA_DIR": str(data),
        "IDHUB_DATABASE_URL": f"sqlite+aiosqlite:///{data}/idhub.db",
        "IDHUB_MASTER_KEY": base64.urlsafe_b64encode(os.urandom(32)).decode(),
    }
    runner = CliRunner()
    for args in (["init", "--tenant", "acme"], ["user", "create", "--tenant", "acme", "--username", "alice"]):
        assert runner.invoke(main, args, env=environ).exit_code == 0
    kept = runner.invoke(main, ["audit", "archive", "--json"], env=environ)
    assert kept.exit_code == 0, kept.output
    assert json.loads(kept.output)["tenants"][0]["retention_days"] is None  # the default keeps everything
    result = runner.invoke(main, ["audit", "retention", "--tenant", "acme", "--days", "30", "--json"], env=environ)
    assert result.exit_code == 0 and json.loads(result.output)["retention_days"] == 30
    # Five entries: the tenant, its admin client and that client's machine policy (init), alice, the retention.
    archived = runner.invoke(main, ["audit", "archive", "--days", "0", "--batch", "3", "--json"], env=environ)
    assert archived.exit_code == 0, archived.output
    report = json.loads(archived.output)
    paths = [found["file"] for found in report["files"]]
    assert report["directory"] == str(data / "audit-archive") and len(paths) == 2
    assert [(found["first_seq"], found["last_seq"]) for found in report["files"]] == [(1, 3), (4, 5)]
    arguments = [argument for path in paths for argument in ("--archive", path)]
    verified = runner.invoke(main, ["audit", "verify", "--json", *arguments], env=environ)
    assert verified.exit_code == 0, verified.output
    assert json.loads(verified.output)["tenants"][0]["archive_entries"] == 5
    alone = runner.invoke(main, ["audit", "verify", "--json"], env=environ)
    assert alone.exit_code == 0 and json.loads(alone.output)["tenants"][0]["archived_seq"] == 5
    offline = runner.invoke(main, ["audit", "verify-archive", "--input", paths[0], "--input", paths[1]], env=environ)
    assert offline.exit_code == 0, offline.output
    Path(paths[0]).write_bytes(Path(paths[0]).read_bytes().replace(b'"cli"', b'"clj"', 1))
    broken = runner.invoke(main, ["audit", "verify", "--tenant", "acme", *arguments], env=environ)
    assert broken.exit_code == 1 and "BROKEN" in broken.output and paths[0] in broken.output
    # Only the newer file: a check from entry 4 on (said so), as the database alone checks from its anchor.
    partial = runner.invoke(main, ["audit", "verify", "--json", "--archive", paths[1]], env=environ)
    assert partial.exit_code == 0 and json.loads(partial.output)["tenants"][0]["starts_at"] == 4
    garbage = tmp_path / "garbage.jsonl"
    garbage.write_text("hello\n")
    refused = runner.invoke(main, ["audit", "verify-archive", "--input", str(garbage)], env=environ)
    assert refused.exit_code == 2 and refused.output.startswith("error:")
