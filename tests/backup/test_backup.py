"""Backups round trip on SQLite and PostgreSQL (and between them), and refuse damaged files and busy targets."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import select

from idhub.audit.chain import verify
from idhub.backup.body import batches, read_manifest
from idhub.backup.restore import verify_backup
from idhub.backup.schema import TableSpec, unscoped_tables
from idhub.backup.sealed import WRONG_KEY, BackupFileError, lines, open_chunks, read_header
from idhub.errors import Conflict
from idhub.storage.base import Base, utcnow
from idhub.storage.engine import create_engine
from idhub.storage.migrate import upgrade
from idhub.storage.models import FederatedIdentity, GroupMember, SigningKey, User
from tests.backup.helpers import MASTER, backup, backup_url, empty_target, restore, seed, served
from tests.conftest import Env
from tests.oidc.grants.helpers import basic, introspect, post

BACKENDS = ["sqlite", "postgresql"]


def _rows(path: Path) -> dict[str, list[bytes]]:
    """Return every table's rows of a backup, each as canonical JSON, sorted (order-free comparison)."""
    found: dict[str, list[bytes]] = {}
    with path.open("rb") as source:
        header = read_header(source)
        body = lines(open_chunks(source, MASTER, header))
        manifest = read_manifest(body)
        for table, rows in batches(manifest, body, 500):
            found.setdefault(table.name, []).extend(orjson.dumps(row, default=str) for row in rows)
    return {name: sorted(rows) for name, rows in found.items()}


def _flip(path: Path, offset: int) -> Path:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    changed = path.with_suffix(".flipped")
    changed.write_bytes(bytes(data))
    return changed


@pytest.fixture
def seeded_backup(env: Env, tmp_path: Path) -> Iterator[tuple[Any, Path]]:
    seeded = seed(env)
    path = tmp_path / "tenant.idhub-backup"
    backup(env, path, tenant=seeded.tenant.slug)
    yield seeded, path


def test_every_table_belongs_to_a_tenant() -> None:
    # A new table that the foreign keys do not tie to a tenant would silently drop out of tenant backups:
    # decide where it belongs (a tenant_id, or a non-nullable key to a tenant's table) when this fails.
    assert unscoped_tables(list(Base.metadata.sorted_tables)) == []


@pytest.mark.parametrize("target", BACKENDS)
def test_backup_restore_round_trip_same_rows(
    env: Env, tmp_path: Path, seeded_backup: tuple[Any, Path], target: str
) -> None:
    seeded, path = seeded_backup
    before = _rows(path)
    for table in (
        "user",
        "user_value",
        "group",
        "group_member",
        "client",
        "federated_identity",
        "identity_provider",
        "signing_key",
        "user_session",
        "grant",
        "refresh_token",
        "consent",
        "audit_event",
        "audit_chain_head",
        "tenant",
    ):
        assert before.get(table), f"the seeded tenant has no {table} rows"
    url = empty_target(target, tmp_path, f"rt_{env.backend}")
    restored = restore(url, path)
    assert restored.counts == {name: len(rows) for name, rows in before.items()} | {
        name: 0 for name in restored.counts if name not in before
    }
    again = tmp_path / "again.idhub-backup"
    summary = backup_url(url, again)
    assert summary.tenants and [slug for _id, slug in summary.tenants] == [seeded.tenant.slug]
    assert _rows(again) == before


@pytest.mark.parametrize("target", BACKENDS)
def test_restore_tokens_validate_refresh_and_audit_verifies(
    env: Env, tmp_path: Path, seeded_backup: tuple[Any, Path], target: str
) -> None:
    seeded, path = seeded_backup
    url = empty_target(target, tmp_path, f"tok_{env.backend}")
    restore(url, path)
    with served(url, tmp_path / "served") as restored:
        tenant = restored.run(restored.ctx.tenants.get, seeded.tenant.slug)
        access = seeded.tokens["access_token"]
        assert introspect(restored, tenant, access, seeded.client_id, seeded.secret)["active"] is True
        data = {"grant_type": "refresh_token", "refresh_token": seeded.tokens["refresh_token"]}
        refreshed = post(restored, tenant, "token", data, basic(seeded.client_id, seeded.secret))
        assert refreshed.status_code == 200, refreshed.text
        assert introspect(restored, tenant, refreshed.json()["access_token"], seeded.client_id, seeded.secret)["active"]

        async def check() -> Any:
            async with restored.ctx.sessionmaker() as session:
                return await verify(session, restored.ctx.audit.chain, tenant.id)

        verdict = restored.run(check)
        assert verdict.intact and verdict.entries > 0


