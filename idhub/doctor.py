"""``idhub doctor``: what this installation is configured to do, what it finds, and what is wrong.

The checks are read-only and bounded. Nothing is created: not the data folder, not a master key (a missing
one is reported, never generated), not a database (SQLite is opened read-only, and only when its file
exists). Every wait on the database or Redis is bounded by the settings' timeouts, so a server that hangs
costs a few seconds, not a hung command.

Secrets never appear in the report: ``SecretStr`` settings (the master key, the audit sink's token) are
shown as hidden, passwords in URLs as ``***``, and the finished text is scrubbed of every secret value
once more, so a driver's error message that quotes a URL cannot leak one either.

A problem is an ``error`` (the service cannot work as configured: the exit status is non-zero) or a
``warning`` (it works, but an operator should know); each comes with its fix.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import stat
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from pydantic import BaseModel, SecretStr, ValidationError
from sqlalchemy import select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from idhub import __version__
from idhub.crypto.encryption import DecryptionError, Sealer
from idhub.crypto.keys import ALGORITHMS, STATE_ACTIVE, STATE_NEXT, STATE_RETIRED
from idhub.crypto.rotation import rotation_days
from idhub.settings import Settings, decode_master_key, unknown_settings
from idhub.storage.base import utcnow
from idhub.storage.engine import Timeouts, create_engine
from idhub.storage.migrate import head_revision, known_revisions
from idhub.storage.models import SigningKey, Tenant

log = logging.getLogger(__name__)

Severity = Literal["error", "warning"]
DatabaseExplainer = Callable[[BaseException], str | None]

# A statement of doctor's reads a few rows: it gets at most this long (seconds), whatever the command
# timeout, and the whole database check at most the connect timeout plus this.
STATEMENT_BUDGET = 2.0
# Setting names whose plain string values are secrets even when not typed SecretStr.
SECRET_NAME_ENDINGS = ("secret", "password", "token", "_key")
# Query parameters that carry a password in a database or Redis URL.
SECRET_QUERY_KEYS = frozenset({"password", "passwd", "pass", "secret", "token"})
HIDDEN = "***"


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing that is wrong, and how to fix it."""

    severity: Severity
    message: str
    fix: str


@dataclass(frozen=True, slots=True)
class SettingValue:
    """One setting as this process sees it: its variable, its shown value (secrets hidden) and its source."""

    name: str
    variable: str
    value: Any
    source: Literal["environment", "default", "derived"]


