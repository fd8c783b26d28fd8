"""Audit retention: a tenant's oldest entries move to sealed archive files, and the files are checked.

An archive file is JSON lines: a header (tenant, the numbers and hashes where the file's stretch of the
chain starts and ends, counts, creation time, format version), then the entries exactly as ``idhub
audit export`` writes them (entries from before the chain existed first, then the chain in number
order), then a seal line: an HMAC-SHA256, keyed from the master key for ``audit-archive``, over every
byte before it. The entries keep their chain MACs, so one file checks out on its own (seal, numbering,
each entry's MAC and ``prev_hash``), consecutive files link by number and hash, and the last file links
to the database, whose head keeps the anchor (``archived_seq``, ``archived_hash``) under its own MAC.

Only a prefix of the chain is archived: entries in number order as long as they are older than the
retention (one newer entry stops the run, so the database always holds an unbroken tail). Each batch
(:attr:`~idhub.settings.AuditSettings.archive_batch` entries) is one file and one short transaction:
the file is written and fsynced first, then the entries are deleted in the transaction that moves the
anchor. A process that dies in between leaves the entries both in a file and in the database; the next
run archives them again into a file of the same name, and verification accepts files that overlap.

Hand-written: no library keeps sealed, chained audit archives; the primitives are ``hmac`` and
``hashlib``, the files plain ``os`` calls (``fsync`` of the file and its directory).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import bindparam, delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from idhub.audit.chain import GENESIS, Anchor, AuditChain, Verdict, row_json, verify
from idhub.errors import Conflict, Invalid
from idhub.events import ANONYMOUS, Actor, AuditArchived, TenantChanged
from idhub.storage.base import utcnow
from idhub.storage.models import Tenant
from idhub.storage.tables import AUDIT_CHAIN_HEADS, AUDIT_EVENTS
from idhub.storage.uow import UnitOfWork, UnitOfWorkFactory
from idhub.tenants.service import require_tenant

FORMAT = "idhub-audit-archive"
VERSION = 1
RETENTION_SETTING = "audit_retention_days"

_HEAD = AUDIT_CHAIN_HEADS.c
_EVENT = AUDIT_EVENTS.c
# Lock the tenant's head and read it in one statement, on both backends: a no-op UPDATE takes the row
# lock on PostgreSQL and the write lock on SQLite (whose driver starts a transaction only on a write).
_LOCK_HEAD = (
    update(AUDIT_CHAIN_HEADS)
    .where(_HEAD.tenant_id == bindparam("p_tenant_id"))
    .values(seq=_HEAD.seq)
    .returning(_HEAD.seq, _HEAD.hash, _HEAD.archived_seq, _HEAD.archived_hash)
)


def seal(key: bytes, data: bytes) -> str:
    """Return the seal of an archive file's bytes before its seal line."""
    return hmac.new(key, data, hashlib.sha256).hexdigest()


def retention_days(tenant_settings: dict[str, Any] | None, default: int | None) -> int | None:
    """Return a tenant's retention in days: its own setting when it has one (``None``: keep forever)."""
    settings = tenant_settings or {}
    if RETENTION_SETTING not in settings:
        return default
    value = settings[RETENTION_SETTING]
    return int(value) if value is not None else None


async def set_retention(uow: UnitOfWork, *, slug: str, days: int | None, inherit: bool = False) -> Tenant:
    """Set how many days a tenant's audit entries stay in the database (``None``: forever; ``inherit``: the default)."""
    if days is not None and not 1 <= days <= 36500:
        raise Invalid("audit retention must be 1 to 36500 days")
    tenant = await require_tenant(uow.session, slug)
    settings = {key: value for key, value in (tenant.settings or {}).items() if key != RETENTION_SETTING}
    if not inherit:
        settings[RETENTION_SETTING] = days
    tenant.settings = settings
    await uow.session.flush()
    uow.raise_event(TenantChanged(tenant_id=tenant.id, slug=tenant.slug, changed=(RETENTION_SETTING,)))
    return tenant