def test_backup_verify_flipped_byte_anywhere_refused(env: Env, seeded_backup: tuple[Any, Path]) -> None:
    _seeded, path = seeded_backup
    assert verify_backup(path, master_key=MASTER).counts["user"] == 2
    size = path.stat().st_size
    for offset, message in ((3, "not an idhub backup"), (20, ""), (size // 2, ""), (size - 1, "")):
        with pytest.raises(BackupFileError) as caught:
            verify_backup(_flip(path, offset), master_key=MASTER)
        assert message in caught.value.detail


def test_backup_verify_flipped_header_reads_as_wrong_key_or_damage(env: Env, seeded_backup: tuple[Any, Path]) -> None:
    _seeded, path = seeded_backup
    data = path.read_bytes()
    at = data.index(b'"dialect"') + 12  # inside the dialect's value: still JSON, no longer authentic
    with pytest.raises(BackupFileError) as caught:
        verify_backup(_flip(path, at), master_key=MASTER)
    assert "wrong master key or damaged file" in caught.value.detail


def test_backup_verify_truncated_or_extended_refused(env: Env, seeded_backup: tuple[Any, Path], tmp_path: Path) -> None:
    _seeded, path = seeded_backup
    data = path.read_bytes()
    for variant in (data[:-1], data[: len(data) // 2], data + b"\x00" * 17):
        cut = tmp_path / "variant.idhub-backup"
        cut.write_bytes(variant)
        with pytest.raises(BackupFileError):
            verify_backup(cut, master_key=MASTER)


def test_backup_wrong_master_key_refused_clearly(env: Env, seeded_backup: tuple[Any, Path], tmp_path: Path) -> None:
    _seeded, path = seeded_backup
    other = bytes(range(100, 132))
    with pytest.raises(BackupFileError) as caught:
        verify_backup(path, master_key=other)
    assert caught.value.detail == WRONG_KEY
    url = empty_target("sqlite", tmp_path, "wrongkey")
    with pytest.raises(BackupFileError):
        restore(url, path, master_key=other)


def test_restore_damaged_file_leaves_target_empty(env: Env, seeded_backup: tuple[Any, Path], tmp_path: Path) -> None:
    _seeded, path = seeded_backup
    url = empty_target(env.backend, tmp_path, f"damaged_{env.backend}")
    with pytest.raises(BackupFileError):
        restore(url, _flip(path, path.stat().st_size - 5))
    # Nothing went in; the same target takes the intact file afterwards.
    restored = restore(url, path)
    assert restored.counts["tenant"] == 1


def test_restore_into_database_holding_the_tenant_refused(env: Env, seeded_backup: tuple[Any, Path]) -> None:
    _seeded, path = seeded_backup
    url = env.ctx.settings.database_url
    with pytest.raises(Conflict, match="already holds tenant"):
        restore(url, path)


def test_restore_full_backup_into_non_empty_database_refused(env: Env, tmp_path: Path) -> None:
    source = empty_target(env.backend, tmp_path, f"full_{env.backend}")
    with served(source, tmp_path / "src") as src:
        seed(src)
    path = tmp_path / "full.idhub-backup"
    summary = backup_url(source, path)
    assert summary.tenant is None and len(summary.tenants) == 1
    with pytest.raises(Conflict, match="not empty"):
        restore(source, path)


def test_backup_of_a_tenant_holds_only_that_tenant(env: Env, seeded_backup: tuple[Any, Path]) -> None:
    seeded, path = seeded_backup
    other = seed(env)  # a neighbour with the same usernames
    rows = _rows(path)
    assert len(rows["tenant"]) == 1 and seeded.tenant.slug.encode() in rows["tenant"][0]
    for table, found in rows.items():
        for row in found:
            assert str(other.tenant.id).encode() not in row, table
    # Child tables without tenant_id come through their parents.
    assert len(rows["group_member"]) == 2
    assert len(rows["user_value"]) == 2


OLD_REVISION = "0007"


def _old_database(url: str) -> dict[str, uuid.UUID]:
    """Migrate a database to an older revision and write rows as that schema has them."""
    upgrade(url, OLD_REVISION)
    ids = {"tenant": uuid.uuid4(), "user": uuid.uuid4(), "event": uuid.uuid4()}
    now = utcnow()

    async def work() -> None:
        engine = create_engine(url)
        try:
            async with engine.begin() as connection:
                tenant = TableSpec(
                    "tenant",
                    (
                        ("id", "uuid"),
                        ("slug", "str"),
                        ("name", "str"),
                        ("settings", "json"),
                        ("created_at", "datetime"),
                    ),
                ).clause()
                await connection.execute(
                    tenant.insert().values(id=ids["tenant"], slug="old", name="Old", settings={}, created_at=now)
                )
                await connection.execute(
                    User.__table__.insert().values(
                        id=ids["user"],
                        tenant_id=ids["tenant"],
                        username="olduser",
                        user_name="OldUser",
                        email="old@example.com",
                        version=1,
                        created_at=now,
                        updated_at=now,
                    )
                )
                event = TableSpec(
                    "audit_event",
                    (
                        ("id", "uuid"),
                        ("tenant_id", "uuid"),
                        ("occurred_at", "datetime"),
                        ("actor_type", "str"),
                        ("actor_id", "str"),
                        ("action", "str"),
                        ("target_type", "str"),
                        ("target_id", "str"),
                        ("outcome", "str"),
                        ("details", "json"),
                    ),
                ).clause()
                await connection.execute(
                    event.insert().values(
                        id=ids["event"],
                        tenant_id=ids["tenant"],
                        occurred_at=now,
                        actor_type="cli",
                        actor_id="op",
                        action="user.create",
                        target_type="User",
                        target_id=str(ids["user"]),
                        outcome="success",
                        details={},
                    )
                )
        finally:
            await engine.dispose()

    asyncio.run(work())
    return ids


@pytest.mark.parametrize("premigrated", [False, True], ids=["empty", "migrated-empty"])
@pytest.mark.parametrize("target", BACKENDS)
def test_restore_backup_of_older_revision_migrates_forward(
    env: Env, tmp_path: Path, target: str, premigrated: bool
) -> None:
    source = empty_target(env.backend, tmp_path, f"old_{env.backend}")
    ids = _old_database(source)
    path = tmp_path / "old.idhub-backup"
    summary = backup_url(source, path)
    assert summary.revision == OLD_REVISION and "audit_chain_head" not in summary.counts
    destination = empty_target(target, tmp_path, f"oldto_{env.backend}")
    if premigrated:  # an operator ran idhub migrate on the new database first: taken back, then forward
        upgrade(destination, "head")
    restore(destination, path)
    with served(destination, tmp_path / "served-old") as restored:

        async def check() -> Any:
            async with restored.ctx.sessionmaker() as session:
                user = await session.scalar(select(User).where(User.id == ids["user"]))
                verdict = await verify(session, restored.ctx.audit.chain, ids["tenant"])
                return user, verdict

        user, verdict = restored.run(check)
        assert user is not None and user.email == "old@example.com" and user.archive is None
        assert verdict.intact and verdict.unchained == 1  # an entry from before the chain, counted apart
        restored.run(_assert_head, restored)


async def _assert_head(env: Env) -> None:
    async with env.ctx.engine.connect() as connection:
        from sqlalchemy import text

        assert (await connection.execute(text("SELECT version_num FROM alembic_version"))).scalar() != OLD_REVISION


def test_restored_rows_keep_their_types(env: Env, seeded_backup: tuple[Any, Path], tmp_path: Path) -> None:
    seeded, path = seeded_backup
    target = "postgresql" if env.backend == "sqlite" else "sqlite"
    url = empty_target(target, tmp_path, f"types_{env.backend}")
    restore(url, path)
    with served(url, tmp_path / "served-types") as restored:

        async def check() -> Any:
            async with restored.ctx.sessionmaker() as session:
                link = await session.get(FederatedIdentity, uuid.UUID(seeded.link_id))
                members = (await session.scalars(select(GroupMember.user_id))).all()
                keys = (await session.scalars(select(SigningKey).where(SigningKey.tenant_id == seeded.tenant.id))).all()
                return link, members, keys

        link, members, keys = restored.run(check)
        assert link is not None and link.subject == "corp-alice" and link.created_at.tzinfo is not None
        assert {str(m) for m in members} == {seeded.alice, seeded.bob}
        assert keys and all(isinstance(k.private_key_encrypted, bytes) and k.public_jwk for k in keys)
        for key in keys:  # the private keys open under the same master key
            assert restored.ctx.sealer.open(key.private_key_encrypted, context=f"signing-key:{key.kid}")


def test_restore_tenant_into_database_with_other_tenants_renumbers_log_rows(env: Env, tmp_path: Path) -> None:
    source = empty_target(env.backend, tmp_path, f"scoped_{env.backend}")
    with served(source, tmp_path / "scoped-src") as src:
        moved = seed(src)
        src.disable_user(moved.tenant, moved.bob)  # a revocation row (numbered by the database)
    path = tmp_path / "moved.idhub-backup"
    backup_url(source, path, tenant=moved.tenant.slug)
    destination = empty_target(env.backend, tmp_path, f"scopedto_{env.backend}")
    with served(destination, tmp_path / "scoped-dst") as dst:
        neighbour = seed(dst)
        dst.disable_user(neighbour.tenant, neighbour.bob)  # holds revocation id 1 already
    restored = restore(destination, path)
    assert restored.counts["revocation"] == 1
    with served(destination, tmp_path / "scoped-dst2") as dst:
        tenant = dst.run(dst.ctx.tenants.get, moved.tenant.slug)
        assert tenant is not None
        assert introspect(dst, tenant, moved.tokens["access_token"], moved.client_id, moved.secret)["active"]
        dst.disable_user(tenant, moved.alice)  # the next revocation still gets a fresh number
        assert introspect(dst, tenant, moved.tokens["access_token"], moved.client_id, moved.secret) == {"active": False}


class _WritesDuringBackup:
    """A file object that, on the backup's first write (its snapshot taken), adds a user from another connection."""

    def __init__(self, path: Path, url: str, tenant_id: uuid.UUID) -> None:
        self._out = path.open("wb")
        self._url = url
        self._tenant_id = tenant_id
        self.added: uuid.UUID | None = None

    def write(self, data: bytes) -> int:
        if self.added is None:
            self.added = uuid.uuid4()
            thread = threading.Thread(target=asyncio.run, args=(self._insert(),))
            thread.start()
            thread.join()
        return self._out.write(data)

    async def _insert(self) -> None:
        engine = create_engine(self._url)
        try:
            async with engine.begin() as connection:
                now = utcnow()
                await connection.execute(
                    User.__table__.insert().values(
                        id=self.added,
                        tenant_id=self._tenant_id,
                        username="latecomer",
                        version=1,
                        created_at=now,
                        updated_at=now,
                    )
                )
        finally:
            await engine.dispose()

    def flush(self) -> None:
        self._out.flush()

    def close(self) -> None:
        self._out.close()


def test_backup_is_one_snapshot_writes_during_it_stay_out(env: Env, tmp_path: Path) -> None:
    from idhub.backup.dump import write_backup

    seeded = seed(env)
    path = tmp_path / "snapshot.idhub-backup"
    out = _WritesDuringBackup(path, env.ctx.settings.database_url, seeded.tenant.id)

    async def work() -> Any:
        return await write_backup(env.ctx.engine, out, master_key=MASTER, tenant=seeded.tenant.slug)  # type: ignore[arg-type]

    summary = env.run(work)
    out.close()
    assert out.added is not None and summary.counts["user"] == 2  # alice and bob; the latecomer came after
    assert verify_backup(path, master_key=MASTER).counts["user"] == 2
    assert _user_exists(env, out.added)


def _user_exists(env: Env, user_id: uuid.UUID) -> bool:
    async def work() -> bool:
        async with env.ctx.sessionmaker() as session:
            return await session.get(User, user_id) is not None

    result: bool = env.run(work)
    return result