@dataclass(slots=True)
class Report:
    """Everything ``idhub doctor`` found; :meth:`render_text` and :meth:`render_json` print it."""

    settings: list[SettingValue] = field(default_factory=list)
    data_dir: dict[str, Any] = field(default_factory=dict)
    master_key: dict[str, Any] = field(default_factory=dict)
    database: dict[str, Any] = field(default_factory=dict)
    schema: dict[str, Any] = field(default_factory=dict)
    redis: dict[str, Any] = field(default_factory=dict)
    tenants: list[dict[str, Any]] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    secrets: set[str] = field(default_factory=set)

    @property
    def ok(self) -> bool:
        """Tell whether nothing is wrong enough to fail (warnings alone do not)."""
        return not any(problem.severity == "error" for problem in self.problems)

    def error(self, message: str, fix: str) -> None:
        """Record a problem that makes the installation unable to work as configured."""
        self.problems.append(Problem("error", message, fix))

    def warn(self, message: str, fix: str) -> None:
        """Record a problem an operator should know about that does not stop the service."""
        self.problems.append(Problem("warning", message, fix))

    def to_dict(self) -> dict[str, Any]:
        """Return the report as one JSON-ready object (secrets already hidden, not yet scrubbed)."""
        return {
            "version": __version__,
            "ok": self.ok,
            "settings": {
                item.name: {"variable": item.variable, "value": item.value, "source": item.source}
                for item in self.settings
            },
            "data_dir": self.data_dir,
            "master_key": self.master_key,
            "database": self.database,
            "schema": self.schema,
            "redis": self.redis,
            "tenants": self.tenants,
            "problems": [asdict(problem) for problem in self.problems],
        }

    def render_json(self) -> str:
        """Return the report as one line of JSON, scrubbed of every secret value."""
        return self._scrub(json.dumps(self.to_dict(), default=str))

    def render_text(self) -> str:
        """Return the report as text for people, scrubbed of every secret value."""
        return self._scrub("\n".join(self._text_lines()))

    def _text_lines(self) -> Iterator[str]:
        yield f"idhub {__version__} doctor"
        yield ""
        yield "settings (source: environment, default, or derived from other settings or a file):"
        for item in self.settings:
            shown = "(unset)" if item.value is None else item.value
            yield f"  {item.name} = {shown}  [{item.source}]"
        yield ""
        if self.data_dir:
            yield f"data folder: {self.data_dir['path']} ({self.data_dir['state']})"
        if self.master_key:
            yield f"master key: {self.master_key['state']}"
        if self.database:
            yield f"database: {self.database['state']}"
        if self.schema:
            yield f"schema: {self.schema['state']}"
        if self.redis:
            yield f"redis: {self.redis['state']}"
        if self.tenants:
            yield f"tenants ({len(self.tenants)}):"
            for tenant in self.tenants:
                days = tenant["key_rotation_days"]
                schedule = f"rotates every {days} days" if days else "rotates on demand"
                yield f"  {tenant['slug']}: {schedule}"
                for key in tenant["keys"]:
                    yield f"    {key['state']:<8} {key['alg']}  kid {key['kid']}  {key['age']}"
        yield ""
        if not self.problems:
            yield "no problems found"
            return
        yield "problems:"
        for problem in self.problems:
            yield f"  {problem.severity}: {problem.message}"
            yield f"    fix: {problem.fix}"
        errors = sum(problem.severity == "error" for problem in self.problems)
        warnings = len(self.problems) - errors
        yield f"{errors} error{'s' * (errors != 1)}, {warnings} warning{'s' * (warnings != 1)}"

    def _scrub(self, text: str) -> str:
        # Longest first, so a secret that contains another is hidden whole.
        for secret in sorted(self.secrets, key=len, reverse=True):
            if len(secret) >= 4:  # a one- or three-character "password" would scrub ordinary words
                text = text.replace(secret, HIDDEN)
        return text


def diagnose(*, explain_database: DatabaseExplainer | None = None) -> Report:
    """Check the settings, data folder, master key, database, schema, signing keys and Redis.

    ``explain_database`` turns a database exception into the one line the CLI prints for it (the CLI's
    ``database_trouble``); without it, or when it has nothing to say, the exception's first line is shown.
    """
    environ = dict(os.environ)  # what Settings() reads too
    report = Report()
    for name, close in unknown_settings(environ):
        report.warn(
            f"{name} is not an idhub setting and is ignored",
            f"rename it to {close}" if close else "remove it (the README's configuration table lists every setting)",
        )
    try:
        settings = Settings()
    except ValidationError as exc:  # the message names the rule, never the value (it may be a secret)
        first = exc.errors()[0]
        where = "__".join(str(part) for part in first.get("loc", ()))
        message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
        report.error(
            f"invalid setting{' IDHUB_' + where.upper() if where else ''}: {message}",
            "correct the setting (the README's configuration table gives every setting's form)",
        )
        return report
    except ValueError as exc:  # a nested group given as IDHUB_GROUP that is not JSON
        report.error(f"invalid settings: {str(exc).splitlines()[0]}", "correct the setting")
        return report
    _walk_settings(report, settings, environ)
    _check_data_dir(report, settings)
    master = _check_master_key(report, settings, environ)
    if settings.is_sqlite and settings.environment == "production":
        report.warn(
            "production runs on SQLite, which serves one process (one worker) on one machine",
            "use PostgreSQL (IDHUB_DATABASE_URL=postgresql+asyncpg://...) to run several workers or instances",
        )
    explain = explain_database or (lambda _exc: None)
    engine = _database_engine(report, settings, explain)
    asyncio.run(_probe(report, settings, engine, master, explain))
    return report