@dataclass(frozen=True, slots=True)
class ArchivedFile:
    """One archive file written by :func:`archive_tenant`."""

    path: Path
    entries: int  # chained entries
    unchained: int  # entries from before the chain existed
    first_seq: int | None
    last_seq: int | None

    def describe(self) -> dict[str, Any]:
        """Return the file as the CLI prints it."""
        return {
            "file": str(self.path),
            "entries": self.entries,
            "unchained": self.unchained,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
        }


def _safe(slug: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", slug)[:64] or "tenant"


def _write_sealed(path: Path, key: bytes, lines: Iterable[str]) -> None:
    """Write lines and their seal to ``path`` durably: a temporary file, fsynced, renamed, directory fsynced."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    mac = hmac.new(key, digestmod=hashlib.sha256)
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            for line in lines:
                data = line.encode() + b"\n"
                mac.update(data)
                handle.write(data)
            handle.write(json.dumps({"seal": mac.hexdigest()}).encode() + b"\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename itself survives a crash
    finally:
        os.close(directory)


async def _archive_batch(
    uow: UnitOfWork,
    *,
    chain: AuditChain,
    key: bytes,
    tenant_id: uuid.UUID,
    slug: str,
    cutoff: datetime,
    directory: Path,
    batch: int,
) -> ArchivedFile | None:
    """Archive one batch of a tenant's oldest entries in ``uow``'s transaction; None when nothing is due."""
    session = uow.session
    head = (await session.execute(select(AUDIT_CHAIN_HEADS).where(_HEAD.tenant_id == tenant_id))).first()
    anchor = Anchor.of(head.archived_seq, head.archived_hash) if head is not None else None
    legacy = (
        await session.execute(
            select(AUDIT_EVENTS)
            .where(_EVENT.tenant_id == tenant_id, _EVENT.seq.is_(None), _EVENT.occurred_at < cutoff)
            .order_by(_EVENT.occurred_at, _EVENT.id)
            .limit(batch)
        )
    ).all()
    chained: list[Any] = []
    expected, previous = (anchor.seq + 1, anchor.hash) if anchor is not None else (1, GENESIS)
    first_prev = previous
    if len(legacy) < batch and head is not None:
        rows = (
            await session.execute(
                select(AUDIT_EVENTS)
                .where(_EVENT.tenant_id == tenant_id, _EVENT.seq >= expected)
                .order_by(_EVENT.seq)
                .limit(batch - len(legacy))
            )
        ).all()
        for row in rows:
            if row.occurred_at >= cutoff:
                break  # a prefix only: the database keeps an unbroken tail
            # Nothing broken is sealed into a file as if it were sound: the run stops for a person to look.
            if (
                row.seq != expected
                or row.prev_hash != previous
                or not hmac.compare_digest(row.hash or "", chain.entry_hash(row))
            ):
                raise Conflict(f"the audit chain is broken at entry {expected}; run idhub audit verify")
            chained.append(row)
            previous, expected = row.hash, expected + 1
    if not legacy and not chained:
        return None
    first_seq = chained[0].seq if chained else None
    last_seq = chained[-1].seq if chained else None
    created = utcnow()
    if chained:
        name = f"audit-{_safe(slug)}-{first_seq:012d}-{last_seq:012d}.jsonl"
    else:
        name = f"audit-{_safe(slug)}-unchained-{created:%Y%m%dT%H%M%S%f}.jsonl"
    header = {
        "format": FORMAT,
        "version": VERSION,
        "tenant_id": str(tenant_id),
        "tenant": slug,
        "created_at": created.isoformat(),
        "entries": len(chained),
        "unchained": len(legacy),
        "first_seq": first_seq,
        "last_seq": last_seq,
        "prev_hash": first_prev if chained else None,
        "last_hash": chained[-1].hash if chained else None,
    }
    path = directory / name
    lines = [json.dumps(header), *(row_json(row) for row in legacy), *(row_json(row) for row in chained)]
    _write_sealed(path, key, lines)

    # The file is durable; now the entries leave the database together with the anchor's move.
    if chained:
        locked = (await session.execute(_LOCK_HEAD, {"p_tenant_id": tenant_id})).first()
        if locked is None or Anchor.of(locked.archived_seq, locked.archived_hash) != anchor:
            raise Conflict("another run archived this tenant's audit log meanwhile; run again")
        new_anchor = Anchor(chained[-1].seq, chained[-1].hash)
        await session.execute(
            update(AUDIT_CHAIN_HEADS)
            .where(_HEAD.tenant_id == tenant_id)
            .values(
                archived_seq=new_anchor.seq,
                archived_hash=new_anchor.hash,
                mac=chain.head_mac(tenant_id, locked.seq, locked.hash, new_anchor),
            )
        )
        await session.execute(
            delete(AUDIT_EVENTS).where(
                _EVENT.tenant_id == tenant_id, _EVENT.seq >= first_seq, _EVENT.seq <= new_anchor.seq
            )
        )
    if legacy:
        await session.execute(
            delete(AUDIT_EVENTS).where(_EVENT.tenant_id == tenant_id, _EVENT.id.in_([row.id for row in legacy]))
        )
    uow.raise_event(
        AuditArchived(
            tenant_id=tenant_id,
            file=name,
            entries=len(chained),
            unchained=len(legacy),
            first_seq=first_seq,
            last_seq=last_seq,
            last_hash=chained[-1].hash if chained else None,
        )
    )
    return ArchivedFile(path, len(chained), len(legacy), first_seq, last_seq)


async def archive_tenant(
    uow_factory: UnitOfWorkFactory,
    *,
    chain: AuditChain,
    key: bytes,
    tenant_id: uuid.UUID,
    slug: str,
    days: int,
    directory: Path,
    batch: int = 10_000,
    actor: Actor = ANONYMOUS,
    surface: str = "cli",
    now: datetime | None = None,
) -> list[ArchivedFile]:
    """Move a tenant's entries older than ``days`` into sealed files under ``directory``, a batch per file.

    ``days`` 0 archives everything written before the call (an operator's explicit choice).

    Each batch is its own unit of work (file first, then delete and anchor in one commit), so a large
    backlog holds the tenant's head, and with it the tenant's audited changes, for one batch at a time.
    """
    cutoff = (now or datetime.now(UTC)) - timedelta(days=days)
    written: list[ArchivedFile] = []
    while True:
        async with uow_factory(actor=actor, surface=surface) as uow:
            archived = await _archive_batch(
                uow,
                chain=chain,
                key=key,
                tenant_id=tenant_id,
                slug=slug,
                cutoff=cutoff,
                directory=directory,
                batch=batch,
            )
        chain.forget(tenant_id)  # the anchor moved: this process's next append goes the long way once
        if archived is None:
            return written
        written.append(archived)
        if archived.entries + archived.unchained < batch:
            return written  # the due prefix ended inside this batch


# --- verification ---------------------------------------------------------------------------------


@dataclass(slots=True)
class FileVerdict:
    """What :func:`verify_file` found in one archive file."""

    path: Path
    tenant_id: uuid.UUID | None = None
    entries: int = 0
    unchained: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    prev_hash: str | None = None
    last_hash: str | None = None
    broken_seq: int | None = None
    reason: str | None = None
    hashes: dict[int, str] = field(default_factory=dict)

    @property
    def intact(self) -> bool:
        """Tell whether the file checked out."""
        return self.reason is None

    def describe(self) -> dict[str, Any]:
        """Return the verdict as the CLI prints it."""
        return {
            "file": str(self.path),
            "intact": self.intact,
            "tenant_id": str(self.tenant_id) if self.tenant_id else None,
            "entries": self.entries,
            "unchained": self.unchained,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "broken_seq": self.broken_seq,
            "reason": self.reason,
        }


def read_header(path: Path) -> dict[str, Any]:
    """Return an archive file's header (unchecked: :func:`verify_file` checks it against the seal)."""
    try:
        with path.open("rb") as handle:
            header = json.loads(handle.readline())
    except (OSError, ValueError) as exc:
        raise Invalid(f"{path}: not an audit archive ({exc.__class__.__name__})") from exc
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise Invalid(f"{path}: not an audit archive")
    if header.get("version") != VERSION:
        raise Invalid(f"{path}: unsupported audit archive version {header.get('version')!r}")
    return header


def _entry(line: dict[str, Any]) -> dict[str, Any]:
    """Return an exported entry with its time as a datetime again (the chain MAC encodes microseconds)."""
    entry = dict(line)
    entry["occurred_at"] = datetime.fromisoformat(line["occurred_at"])
    return entry


def verify_file(path: Path, *, chain: AuditChain, key: bytes, points: Iterable[int] = ()) -> FileVerdict:
    """Check one archive file: its seal, its header against its content, and its stretch of the chain.

    Names the first entry that does not check out; a file whose seal does not match (a flipped byte, a
    line added or removed) is broken whatever its entries say.
    """
    verdict = FileVerdict(path)
    wanted = set(points)
    try:
        header = read_header(path)
        verdict.tenant_id = uuid.UUID(header["tenant_id"])
        data = path.read_bytes()
    except (Invalid, KeyError, ValueError, OSError) as exc:
        verdict.reason = str(exc) if isinstance(exc, Invalid) else f"unreadable header ({exc.__class__.__name__})"
        return verdict
    body, _, last = data.rstrip(b"\n").rpartition(b"\n")
    try:
        sealed = json.loads(last)["seal"]
    except (ValueError, KeyError, TypeError):
        verdict.reason = "the file has no seal line (cut short?)"
        return verdict
    if not isinstance(sealed, str) or not hmac.compare_digest(sealed, seal(key, body + b"\n")):
        verdict.reason = "its seal does not match (the file was changed after it was written)"
        return verdict
    lines = body.split(b"\n")[1:]
    expected: int | None = header.get("first_seq")
    previous = header.get("prev_hash")
    if previous is not None and expected is not None and expected - 1 in wanted:
        verdict.hashes[expected - 1] = previous
    for raw in lines:
        try:
            line = json.loads(raw)
            if line.get("seq") is None:
                verdict.unchained += 1
                continue
            entry = _entry(line)
        except (ValueError, TypeError, AttributeError, KeyError):
            verdict.reason = "an entry is not valid JSON"
            return verdict
        seq = entry["seq"]
        verdict.broken_seq = seq
        if str(entry.get("tenant_id")) != str(verdict.tenant_id):
            verdict.reason = "the entry belongs to another tenant"
            return verdict
        if seq != expected:
            verdict.reason = f"entry {expected} is missing" if (expected or 0) < seq else "numbers repeat"
            return verdict
        if entry.get("prev_hash") != previous:
            verdict.reason = "its prev_hash is not the hash of the entry before it"
            return verdict
        if not hmac.compare_digest(str(entry.get("hash") or ""), chain.entry_hash(entry)):
            verdict.reason = "its content does not match its hash (changed after it was written)"
            return verdict
        if seq in wanted:
            verdict.hashes[seq] = entry["hash"]
        previous, expected = entry["hash"], seq + 1
        verdict.entries += 1
    verdict.broken_seq = None
    verdict.first_seq, verdict.last_seq = header.get("first_seq"), header.get("last_seq")
    verdict.prev_hash, verdict.last_hash = header.get("prev_hash"), header.get("last_hash")
    if (
        verdict.entries != header.get("entries")
        or verdict.unchained != header.get("unchained")
        or (verdict.entries and (expected is None or expected - 1 != verdict.last_seq or previous != verdict.last_hash))
    ):
        verdict.reason = "its header does not describe its entries"
    return verdict


@dataclass(slots=True)
class ArchiveReport:
    """What :func:`verify_with_archives` found for one tenant: its files, then the database."""

    tenant_id: uuid.UUID
    files: list[FileVerdict]
    database: Verdict | None = None
    broken_file: Path | None = None
    reason: str | None = None
    starts_at: int | None = None  # the first number the files and the database account for

    @property
    def intact(self) -> bool:
        """Tell whether every file, their links and the database checked out."""
        return self.reason is None and (self.database is None or self.database.intact)


def _points(headers: Sequence[dict[str, Any]]) -> set[int]:
    points: set[int] = set()
    for header in headers:
        if header.get("first_seq") is not None:
            points.update((header["first_seq"] - 1, header["last_seq"]))
    return points


def check_files(paths: Sequence[Path], *, chain: AuditChain, key: bytes, points: Iterable[int] = ()) -> ArchiveReport:
    """Check archive files of one tenant and how they link: no gap, and one chain wherever they overlap."""
    headers = [read_header(path) for path in paths]
    tenants = {header.get("tenant_id") for header in headers}
    if len(tenants) > 1:
        raise Invalid("the archive files belong to different tenants; check one tenant at a time")
    wanted = _points(headers) | set(points)
    verdicts = [verify_file(path, chain=chain, key=key, points=wanted) for path in paths]
    report = ArchiveReport(uuid.UUID(str(next(iter(tenants)))) if tenants else uuid.UUID(int=0), verdicts)
    for verdict in verdicts:
        if not verdict.intact:
            report.broken_file, report.reason = verdict.path, f"{verdict.path.name}: {verdict.reason}"
            return report
    known: dict[int, tuple[str, Path]] = {}
    for verdict in verdicts:
        for seq, value in verdict.hashes.items():
            seen = known.setdefault(seq, (value, verdict.path))
            if seen[0] != value:
                report.broken_file = verdict.path
                report.reason = f"{verdict.path.name} and {seen[1].name} disagree about entry {seq} (two chains)"
                return report
    chained = sorted((v for v in verdicts if v.first_seq is not None), key=lambda v: (v.first_seq, v.last_seq))
    covered: int | None = None
    for verdict in chained:
        assert verdict.first_seq is not None and verdict.last_seq is not None
        if covered is None:
            report.starts_at = verdict.first_seq
            if verdict.first_seq == 1 and verdict.prev_hash != GENESIS:
                report.broken_file = verdict.path
                report.reason = f"{verdict.path.name}: entry 1 does not start the chain"
                return report
        elif verdict.first_seq > covered + 1:
            report.broken_file = verdict.path
            report.reason = (
                f"entries {covered + 1} to {verdict.first_seq - 1} are in no archive file given "
                f"(a file before {verdict.path.name} is missing)"
            )
            return report
        covered = verdict.last_seq if covered is None else max(covered, verdict.last_seq)
    return report


def _hashes(report: ArchiveReport) -> dict[int, str]:
    found: dict[int, str] = {}
    for verdict in report.files:
        found.update(verdict.hashes)
    return found


async def verify_with_archives(
    session: AsyncSession,
    *,
    chain: AuditChain,
    key: bytes,
    tenant_id: uuid.UUID,
    paths: Sequence[Path],
    batch: int = 1000,
) -> ArchiveReport:
    """Check a tenant's archive files, the database's chain, and that the files lead into the database.

    The database's entries start after the anchor (``archived_seq``); the files must account for every
    number from their first up to the anchor, and agree with the database wherever both hold an entry
    (a run that died after writing its file leaves such an overlap) and at the anchor itself.
    """
    headers = [read_header(path) for path in paths]
    if any(header.get("tenant_id") != str(tenant_id) for header in headers):
        raise Invalid("an archive file belongs to another tenant")
    database = await verify(session, chain, tenant_id, batch=batch, points=_points(headers))
    anchor = database.anchor
    report = check_files(paths, chain=chain, key=key, points=[anchor.seq] if anchor is not None else [])
    report.tenant_id, report.database = tenant_id, database
    if report.reason is not None or not database.intact:
        return report
    files_hashes = _hashes(report)
    for seq, value in database.hashes.items():
        if files_hashes.get(seq, value) != value:
            report.reason = f"the archive files and the database disagree about entry {seq}"
            return report
    if anchor is None or not paths:
        return report
    covered = max((v.last_seq for v in report.files if v.last_seq is not None), default=0)
    if anchor.seq > covered:
        report.reason = (
            f"entries {covered + 1} to {anchor.seq} were archived but are in no archive file given "
            "(the newest archive file is missing)"
        )
    elif files_hashes.get(anchor.seq, anchor.hash) != anchor.hash:
        report.reason = f"the archive files and the database's anchor disagree about entry {anchor.seq}"
    return report