# --- settings -----------------------------------------------------------------------------------------------


def _walk_settings(report: Report, settings: Settings, environ: Mapping[str, str]) -> None:
    """Record every field of ``settings`` (nested groups too), its value with secrets hidden, and its source."""
    present = {name.upper() for name in environ}
    for path, default, value in _fields(settings, ()):
        variable = "IDHUB_" + "__".join(path).upper()
        if variable in present or (len(path) > 1 and f"IDHUB_{path[0].upper()}" in present):
            source: Literal["environment", "default", "derived"] = "environment"
        elif value == default:
            source = "default"
        else:
            source = "derived"
        report.settings.append(SettingValue(".".join(path), variable, _shown(report, path[-1], value), source))


def _fields(model: BaseModel, prefix: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], Any, Any]]:
    """Yield ``(path, default, value)`` for every leaf field of ``model``, nested models walked."""
    for name, info in type(model).model_fields.items():
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            yield from _fields(value, (*prefix, name))
        else:
            yield (*prefix, name), info.get_default(call_default_factory=True), value


def _shown(report: Report, name: str, value: Any) -> Any:
    """Return ``value`` ready to print: secrets hidden (and remembered for the final scrub), paths as text."""
    if isinstance(value, SecretStr):
        report.secrets.add(value.get_secret_value())
        return "(hidden)"
    if isinstance(value, str) and name.lower().endswith(SECRET_NAME_ENDINGS):
        report.secrets.add(value)
        return "(hidden)" if value else value
    if isinstance(value, str) and "://" in value:
        return redact_url(value, report.secrets)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, list | tuple | set | frozenset):
        return [_shown(report, name, item) for item in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def redact_url(url: str, secrets: set[str] | None = None) -> str:
    """Return ``url`` with the password of its user info and of its query replaced by ``***``.

    Database URLs go through SQLAlchemy's own rendering (``render_as_string(hide_password=True)``); any
    other URL (Redis, the audit sink) is split by hand. The passwords found are added to ``secrets``.
    """
    found: set[str] = set() if secrets is None else secrets
    try:
        parsed = urlsplit(url)
    except ValueError:
        return HIDDEN  # not even a URL: it may hold anything
    netloc, changed = parsed.netloc, False
    if parsed.password:
        if parsed.password != HIDDEN:
            found.add(parsed.password)
        userinfo, _, hostport = netloc.rpartition("@")
        netloc, changed = f"{userinfo.partition(':')[0]}:{HIDDEN}@{hostport}", True
    query = parse_qsl(parsed.query, keep_blank_values=True)
    shown = parsed.query
    if any(key.lower() in SECRET_QUERY_KEYS for key, _ in query):
        found.update(value for key, value in query if key.lower() in SECRET_QUERY_KEYS and value)
        shown = urlencode([(k, HIDDEN if k.lower() in SECRET_QUERY_KEYS else v) for k, v in query], safe="*/:")
        changed = True
    if not changed:
        return url  # as given: splitting and joining again would drop the empty host of sqlite:///PATH
    return urlunsplit((parsed.scheme, netloc, parsed.path, shown, parsed.fragment))


# --- data folder and master key -----------------------------------------------------------------------------


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _check_data_dir(report: Report, settings: Settings) -> None:
    """Describe the data folder without creating it; warn when others may read it."""
    path = settings.data_dir.resolve()
    report.data_dir = {"path": str(path), "exists": path.is_dir()}
    if not path.exists():
        report.data_dir["state"] = "not created yet; the first command that needs it creates it, owner-only"
        return
    if not path.is_dir():
        report.data_dir["state"] = "not a directory"
        report.error(f"the data folder {path} is not a directory", "point IDHUB_DATA_DIR at a directory")
        return
    mode = _mode(path)
    report.data_dir.update(mode=f"{mode:04o}", state=f"exists, mode {mode:04o}")
    if mode & 0o077:
        report.warn(
            f"the data folder {path} is open to other users (mode {mode:04o}); it may hold the master key",
            f"chmod 700 {path}",
        )


def _check_master_key(report: Report, settings: Settings, environ: Mapping[str, str]) -> bytes | None:
    """Say where the master key comes from, without ever printing it or generating one; return it if known."""
    generated = settings.data_dir.resolve() / "master.key"
    if settings.master_key_file is not None:
        path = settings.master_key_file.resolve()
        report.master_key = {"source": "file", "path": str(path), "state": f"from IDHUB_MASTER_KEY_FILE {path}"}
        _check_key_file_mode(report, path)
    elif settings.master_key is not None:
        given = "IDHUB_MASTER_KEY" in {name.upper() for name in environ}
        where = "the environment (IDHUB_MASTER_KEY)" if given else "a settings source other than the environment"
        report.master_key = {"source": "environment" if given else "derived", "state": f"from {where}"}
    elif generated.is_file():
        report.master_key = {"source": "generated", "path": str(generated), "state": f"generated file {generated}"}
        _check_key_file_mode(report, generated)
        report.warn(
            f"the master key was generated into the data folder ({generated})",
            "back it up: without it no backup restores and no stored secret opens; in production give it as "
            "IDHUB_MASTER_KEY or IDHUB_MASTER_KEY_FILE (a container secret)",
        )
        try:
            encoded = generated.read_text().strip()
            report.secrets.add(encoded)
            return decode_master_key(encoded)
        except (OSError, ValueError) as exc:
            report.error(f"the master key file {generated} is unusable ({exc})", "restore it from its backup")
            return None
    else:
        report.master_key = {"source": "missing", "path": str(generated), "state": "not set and not generated yet"}
        report.warn(
            "no master key: IDHUB_MASTER_KEY and IDHUB_MASTER_KEY_FILE are unset and the data folder holds none",
            f"set IDHUB_MASTER_KEY (32 random bytes, urlsafe base64); otherwise the first command generates one "
            f"into {generated}, which must then be backed up",
        )
        return None
    assert settings.master_key is not None  # Settings read the file or the variable
    report.secrets.add(settings.master_key.get_secret_value())
    return decode_master_key(settings.master_key.get_secret_value())


def _check_key_file_mode(report: Report, path: Path) -> None:
    try:
        mode = _mode(path)
    except OSError:
        return
    report.master_key["mode"] = f"{mode:04o}"
    if mode & 0o077:
        report.warn(f"the master key file {path} is readable by other users (mode {mode:04o})", f"chmod 600 {path}")


# --- database, schema, signing keys and Redis ---------------------------------------------------------------


async def _probe(
    report: Report, settings: Settings, engine: AsyncEngine | None, master: bytes | None, explain: DatabaseExplainer
) -> None:
    """Check the database and Redis at once: the command waits for the slower of them, not their sum."""
    database = _check_database(report, settings, engine, master, explain) if engine is not None else asyncio.sleep(0)
    await asyncio.gather(database, _check_redis(report, settings))


def _database_engine(report: Report, settings: Settings, explain: DatabaseExplainer) -> AsyncEngine | None:
    """Return an engine for the configured database, or ``None`` (with the reason recorded) when there is none.

    Every wait is bounded by the settings' timeouts, a statement by at most :data:`STATEMENT_BUDGET`. An
    SQLite file is opened read-only and only when it exists: doctor never creates or changes a database.
    """
    report.database = {"url": HIDDEN, "backend": None, "reachable": False}
    try:
        url = make_url(settings.database_url)
    except Exception as exc:
        _database_failed(report, exc, explain)
        return None
    if url.password:
        report.secrets.add(str(url.password))
    shown = redact_url(url.render_as_string(hide_password=True), report.secrets)
    report.database.update(url=shown, backend=url.get_backend_name())
    timeouts = Timeouts(
        connect=settings.database_connect_timeout,
        command=min(settings.database_command_timeout, STATEMENT_BUDGET),
        pool=settings.database_pool_timeout,
    )
    if url.get_backend_name() != "sqlite":
        try:
            return create_engine(settings.database_url, pool_size=1, timeouts=timeouts)
        except Exception as exc:  # a driver that is not installed, a URL SQLAlchemy refuses
            _database_failed(report, exc, explain)
            return None
    database = url.database or ""
    if not database or database == ":memory:":
        report.database["state"] = "an in-memory SQLite database (nothing to check)"
        return None
    path = Path(database).resolve()
    report.database["path"] = str(path)
    if not path.is_file():
        report.database["state"] = f"no database file at {path}"
        report.schema = {"current": None, "head": head_revision(), "state": "no database"}
        report.error(
            f"there is no database yet at {path} (IDHUB_DATABASE_URL / IDHUB_DATA_DIR)",
            "run `idhub migrate` (or `idhub init --tenant SLUG`), or point IDHUB_DATABASE_URL at the database",
        )
        return None
    uri = f"file:{quote(str(path))}?mode=ro"
    return create_async_engine(f"sqlite+aiosqlite:///{uri}&uri=true", connect_args={"timeout": timeouts.command})


async def _check_database(
    report: Report, settings: Settings, engine: AsyncEngine, master: bytes | None, explain: DatabaseExplainer
) -> None:
    """Connect within the settings' timeouts, read the schema revision, then each tenant's signing keys."""
    budget = settings.database_connect_timeout + STATEMENT_BUDGET
    try:
        await asyncio.wait_for(_read_database(report, settings, engine, master), timeout=budget)
    except TimeoutError:
        report.database["state"] = "did not answer in time"
        report.error(
            f"the database at IDHUB_DATABASE_URL did not answer within {budget:g} s",
            "check that the database server is running and reachable (IDHUB_DATABASE_CONNECT_TIMEOUT bounds the wait)",
        )
    except Exception as exc:
        _database_failed(report, exc, explain)
    finally:
        # A connection stuck on a hung server may not close in time: the command ends soon anyway.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(engine.dispose(), timeout=1.0)


def _database_failed(report: Report, exc: BaseException, explain: DatabaseExplainer) -> None:
    log.debug("database check failed", exc_info=exc)  # the traceback only with IDHUB_LOG_LEVEL=debug
    line = explain(exc) or f"the database check failed ({_first_line(exc)})"
    report.database["state"] = f"{report.database['url']} unreachable or refusing"
    report.error(
        line,
        "check that the database server is running and reachable, and that IDHUB_DATABASE_URL names it, "
        "its database and credentials correctly",
    )


def _first_line(exc: BaseException) -> str:
    origin = getattr(exc, "orig", None) or exc
    text = (str(origin).strip().splitlines() or [type(origin).__name__])[0]
    return f"{type(origin).__name__}: {text[:240]}"


async def _read_database(report: Report, settings: Settings, engine: AsyncEngine, master: bytes | None) -> None:
    async with engine.connect() as connection:
        report.database["reachable"] = True
        version = connection.dialect.server_version_info
        report.database["server_version"] = ".".join(map(str, version)) if version else None
        report.database["state"] = f"{report.database['url']} reachable"
        current = await connection.run_sync(_current_revision)
        at_head = _check_schema(report, settings, current)
        if at_head:
            await _check_tenants(report, settings, connection, master)


def _current_revision(sync_connection: Any) -> str | None:
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(sync_connection).get_current_revision()


def _check_schema(report: Report, settings: Settings, current: str | None) -> bool:
    """Compare the database's schema revision with this code's; return whether it is at head."""
    head = head_revision()
    report.schema = {"current": current, "head": head}
    if current == head:
        report.schema["state"] = f"at head ({head})"
        return True
    if current is not None and current not in known_revisions():
        report.schema["state"] = f"at {current}, unknown to this idhub (head {head})"
        report.error(
            f"the database schema is at revision {current}, which this idhub {__version__} does not know "
            "(a newer release migrated it)",
            "run the idhub release that migrated this database, or a newer one",
        )
        return False
    shown = current or "none (empty database)"
    report.schema["state"] = f"behind: at {shown}, this idhub needs {head}"
    starts = (
        "`idhub serve` refuses to start (IDHUB_AUTO_MIGRATE=false)"
        if settings.auto_migrate is False
        else "`idhub serve` would migrate it at start-up"
    )
    report.error(
        f"the database schema is at revision {shown} and this idhub needs {head}; {starts}",
        "run `idhub migrate`",
    )
    return False


async def _check_tenants(report: Report, settings: Settings, connection: AsyncConnection, master: bytes | None) -> None:
    """List each tenant's published signing keys; flag missing active keys, overdue rotations, a wrong master key."""
    now = utcnow()
    tenants = (await connection.execute(select(Tenant.id, Tenant.slug, Tenant.settings).order_by(Tenant.slug))).all()
    published = (SigningKey.state != STATE_RETIRED) | (SigningKey.publish_until > now)
    rows = (
        await connection.execute(
            select(
                SigningKey.tenant_id,
                SigningKey.kid,
                SigningKey.alg,
                SigningKey.state,
                SigningKey.created_at,
                SigningKey.activated_at,
                SigningKey.publish_until,
                SigningKey.private_key_encrypted,
            ).where(published)
        )
    ).all()
    keys: dict[uuid.UUID, list[Any]] = {}
    for row in rows:
        keys.setdefault(row.tenant_id, []).append(row)
    if tenants and master is None:
        report.error(
            f"the database holds {len(tenants)} tenant(s) but no master key is configured: their private keys "
            "and secrets cannot be opened, and a newly generated key would not open them either",
            "give the master key this database was created with as IDHUB_MASTER_KEY or IDHUB_MASTER_KEY_FILE",
        )
    sealer = Sealer(master) if master is not None else None
    order = {STATE_ACTIVE: 0, STATE_NEXT: 1, STATE_RETIRED: 2}
    for tenant_id, slug, tenant_settings in tenants:
        own = sorted(keys.get(tenant_id, []), key=lambda r: (order.get(r.state, 3), r.alg))
        days = rotation_days(tenant_settings or {})
        report.tenants.append(
            {
                "slug": slug,
                "key_rotation_days": days,
                "keys": [_key_view(row, now) for row in own],
            }
        )
        _check_tenant_keys(report, settings, slug, own, days, now)
        if sealer is not None and own:
            try:
                sealer.open(own[0].private_key_encrypted, context=f"signing-key:{own[0].kid}")
            except DecryptionError:
                report.error(
                    f"the master key does not open tenant {slug}'s signing keys: this database was created "
                    "with another master key",
                    "give the master key this database was created with (IDHUB_MASTER_KEY or IDHUB_MASTER_KEY_FILE)",
                )
                sealer = None  # one line is enough: every tenant's keys were sealed with the same master key
    if not tenants:
        report.warn("the database has no tenant yet", "run `idhub init --tenant SLUG`")


def _key_view(row: Any, now: datetime) -> dict[str, Any]:
    since = row.activated_at or row.created_at
    view: dict[str, Any] = {
        "kid": row.kid,
        "alg": row.alg,
        "state": row.state,
        "created_at": row.created_at.isoformat(),
        "activated_at": row.activated_at.isoformat() if row.activated_at else None,
        "age_days": round((now - since).total_seconds() / 86400, 1),
    }
    if row.state == STATE_RETIRED and row.publish_until is not None:
        view["publish_until"] = row.publish_until.isoformat()
        view["age"] = f"published until {row.publish_until:%Y-%m-%d %H:%M} UTC"
    elif row.state == STATE_ACTIVE:
        view["age"] = f"active for {_age(now - since)}"
    else:
        view["age"] = f"created {_age(now - row.created_at)} ago"
    return view


def _age(delta: timedelta) -> str:
    seconds = max(0, int(delta.total_seconds()))
    if seconds >= 86400:
        return f"{seconds // 86400} days"
    if seconds >= 3600:
        return f"{seconds // 3600} hours"
    return f"{seconds // 60} minutes"


def _check_tenant_keys(
    report: Report, settings: Settings, slug: str, rows: list[Any], days: int | None, now: datetime
) -> None:
    """Flag a missing active or next key per algorithm, and a scheduled rotation that is overdue."""
    rotate = f"run `idhub keys rotate --tenant {slug}`"
    for alg in ALGORITHMS:
        states = {row.state for row in rows if row.alg == alg}
        if STATE_ACTIVE not in states:
            twice = "" if STATE_NEXT in states else " twice (there is no next key to activate either)"
            report.error(f"tenant {slug} has no active {alg} signing key: it cannot sign with {alg}", rotate + twice)
        elif STATE_NEXT not in states:
            report.warn(
                f"tenant {slug} has no next {alg} signing key: relying parties will not have the key a "
                "rotation activates in their cached JWKS",
                rotate,
            )
    if days is None:
        return
    if settings.purge_interval_seconds <= 0:
        report.warn(
            f"tenant {slug} rotates its keys every {days} days, but IDHUB_PURGE_INTERVAL_SECONDS=0 stops the "
            "schedule that rotates them",
            f"set IDHUB_PURGE_INTERVAL_SECONDS above 0, or {rotate} every {days} days",
        )
    # The schedule runs every purge interval (with jitter) in each serving process: allow one more interval.
    grace = timedelta(days=days, seconds=2 * settings.purge_interval_seconds)
    overdue = [row for row in rows if row.state == STATE_ACTIVE and now - (row.activated_at or row.created_at) > grace]
    if overdue:
        oldest = max(now - (row.activated_at or row.created_at) for row in overdue)
        report.warn(
            f"tenant {slug}'s scheduled key rotation is overdue: its active keys are {_age(oldest)} old and "
            f"key_rotation_days is {days} (is any `idhub serve` running against this database?)",
            rotate + " now; the schedule runs inside `idhub serve`",
        )


async def _check_redis(report: Report, settings: Settings) -> None:
    """Ping Redis when ``IDHUB_REDIS_URL`` is set, within the Redis timeout; warn when it is older than 7."""
    if not settings.redis_url:
        report.redis = {"configured": False, "state": "not configured (IDHUB_REDIS_URL is unset; one process only)"}
        return
    shown = redact_url(settings.redis_url, report.secrets)
    report.redis = {"configured": True, "url": shown, "reachable": False}
    try:
        import redis.asyncio as aioredis
    except ModuleNotFoundError:
        report.redis["state"] = "the redis package is not installed"
        report.error("IDHUB_REDIS_URL is set but the redis client is not installed", "pip install 'idhub[redis]'")
        return
    timeout = settings.redis_timeout
    try:
        client = aioredis.from_url(settings.redis_url, socket_connect_timeout=timeout, socket_timeout=timeout)
    except ValueError as exc:
        report.redis["state"] = "not a Redis URL"
        report.error(f"IDHUB_REDIS_URL is not a Redis URL ({exc})", "give redis://HOST:PORT/DB or rediss://...")
        return
    try:
        # Connect, PING and INFO each get the timeout; the whole check at most twice that and a bit.
        info = await asyncio.wait_for(_redis_info(client), timeout=2 * timeout + 0.5)
    except Exception as exc:
        log.debug("Redis check failed", exc_info=exc)
        report.redis["state"] = f"{shown} unreachable"
        report.error(
            f"cannot reach Redis at IDHUB_REDIS_URL ({_first_line(exc) if str(exc) else type(exc).__name__})",
            "start Redis or correct IDHUB_REDIS_URL; until then each process keeps its own rate-limit counters "
            "and learns of revocations only by polling the database",
        )
        return
    finally:
        with contextlib.suppress(Exception):  # nothing to release on a connection that never opened
            await asyncio.wait_for(client.aclose(), timeout=1.0)
    version = str(info.get("redis_version", ""))
    report.redis.update(reachable=True, server_version=version or None, state=f"{shown} reachable (Redis {version})")
    major = version.split(".", 1)[0]
    if major.isdigit() and int(major) < 7:
        report.warn(f"Redis {version} is older than the Redis 7 idhub is tested with", "upgrade Redis to 7 or later")


async def _redis_info(client: Any) -> dict[str, Any]:
    await client.ping()
    info = await client.info("server")
    return dict(info) if isinstance(info, dict) else {}
