"""The ``idhub`` command: serve, migrate, init, client, user, group, keys, tenant, provisioning-token.

Every subcommand prints one JSON object with ``--json`` (``init`` always does) and exits non-zero with
a one-line error on bad input. A command that changes anything runs in one unit of work acting as the
operator (``cli:<login name>``), so each change is audited like any other surface's.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import logging
import os
import sys
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import click
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from idhub import __version__
from idhub.clients.redirects import validate_client_uris
from idhub.clients.service import create_client
from idhub.context import AppContext, build_context
from idhub.directory.groups import MemberIds
from idhub.directory.profile import UserProfile, ValueRecord
from idhub.doctor import diagnose
from idhub.errors import DomainError, Invalid, Unavailable
from idhub.events import Actor
from idhub.logs import configure_logging, logging_config
from idhub.server import ServerError, run_server
from idhub.settings import Settings, unknown_setting_warnings
from idhub.storage.migrate import SchemaBehind, check_schema, holds_tenants, upgrade
from idhub.storage.models import Group, User
from idhub.storage.uow import UnitOfWork
from idhub.tenants.service import get_or_create_tenant, issuer_for, require_tenant, update_tenant

T = TypeVar("T")


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


def _emit(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(result))
    else:
        for key, value in result.items():
            click.echo(f"{key}: {value if not isinstance(value, list) else ' '.join(map(str, value))}")


def _settings(*, creates: bool = False, serving: bool = False) -> Settings:
    """Read the settings (one line and exit 2 when one is wrong) and configure logging.

    Only commands that set a deployment up (``creates``: serve, init, migrate) may create a data folder
    that was looked for and not found; any other command run in the wrong directory would otherwise
    start a second, empty database with a second master key.
    """
    for line in unknown_setting_warnings():
        click.echo(line, err=True)
    try:
        settings = Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        where = "__".join(str(part) for part in first.get("loc", ()))
        message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
        _fail(f"invalid setting{' IDHUB_' + where.upper() if where else ''}: {message}")
        raise  # unreachable
    except ValueError as exc:
        _fail(str(exc).splitlines()[0])
        raise  # unreachable
    # IDHUB_LOG_LEVEL=debug shows the tracebacks the one-line errors leave out. Commands other than
    # serve print their result; their log lines are warnings unless a level is asked for.
    quiet = not serving and "log_level" not in settings.model_fields_set
    configure_logging(settings, level="WARNING" if quiet else None)
    if not creates and not settings.data_dir_chosen and settings.data_dir_needed and not settings.data_dir.is_dir():
        _fail(
            f"no idhub data folder ({settings.data_dir.name}) in {settings.data_dir.parent} or its parents: run"
            " this where `idhub serve` runs, or set IDHUB_DATA_DIR (and IDHUB_DATABASE_URL, IDHUB_MASTER_KEY)"
            " to the server's; `idhub migrate` creates a new one here"
        )
    return settings


def database_trouble(exc: BaseException) -> str | None:
    """Return one line that says what is wrong with the configured database, or ``None`` for anything else.

    A database that is down, unreachable, missing, refusing the credentials, or a driver that is not
    installed: each is the operator's to fix, so it is one line naming the setting, not a traceback (which
    ``IDHUB_LOG_LEVEL=debug`` still logs).
    """
    from sqlalchemy import exc as sa_exc

    from idhub.storage.faults import is_fault

    if isinstance(exc, ModuleNotFoundError) and exc.name in ("asyncpg", "aiosqlite"):
        extra = "postgres" if exc.name == "asyncpg" else ""
        hint = f"pip install 'idhub[{extra}]'" if extra else f"pip install {exc.name}"
        return f"IDHUB_DATABASE_URL needs the {exc.name} driver, which is not installed: {hint}"
    if is_fault(exc):
        return f"cannot reach the database at IDHUB_DATABASE_URL ({_first_line(exc)})"
    if isinstance(exc, sa_exc.DBAPIError | sa_exc.ArgumentError | OSError) or type(exc).__module__.startswith(
        "asyncpg."
    ):  # older SQLAlchemy releases let asyncpg's own errors (a missing database) through unwrapped
        return f"the database at IDHUB_DATABASE_URL refused ({_first_line(exc)})"
    cause = exc.__cause__ or exc.__context__
    return database_trouble(cause) if cause is not None and cause is not exc else None


def _first_line(exc: BaseException) -> str:
    origin = getattr(exc, "orig", None) or exc
    text = (str(origin).strip().splitlines() or [type(origin).__name__])[0]
    return f"{type(origin).__name__}: {text[:240]}"


def _fail_on_database_trouble(exc: BaseException) -> None:
    """Exit with one line when ``exc`` is the database's trouble; otherwise return (the caller re-raises)."""
    line = database_trouble(exc)
    if line is not None:
        logging.getLogger(__name__).debug("database trouble", exc_info=exc)
        _fail(line)


def _refuse_a_new_master_key_for_old_data(settings: Settings) -> None:
    """Exit in one line rather than generate a master key for a database whose tenants another key sealed.

    Their signing keys and upstream secrets would not open, and every client secret would stop matching.
    """
    if settings.master_key_would_be_generated:
        try:
            old = holds_tenants(settings.database_url)
        except Exception as exc:
            _fail_on_database_trouble(exc)
            raise
        if old:
            _fail(
                f"the database at IDHUB_DATABASE_URL holds tenants but there is no master key ({settings.data_dir}"
                " has none): give the key they were sealed with as IDHUB_MASTER_KEY or IDHUB_MASTER_KEY_FILE,"
                " or set IDHUB_DATA_DIR to the data folder that holds it"
            )


def _operator() -> Actor:
    """Return the acting operator: the login name of whoever runs the command."""
    try:
        name = getpass.getuser()
    except (KeyError, OSError):
        name = "operator"
    return Actor("cli", name[:64] or "operator")


def _run(work: Callable[[AppContext, UnitOfWork], Awaitable[T]], *, creates: bool = False) -> T:
    """Run ``work`` in one unit of work against the configured database (migrating SQLite first)."""
    settings = _settings(creates=creates)
    if settings.is_sqlite:
        try:
            upgrade(settings.database_url)
        except Exception as exc:
            _fail_on_database_trouble(exc)
            raise
    _refuse_a_new_master_key_for_old_data(settings)

    async def runner() -> T:
        ctx = build_context(settings)
        try:
            if settings.redis_url:
                # Connect the revocation state to Redis so a revocation made here (a disabled user, a
                # revoked provisioning token) is broadcast to every serving process on commit, not
                # only found by their poll.
                await ctx.revocations.start()
            async with ctx.uow(actor=_operator(), surface="cli") as uow:
                return await work(ctx, uow)
        finally:
            await ctx.close()

    try:
        return asyncio.run(runner())
    except DomainError as exc:
        if isinstance(exc, Unavailable):
            _fail_on_database_trouble(exc.__cause__ or exc)
        _fail(exc.detail or exc.__class__.__name__)
        raise  # unreachable
    except click.UsageError as exc:  # bad --id / --username choice found while working: one line too
        _fail(exc.format_message())
        raise  # unreachable
    except Exception as exc:
        _fail_on_database_trouble(exc)
        raise


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", "-V", prog_name="idhub", message="%(prog)s %(version)s")
def main() -> None:
    """Idhub: federated identity and access management.

    Settings come from IDHUB_* environment variables (see the README's configuration table); every
    command that changes something prints one JSON object with --json and exits non-zero with a
    one-line error on bad input.
    """


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--workers", default=1, show_default=True, type=int)
def serve(host: str, port: int, workers: int) -> None:
    """Start the HTTP server; the schema is migrated first unless IDHUB_AUTO_MIGRATE=false (then it must be at head)."""
    guessed = not os.environ.get("IDHUB_PUBLIC_URL")
    if guessed:
        # The issuer follows the port asked for; the workers read it from the environment.
        shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host  # noqa: S104 (a comparison, not a bind)
        shown = f"[{shown}]" if ":" in shown else shown
        os.environ["IDHUB_PUBLIC_URL"] = f"http://{shown}:{port}"
    settings = _settings(creates=True, serving=True)
    if settings.data_dir_needed:
        logging.getLogger("idhub.cli").info("data folder: %s", settings.data_dir.absolute())
    if guessed:  # a log line (JSON when IDHUB_LOG_FORMAT=json), now that logging is configured
        logging.getLogger("idhub.cli").warning(
            "IDHUB_PUBLIC_URL is not set; the issuer is %s/tenants/<slug>. In production set IDHUB_PUBLIC_URL"
            " to the https address people and apps use.",
            settings.public_url,
        )
    try:
        # Here, before the workers start, so a problem is one line and the workers find the schema ready.
        if settings.auto_migrate is False:
            check_schema(settings.database_url)
        else:
            upgrade(settings.database_url)
    except SchemaBehind as exc:
        _fail(str(exc))
    except Exception as exc:  # an unreachable or refusing database: one line, the detail at debug level
        _fail_on_database_trouble(exc)
        raise
    _refuse_a_new_master_key_for_old_data(settings)
    try:
        run_server(settings, host=host, port=port, workers=workers, log_config=logging_config(settings))
    except ServerError as exc:
        _fail(str(exc))


@main.command()
def migrate() -> None:
    """Upgrade the database schema to the newest revision."""
    settings = _settings(creates=True)
    try:
        upgrade(settings.database_url)
    except Exception as exc:
        _fail_on_database_trouble(exc)
        raise
    click.echo(json.dumps({"migrated": True}))


@main.command()
@click.option("--tenant", "slug", required=True, help="tenant slug (lowercase letters, digits, hyphens)")
def init(slug: str) -> None:
    """Create the tenant if missing plus a new admin client; print the credentials as JSON.

    The client is the tenant's administrator in the admin API (scope ``idhub:admin``); in the system
    tenant (``IDHUB_SYSTEM_TENANT``, default ``system``) it also administers every tenant (``idhub:system``).
    """

    async def work(ctx: AppContext, uow: UnitOfWork) -> dict[str, Any]:
        tenant, _created = await get_or_create_tenant(uow, slug=slug, sealer=ctx.sealer)
        scope = "idhub:admin idhub:system" if slug == ctx.settings.system_tenant else "idhub:admin"
        client, secret = await create_client(
            uow,
            tenant_id=tenant.id,
            name="idhub admin",
            hasher=ctx.secret_hasher,
            grant_types=["client_credentials"],
            scope=scope,
        )
        # Its machine policy: the admin API's client_credentials tokens carry its role, governed like any client.
        await ctx.directory(uow).entitlements.create(
            tenant.id, client_id=client.client_id, group_id=None, scopes=scope.split()
        )
        return {
            "tenant": tenant.slug,
            "issuer": issuer_for(ctx.settings.public_url, tenant.slug),
            "admin_client_id": client.client_id,
            "admin_client_secret": secret,
        }

    click.echo(json.dumps(_run(work, creates=True)))


@main.group()
def client() -> None:
    """Manage OAuth clients."""


@client.command("create")
@click.option("--tenant", "slug", required=True)
@click.option("--name", required=True)
@click.option("--redirect-uri", "redirect_uris", multiple=True)
@click.option("--grant-type", "grant_types", multiple=True)
@click.option("--scope", default=None, help='space-separated scopes, e.g. "openid profile"')
@click.option("--public", is_flag=True, help="a public client (no secret; PKCE only)")
@click.option("--post-logout-redirect-uri", "post_logout_redirect_uris", multiple=True)
@click.option("--backchannel-logout-uri", default=None)
@click.option(
    "--internal-backchannel",
    is_flag=True,
    help="let the back-channel logout URI name a loopback or private host (test peers, development)",
)
@click.option("--resource", "resources", multiple=True, help="RFC 8707 resource the client may ask for")
@click.option("--access-token-alg", type=click.Choice(["ES256", "RS256"]), default=None)
@click.option(
    "--auth-method",
    type=click.Choice(["client_secret_basic", "client_secret_post", "private_key_jwt", "none"]),
    default=None,
)
@click.option("--jwks-uri", default=None, help="private_key_jwt: where the client publishes its public keys")
@click.option(
    "--jwks-file", type=click.Path(exists=True, dir_okay=False), default=None, help="private_key_jwt: its JWK Set"
)
@click.option("--internal-jwks-uri", is_flag=True, help="let the jwks_uri name a loopback or private host")
@click.option("--first-party", is_flag=True, help="skip the consent page for this client")
@click.option("--json", "as_json", is_flag=True)
def client_create(
    slug: str,
    name: str,
    redirect_uris: tuple[str, ...],
    grant_types: tuple[str, ...],
    scope: str | None,
    public: bool,
    post_logout_redirect_uris: tuple[str, ...],
    backchannel_logout_uri: str | None,
    internal_backchannel: bool,
    resources: tuple[str, ...],
    access_token_alg: str | None,
    auth_method: str | None,
    jwks_uri: str | None,
    jwks_file: str | None,
    internal_jwks_uri: bool,
    first_party: bool,
    as_json: bool,
) -> None:
    """Register a client and print its id and (once) its secret."""
    jwks: dict[str, Any] | None = None
    if jwks_file is not None:
        try:
            jwks = json.loads(Path(jwks_file).read_text())
        except (OSError, ValueError):
            _fail("the JWKS file is not JSON")
        if not isinstance(jwks, dict):
            _fail("the JWKS file must hold a JWK Set object")
    try:  # the same validator create_client runs, before anything touches the database
        validate_client_uris(
            redirect_uris=redirect_uris,
            post_logout_redirect_uris=post_logout_redirect_uris,
            backchannel_logout_uri=backchannel_logout_uri,
            allow_private_backchannel=internal_backchannel,
        )
    except Invalid as exc:
        _fail(exc.detail)

    async def work(ctx: AppContext, uow: UnitOfWork) -> dict[str, Any]:
        tenant = await require_tenant(uow.session, slug)
        row, secret = await create_client(
            uow,
            tenant_id=tenant.id,
            name=name,
            hasher=ctx.secret_hasher,
            redirect_uris=list(redirect_uris),
            grant_types=list(grant_types) or None,
            scope=scope,
            public=public or auth_method == "none",
            token_endpoint_auth_method=auth_method,
            post_logout_redirect_uris=list(post_logout_redirect_uris),
            backchannel_logout_uri=backchannel_logout_uri,
            allow_private_backchannel=internal_backchannel,
            resources=list(resources),
            access_token_alg=access_token_alg,
            jwks=jwks,
            jwks_uri=jwks_uri,
            allow_private_jwks_uri=internal_jwks_uri,
            first_party=first_party,
        )
        return {"client_id": row.client_id, "client_secret": secret}

    _emit(_run(work), as_json)


@main.group()
def user() -> None:
    """Manage the directory's users."""


@user.command("create")
@click.option("--tenant", "slug", required=True)
@click.option("--username", required=True)
@click.option("--email", default=None)
@click.option("--name", default=None)
@click.option("--password-stdin", is_flag=True, help="read the password from standard input")
@click.option("--json", "as_json", is_flag=True)
def user_create(
    slug: str, username: str, email: str | None, name: str | None, password_stdin: bool, as_json: bool
) -> None:
    """Create a user and print its id."""
    password = sys.stdin.readline().rstrip("\r\n") if password_stdin else None
    values = (ValueRecord("emails", value=email, type="work", primary=True),) if email else ()

    async def work(ctx: AppContext, uow: UnitOfWork) -> dict[str, Any]:
        tenant = await require_tenant(uow.session, slug)
        profile = UserProfile(user_name=username, name=name, values=values)
        row = await ctx.directory(uow).users.create(tenant.id, profile, password=password)
        return {"id": str(row.id)}

    _emit(_run(work), as_json)


def _user_options(command: Callable[..., None]) -> Callable[..., None]:
    """Add ``--tenant`` and ``--username``/``--id`` (exactly one) to a user command."""
    for decorator in reversed(
        (
            click.option("--tenant", "slug", required=True),
            click.option("--username", default=None, help="the user's username"),
            click.option("--id", "user_id", default=None, help="the user's id"),
            click.option("--json", "as_json", is_flag=True),
        )
    ):
        command = decorator(command)
    return command


async def _find_user(
    ctx: AppContext, uow: UnitOfWork, tenant_id: uuid.UUID, username: str | None, user_id: str | None
) -> User:
    """Return the live user named by ``--username`` or ``--id`` (exactly one of them)."""
    if (username is None) == (user_id is None):
        raise click.UsageError("give exactly one of --username and --id")
    users = ctx.directory(uow).users
    if username is not None:
        found = await users.find(tenant_id, username)
        if found is None:
            raise DomainError(f"no user {username!r} in this tenant")
        return found
    return await users.get(tenant_id, _uuid(user_id or "", "--id"))


def _uuid(value: str, option: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise click.UsageError(f"{option} must be an id (a UUID)") from None


def _set_active(slug: str, username: str | None, user_id: str | None, active: bool, as_json: bool) -> None:
    async def work(ctx: AppContext, uow: UnitOfWork) -> dict[str, Any]:
        tenant = await require_tenant(uow.session, slug)
        row = await _find_user(ctx, uow, tenant.id, username, user_id)
        await ctx.directory(uow).users.set_active(row, active)
        return {"id": str(row.id), "active": active}

    _emit(_run(work), as_json)


@user.command("disable")
@_user_options
def user_disable(slug: str, username: str | None, user_id: str | None, as_json: bool) -> None:
    """Disable a user: sessions, refresh and access tokens are revoked at once."""
    _set_active(slug, username, user_id, False, as_json)


@user.command("enable")
@_user_options
def user_enable(slug: str, username: str | None, user_id: str | None, as_json: bool) -> None:
    """Let a disabled user sign in again."""
    _set_active(slug, username, user_id, True, as_json)


@user.command("delete")
@_user_options
def user_delete(slug: str, username: str | None, user_id: str | None, as_json: bool) -> None:
    """Delete a user: cut off at once, archived, and the username freed for a re-hire."""

    async def work(ctx: AppContext, uow: UnitOfWork) -> dict[str, Any]:
        tenant = await require_tenant(uow.session, slug)
        row = await _find_user(ctx, uow, tenant.id, username, user_id)
        await ctx.directory(uow).users.delete(row)
        return {"id": str(row.id), "active": False, "deleted": True}

    _emit(_run(work), as_json)


@main.group()
def group() -> None:
    """Manage the directory's groups."""


@group.command("create")
@click.option("--tenant", "slug", required=True)
@click.option("--name", required=True)
@click.option("--json", "as_json", is_flag=True)
def group_create(slug: str, name: str, as_json: bool) -> None:
    """Create a group and print its id."""

    async def work(ctx: AppContext, uow: UnitOfWork) -> dict[str, Any]:
        tenant = await require_tenant(uow.session, slug)
        row = await ctx.directory(uow).groups.create(tenant.id, name=name)
        return {"id": str(row.id), "name": row.display_name}

    _emit(_run(work), as_json)


async def _find_group(ctx: AppContext, uow: UnitOfWork, tenant_id: uuid.UUID, name_or_id: str) -> Group:
    """Return the group named ``name_or_id``, or the one with that id."""
    groups = ctx.directory(uow).groups
    found = await groups.find(tenant_id, name_or_id)
    if found is not None:
        return found
    try:
        group_id = uuid.UUID(name_or_id)
    except ValueError:
        raise DomainError(f"no group {name_or_id!r} in this tenant") from None
    return await groups.get(tenant_id, group_id)


def _change_member(
    slug: str, name_or_id: str, username: str | None, user_id: str | None, add: bool, as_json: bool
) -> None:
    async def work(ctx: AppContext, uow: UnitOfWork) -> dict[str, Any]:
        tenant = await require_tenant(uow.session, slug)
        found = await _find_group(ctx, uow, tenant.id, name_or_id)
        member = await _find_user(ctx, uow, tenant.id, username, user_id)
        groups = ctx.directory(uow).groups
        change = MemberIds(users=frozenset({member.id}))
        await (groups.add_members(found, change) if add else groups.remove_members(found, change))
        return {"group": str(found.id), "user": str(member.id), "member": add}

    _emit(_run(work), as_json)


@group.command("add-member")
@click.option("--group", "name_or_id", required=True, help="the group's name or id")
@_user_options
def group_add_member(slug: str, name_or_id: str, username: str | None, user_id: str | None, as_json: bool) -> None:
    """Make a user a direct member of a group."""
    _change_member(slug, name_or_id, username, user_id, True, as_json)


@group.command("remove-member")
@click.option("--group", "name_or_id", required=True, help="the group's name or id")
@_user_options
def group_remove_member(slug: str, name_or_id: str, username: str | None, user_id: str | None, as_json: bool) -> None:
    """Remove a user from a group's direct members."""
    _change_member(slug, name_or_id, username, user_id, False, as_json)


@main.group()
def keys() -> None:
    """Manage signing keys."""


@keys.command("rotate")
@click.option("--tenant", "slug", required=True)
@click.option("--json", "as_json", is_flag=True)
def keys_rotate(slug: str, as_json: bool) -> None:
    """Rotate keys: next -> active -> retired (published until its tokens expire)."""
    from idhub.crypto.keys import rotate_keys

    async def work(ctx: AppContext, uow: UnitOfWork) -> dict[str, Any]:
        tenant = await require_tenant(uow.session, slug)
        tokens = ctx.settings.tokens
        lifetime = max(tokens.access_token_ttl, tokens.id_token_ttl) + 300
        active = await rotate_keys(
            uow, tenant_id=tenant.id, sealer=ctx.sealer, max_token_lifetime=timedelta(seconds=lifetime)
        )
        return {"tenant": tenant.slug, "active_kids": active}

    _emit(_run(work), as_json)


@keys.command("schedule")
@click.option("--tenant", "slug", required=True)
@click.option("--every-days", type=click.IntRange(1, 3650), default=None, help="rotate the keys this often")
@click.option("--off", is_flag=True, help="rotate only on demand")
@click.option("--json", "as_json", is_flag=True)
def keys_schedule(slug: str, every_days: int | None, off: bool, as_json: bool) -> None:
    """Rotate the tenant's signing keys on a schedule (checked by every running server), or stop doing so."""
    if (every_days is None) == (not off):
        _fail("give --every-days N or --off")

    async def work(ctx: AppContext, uow: UnitOfWork) -> dict[str, Any]:
        tenant = await update_tenant(uow, slug=slug, key_rotation_days=None if off else every_days)
        return {"tenant": tenant.slug, "key_rotation_days": (tenant.settings or {}).get("key_rotation_days")}

    _emit(_run(work), as_json)


@main.group("provisioning-token")
def provisioning_token() -> None:
    """Manage SCIM provisioning tokens for HR systems."""


@provisioning_token.command("create")
@click.option("--tenant", "slug", required=True)
@click.option("--name", default="HR provisioning", show_default=True)
@click.option("--json", "as_json", is_flag=True)
def provisioning_token_create(slug: str, name: str, as_json: bool) -> None:
    """Create a SCIM bearer token; it is printed once and only its keyed hash is stored."""
    from idhub.credentials.provisioning import create_provisioning_token

    async def work(ctx: AppContext, uow: UnitOfWork) -> dict[str, Any]:
        tenant = await require_tenant(uow.session, slug)
        row, token = await create_provisioning_token(uow, tenant_id=tenant.id, name=name, hasher=ctx.secret_hasher)
        return {"tenant": tenant.slug, "id": str(row.id), "token": token}

    _emit(_run(work), as_json)


@provisioning_token.command("list")
@click.option("--tenant", "slug", required=True)
@click.option("--json", "as_json", is_flag=True)
def provisioning_token_list(slug: str, as_json: bool) -> None:
    """List the tenant's provisioning tokens (never the tokens themselves)."""
    from idhub.credentials.provisioning import list_provisioning_tokens

    async def work(_ctx: AppContext, uow: UnitOfWork) -> dict[str, Any]:
        tenant = await require_tenant(uow.session, slug)
        listed = await list_provisioning_tokens(uow, tenant_id=tenant.id)
        return {"tenant": tenant.slug, "tokens": [_token_json(t) for t in listed]}

    result = _run(work)
    if as_json:
        click.echo(json.dumps(result))
    else:
        for token in result["tokens"]:
            state = f"revoked {token['revoked_at']}" if token["revoked_at"] else "active"
            click.echo(f"{token['id']}  {token['name']}  created {token['created_at']}  {state}")


@provisioning_token.command("revoke")
@click.option("--tenant", "slug", required=True)
@click.option("--id", "token_id", required=True)
@click.option("--json", "as_json", is_flag=True)
def provisioning_token_revoke(slug: str, token_id: str, as_json: bool) -> None:
    """Revoke a provisioning token; every process refuses it from now on."""
    from idhub.credentials.provisioning import revoke_provisioning_token

    async def work(_ctx: AppContext, uow: UnitOfWork) -> dict[str, Any]:
        tenant = await require_tenant(uow.session, slug)
        listed = await revoke_provisioning_token(uow, tenant_id=tenant.id, token_id=_uuid(token_id, "--id"))
        return _token_json(listed)

    _emit(_run(work), as_json)


def _token_json(token: Any) -> dict[str, Any]:
    return {
        "id": str(token.id),
        "name": token.name,
        "created_at": token.created_at.isoformat(),
        "revoked_at": token.revoked_at.isoformat() if token.revoked_at else None,
    }


@main.command("openapi")
@click.option("--output", type=click.Path(dir_okay=False, writable=True), default=None, help="file to write")
def openapi_command(output: str | None) -> None:
    """Print (or write to --output) the OpenAPI document the app serves."""
    from idhub.openapi import export_openapi, render_openapi

    text = render_openapi(export_openapi())
    if output is None:
        click.echo(text, nl=False)
    else:
        with open(output, "w", encoding="utf-8") as handle:
            handle.write(text)


@main.group()
def tenant() -> None:
    """Manage tenants."""


@tenant.command("update")
@click.option("--tenant", "slug", required=True)
@click.option(
    "--access-token-alg",
    type=click.Choice(["ES256", "RS256"]),
    default=None,
    help="default signing algorithm of access tokens (clients may override it)",
)
@click.option("--name", default=None)
@click.option("--json", "as_json", is_flag=True)
def tenant_update(slug: str, access_token_alg: str | None, name: str | None, as_json: bool) -> None:
    """Change a tenant's settings (other processes pick the change up within seconds)."""
    from idhub.tenants.service import update_tenant

    async def work(ctx: AppContext, uow: UnitOfWork) -> dict[str, Any]:
        row = await update_tenant(uow, slug=slug, name=name, access_token_alg=access_token_alg)
        return {"tenant": row.slug, "name": row.name, "settings": row.settings}

    _emit(_run(work), as_json)


@main.group()
def idp() -> None:
    """Manage upstream identity providers (corporate OIDC and SAML, social networks)."""


_IDP_TYPES = ["oidc", "saml", "google", "microsoft", "github", "facebook", "linkedin"]
_USERINFO_HELP = "OIDC: read UserInfo only when the ID token lacks claims idhub reads (auto, the default) or always"


@idp.command("create")
@click.option("--tenant", "slug", required=True)
@click.option("--alias", required=True, help="short name used in URLs and idp_hint")
@click.option("--type", "kind", required=True, type=click.Choice(_IDP_TYPES))
@click.option("--issuer", default=None, help="the upstream OpenID provider's issuer (discovery is fetched from it)")
@click.option("--client-id", default=None)
@click.option("--client-secret-stdin", is_flag=True, help="read the upstream client secret from standard input")
@click.option("--metadata-file", type=click.Path(exists=True, dir_okay=False), default=None)
@click.option("--metadata-url", default=None)
@click.option("--internal", is_flag=True, help="allow private and loopback addresses (a test peer on 127.0.0.1)")
@click.option("--no-jit", is_flag=True, help="do not create directory users on first sign-in")
@click.option("--display-name", default=None)
@click.option("--email-domain", "email_domains", multiple=True, help="a domain this upstream is authoritative for")
@click.option("--link-claim", default=None, help="upstream claim matched against the directory's externalId")
@click.option("--idp-initiated", is_flag=True, help="SAML: accept sign-ins the IdP starts (off by default)")
@click.option("--userinfo", type=click.Choice(["auto", "always"]), default=None, help=_USERINFO_HELP)
@click.option("--mapping-file", type=click.Path(exists=True, dir_okay=False), default=None, help="mapping rules (JSON)")
@click.option("--json", "as_json", is_flag=True)
def idp_create(
    slug: str,
    alias: str,
    kind: str,
    issuer: str | None,
    client_id: str | None,
    client_secret_stdin: bool,
    metadata_file: str | None,
    metadata_url: str | None,
    internal: bool,
    no_jit: bool,
    display_name: str | None,
    email_domains: tuple[str, ...],
    link_claim: str | None,
    idp_initiated: bool,
    userinfo: str | None,
    mapping_file: str | None,
    as_json: bool,
) -> None:
    """Add an upstream and print the URLs to register with it (callback, or SAML ACS and metadata)."""
    from dataclasses import replace

    from idhub.broker.providers import NewProvider

    if metadata_file and metadata_url:
        _fail("give --metadata-file or --metadata-url, not both")
    secret = sys.stdin.readline().rstrip("\n") if client_secret_stdin else None
    if client_secret_stdin and not secret:
        _fail("no client secret on standard input")
    metadata = Path(metadata_file).read_bytes() if metadata_file else None
    new = NewProvider(
        alias=alias,
        type=kind,
        issuer=issuer,
        client_id=client_id,
        client_secret=secret,
        metadata_xml=metadata,
        metadata_url=metadata_url,
        internal=internal,
        jit=not no_jit,
        display_name=display_name,
        email_domains=email_domains,
        link_claim=link_claim,
        allow_idp_initiated=idp_initiated,
        userinfo=userinfo,
        mapping=Path(mapping_file).read_bytes() if mapping_file else None,
    )

    async def work(ctx: AppContext, uow: UnitOfWork) -> dict[str, Any]:
        tenant = await require_tenant(uow.session, slug)
        issuer = issuer_for(ctx.settings.public_url, tenant.slug)
        created = await ctx.broker.providers(uow).create(tenant.id, replace(new, tenant_issuer=issuer))
        return {"tenant": tenant.slug, **created.describe(issuer)}

    _emit(_run(work), as_json)


@idp.command("list")
@click.option("--tenant", "slug", required=True)
@click.option("--json", "as_json", is_flag=True)
def idp_list(slug: str, as_json: bool) -> None:
    """List the tenant's upstream identity providers (never their secrets)."""

    async def work(ctx: AppContext, uow: UnitOfWork) -> dict[str, Any]:
        tenant = await require_tenant(uow.session, slug)
        issuer = issuer_for(ctx.settings.public_url, tenant.slug)
        listed = await ctx.broker.providers(uow).list(tenant.id)
        return {"tenant": tenant.slug, "identity_providers": [p.describe(issuer) for p in listed]}

    result = _run(work)
    if as_json:
        click.echo(json.dumps(result))
    else:
        for provider in result["identity_providers"]:
            state = "enabled" if provider["enabled"] else "disabled"
            click.echo(f"{provider['alias']}  {provider['type']}  {provider['display_name']}  {state}")


@idp.command("show")
@click.option("--tenant", "slug", required=True)
@click.option("--alias", required=True)
@click.option("--json", "as_json", is_flag=True)
def idp_show(slug: str, alias: str, as_json: bool) -> None:
    """Show one upstream's settings and URLs (never its secret)."""

    async def work(ctx: AppContext, uow: UnitOfWork) -> dict[str, Any]:
        tenant = await require_tenant(uow.session, slug)
        found = await ctx.broker.providers(uow).get(tenant.id, alias)
        return {"tenant": tenant.slug, **found.describe(issuer_for(ctx.settings.public_url, tenant.slug))}

    _emit(_run(work), as_json)


@idp.command("update")
@click.option("--tenant", "slug", required=True)
@click.option("--alias", required=True)
@click.option("--enable/--disable", "enabled", default=None)
@click.option("--jit/--no-jit", "jit", default=None)
@click.option("--display-name", default=None)
@click.option("--client-secret-stdin", is_flag=True, help="replace the upstream client secret")
@click.option("--email-domain", "email_domains", multiple=True, help="replaces the authoritative domains")
@click.option("--clear-email-domains", is_flag=True)
@click.option("--link-claim", default=None, help='upstream claim for externalId linking ("" removes it)')
@click.option("--mapping-file", type=click.Path(exists=True, dir_okay=False), default=None, help="mapping rules (JSON)")
@click.option("--clear-mapping", is_flag=True, help="back to the default mapping")
@click.option(
    "--metadata-file", type=click.Path(exists=True, dir_okay=False), default=None, help="SAML: new IdP metadata"
)
@click.option("--metadata-url", default=None, help="SAML: fetch new IdP metadata (certificate rollover)")
@click.option("--idp-initiated/--no-idp-initiated", "idp_initiated", default=None, help="SAML: IdP-started sign-ins")
@click.option("--userinfo", type=click.Choice(["auto", "always"]), default=None, help=_USERINFO_HELP)
@click.option("--json", "as_json", is_flag=True)
def idp_update(
    slug: str,
    alias: str,
    enabled: bool | None,
    jit: bool | None,
    display_name: str | None,
    client_secret_stdin: bool,
    email_domains: tuple[str, ...],
    clear_email_domains: bool,
    link_claim: str | None,
    mapping_file: str | None,
    clear_mapping: bool,
    metadata_file: str | None,
    metadata_url: str | None,
    idp_initiated: bool | None,
    userinfo: str | None,
    as_json: bool,
) -> None:
    """Change an upstream's settings; what is not given stays."""
    secret = sys.stdin.readline().rstrip("\n") if client_secret_stdin else None
    if client_secret_stdin and not secret:
        _fail("no client secret on standard input")
    domains: tuple[str, ...] | None = () if clear_email_domains else (email_domains or None)
    mapping = Path(mapping_file).read_bytes() if mapping_file else None
    metadata = Path(metadata_file).read_bytes() if metadata_file else None

    async def work(ctx: AppContext, uow: UnitOfWork) -> dict[str, Any]:
        tenant = await require_tenant(uow.session, slug)
        changed = await ctx.broker.providers(uow).update(
            tenant.id,
            alias,
            enabled=enabled,
            jit=jit,
            display_name=display_name,
            client_secret=secret,
            email_domains=domains,
            link_claim=link_claim,
            mapping=mapping,
            clear_mapping=clear_mapping,
            metadata_xml=metadata,
            metadata_url=metadata_url,
            allow_idp_initiated=idp_initiated,
            userinfo=userinfo,
        )
        return {"tenant": tenant.slug, **changed.describe(issuer_for(ctx.settings.public_url, tenant.slug))}

    _emit(_run(work), as_json)


@idp.command("preview")
@click.option("--tenant", "slug", required=True)
@click.option("--alias", required=True)
@click.option(
    "--claims-file",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="a sample assertion: OIDC claims, or SAML name_id and attributes (JSON)",
)
@click.option("--json", "as_json", is_flag=True)
def idp_preview(slug: str, alias: str, claims_file: str, as_json: bool) -> None:
    """Print what a sign-in with a sample assertion would map, link and change; nothing is changed."""
    from idhub.broker.sync import preview_claims

    sample = Path(claims_file).read_bytes()

    async def work(ctx: AppContext, uow: UnitOfWork) -> dict[str, Any]:
        tenant = await require_tenant(uow.session, slug)
        try:
            provider = await ctx.broker.providers(uow).get(tenant.id, alias)
            preview = await preview_claims(uow, directory=ctx.directory(uow), provider=provider, sample=sample)
            return {"tenant": tenant.slug, "alias": provider.alias, **preview.describe()}
        finally:
            await uow.rollback()  # read-only, whatever happened above

    result = _run(work)
    if as_json:
        click.echo(json.dumps(result))
    else:
        link = result["link"]
        click.echo(f"link: {link['rule']}  user {link['userName'] or '-'} {link['user_id'] or ''}".rstrip())
        for name, value in result["attributes"].items():
            click.echo(f"attribute {name}: {value}")
        for name in result["groups"]:
            click.echo(f"group: {name}")
        for key, values in result["changes"].items():
            if values:
                click.echo(f"{key}: {', '.join(values)}")


@idp.command("delete")
@click.option("--tenant", "slug", required=True)
@click.option("--alias", required=True)
@click.option("--json", "as_json", is_flag=True)
def idp_delete(slug: str, alias: str, as_json: bool) -> None:
    """Remove an upstream with its links; the sessions that came through it end now."""

    async def work(ctx: AppContext, uow: UnitOfWork) -> dict[str, Any]:
        tenant = await require_tenant(uow.session, slug)
        removed = await ctx.broker.providers(uow).delete(tenant.id, alias)
        return {"tenant": tenant.slug, "alias": removed.alias, "deleted": True}

    _emit(_run(work), as_json)


@main.group()
def link() -> None:
    """Manage linked upstream accounts (which corporate or social account signs in as which user)."""


@link.command("list")
@click.option("--tenant", "slug", required=True)
@click.option("--username", default=None, help="only this user's links")
@click.option("--json", "as_json", is_flag=True)
def link_list(slug: str, username: str | None, as_json: bool) -> None:
    """List linked accounts (upstream alias, upstream subject, user)."""
    from idhub.broker.linking import list_links

    async def work(ctx: AppContext, uow: UnitOfWork) -> dict[str, Any]:
        tenant = await require_tenant(uow.session, slug)
        user_id = (await _find_user(ctx, uow, tenant.id, username, None)).id if username else None
        links = await list_links(uow, tenant_id=tenant.id, user_id=user_id)
        return {"tenant": tenant.slug, "links": [found.describe() for found in links]}

    result = _run(work)
    if as_json:
        click.echo(json.dumps(result))
    else:
        for found in result["links"]:
            click.echo(f"{found['id']}  {found['alias']}:{found['subject']}  user {found['user_id']}")


@link.command("delete")
@click.option("--tenant", "slug", required=True)
@click.option("--id", "link_id", required=True, help="the link's id (from idhub link list)")
@click.option("--json", "as_json", is_flag=True)
def link_delete(slug: str, link_id: str, as_json: bool) -> None:
    """Remove a link; the sessions it created end now."""
    from idhub.broker.linking import remove_link

    async def work(_ctx: AppContext, uow: UnitOfWork) -> dict[str, Any]:
        tenant = await require_tenant(uow.session, slug)
        removed = await remove_link(uow, tenant_id=tenant.id, link_id=_uuid(link_id, "--id"), how="operator")
        return {"tenant": tenant.slug, "id": str(removed.id), "deleted": True}

    _emit(_run(work), as_json)


@main.group()
def audit() -> None:
    """Check and export the tamper-evident audit log."""


def _tenant_ids(uow: UnitOfWork, slug: str | None) -> Awaitable[list[tuple[uuid.UUID, str]]]:
    async def find() -> list[tuple[uuid.UUID, str]]:
        from idhub.audit.chain import tenants_with_entries
        from idhub.storage.models import Tenant

        if slug is not None:
            tenant = await require_tenant(uow.session, slug)
            return [(tenant.id, tenant.slug)]
        ids = await tenants_with_entries(uow.session)
        slugs = {row.id: row.slug for row in (await uow.session.execute(select(Tenant.id, Tenant.slug))).all()}
        return [(tenant_id, slugs.get(tenant_id, str(tenant_id))) for tenant_id in ids]

    return find()


@audit.command("verify")
@click.option("--tenant", "slug", default=None, help="one tenant (default: every tenant)")
@click.option(
    "--archive",
    "archives",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="archive files of the tenant (from idhub audit archive): checked, and linked to the database",
)
@click.option("--json", "as_json", is_flag=True)
def audit_verify(slug: str | None, archives: tuple[Path, ...], as_json: bool) -> None:
    """Check every entry's MAC, the numbering and the chain; exit 0 only when intact, else name the first break."""
    from idhub.audit.chain import verify

    async def work(ctx: AppContext, uow: UnitOfWork) -> list[dict[str, Any]]:
        verdicts = []
        files = _archives_by_tenant(archives)
        tenants = await _tenant_ids(uow, slug)
        if set(files) - {tenant_id for tenant_id, _slug in tenants}:
            raise Invalid("an --archive file belongs to another tenant (or one without entries)")
        for tenant_id, tenant_slug in tenants:
            if tenant_id in files:
                verdicts.append(await _verify_with_archives(ctx, uow, tenant_id, tenant_slug, files[tenant_id]))
                continue
            verdict = await verify(uow.session, ctx.audit.chain, tenant_id)
            verdicts.append(
                {
                    "tenant": tenant_slug,
                    "intact": verdict.intact,
                    "entries": verdict.entries,
                    "unchained": verdict.unchained,
                    "archived_seq": verdict.anchor.seq if verdict.anchor else None,
                    "broken_at": str(verdict.broken_at) if verdict.broken_at else None,
                    "broken_seq": verdict.broken_seq,
                    "reason": verdict.reason,
                }
            )
        return verdicts

    verdicts = _run(work)
    intact = all(verdict["intact"] for verdict in verdicts)
    if as_json:
        click.echo(json.dumps({"intact": intact, "tenants": verdicts}))
    else:
        for verdict in verdicts:
            if verdict["intact"]:
                older = f" ({verdict['unchained']} older entries predate the chain)" if verdict["unchained"] else ""
                click.echo(f"{verdict['tenant']}: intact, {verdict['entries']} entries{older}")
            else:
                where = f" at entry {verdict['broken_seq']} ({verdict['broken_at']})" if verdict["broken_at"] else ""
                where += f" in {verdict['broken_file']}" if verdict.get("broken_file") else ""
                click.echo(f"{verdict['tenant']}: BROKEN{where}: {verdict['reason']}")
    sys.exit(0 if intact else 1)


@audit.command("export")
@click.option("--tenant", "slug", default=None, help="one tenant (default: every tenant)")
@click.option("--output", type=click.Path(dir_okay=False, writable=True), default="-", help="file (default: stdout)")
def audit_export(slug: str | None, output: str) -> None:
    """Write the audit log as JSON lines (every column, the chain's seq, prev_hash and hash included)."""
    from idhub.audit.chain import export_lines

    async def work(_ctx: AppContext, uow: UnitOfWork) -> int:
        written = 0
        with click.open_file(output, "w", encoding="utf-8") as out:
            for tenant_id, _slug in await _tenant_ids(uow, slug):
                async for line in export_lines(uow.session, tenant_id):
                    out.write(line + "\n")
                    written += 1
        return written

    written = _run(work)
    if output != "-":
        click.echo(f"{written} entries written to {output}", err=True)


# --- audit retention, archive and its check ---


def _archive_key(settings: Settings) -> bytes:
    from idhub.crypto.encryption import derive_key

    return derive_key(settings.master_key_bytes(), "audit-archive")


def _archives_by_tenant(paths: tuple[Path, ...]) -> dict[uuid.UUID, list[Path]]:
    """Group archive files by the tenant their header names (a file that is no archive: one-line error)."""
    from idhub.audit.archive import read_header

    grouped: dict[uuid.UUID, list[Path]] = {}
    for path in paths:
        try:
            tenant_id = uuid.UUID(str(read_header(path).get("tenant_id")))
        except ValueError as exc:
            raise Invalid(f"{path}: the archive names no tenant") from exc
        grouped.setdefault(tenant_id, []).append(path)
    return grouped


async def _verify_with_archives(
    ctx: AppContext, uow: UnitOfWork, tenant_id: uuid.UUID, slug: str, paths: list[Path]
) -> dict[str, Any]:
    from idhub.audit.archive import verify_with_archives

    report = await verify_with_archives(
        uow.session, chain=ctx.audit.chain, key=_archive_key(ctx.settings), tenant_id=tenant_id, paths=paths
    )
    database = report.database
    broken = next((verdict for verdict in report.files if not verdict.intact), None)
    return {
        "tenant": slug,
        "intact": report.intact,
        "entries": database.entries if database else 0,
        "unchained": database.unchained if database else 0,
        "archived_seq": database.anchor.seq if database and database.anchor else None,
        "archive_entries": sum(verdict.entries for verdict in report.files),
        "archive_unchained": sum(verdict.unchained for verdict in report.files),
        "starts_at": report.starts_at,
        "files": [verdict.describe() for verdict in report.files],
        "broken_file": str(report.broken_file) if report.broken_file else None,
        "broken_at": str(database.broken_at) if database and database.broken_at else None,
        "broken_seq": broken.broken_seq if broken else (database.broken_seq if database else None),
        "reason": report.reason or (database.reason if database else None),
    }


@audit.command("archive")
@click.option("--tenant", "slug", default=None, help="one tenant (default: every tenant)")
@click.option(
    "--output-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="where the files go (default: IDHUB_AUDIT__ARCHIVE_DIR, else <data dir>/audit-archive)",
)
@click.option(
    "--days",
    type=click.IntRange(0, 36500),
    default=None,
    help="archive entries older than this (default: the retention; 0: everything up to now)",
)
@click.option("--batch", type=click.IntRange(1, 1_000_000), default=None, help="entries per file and transaction")
@click.option("--json", "as_json", is_flag=True)
def audit_archive(
    slug: str | None, output_dir: Path | None, days: int | None, batch: int | None, as_json: bool
) -> None:
    """Move entries older than the retention into sealed archive files (the database keeps an anchor)."""
    from idhub.audit.archive import archive_tenant, retention_days
    from idhub.storage.models import Tenant

    async def work(ctx: AppContext, uow: UnitOfWork) -> dict[str, Any]:
        settings = ctx.settings
        directory = output_dir or settings.audit.archive_dir or settings.data_dir / "audit-archive"
        key = _archive_key(settings)
        tenants: list[dict[str, Any]] = []
        files: list[dict[str, Any]] = []
        for tenant_id, tenant_slug in await _tenant_ids(uow, slug):
            tenant = await uow.session.get(Tenant, tenant_id)
            default = settings.audit.retention_days
            keep = days if days is not None else retention_days(tenant.settings if tenant else None, default)
            written = []
            if keep is not None:
                written = await archive_tenant(
                    ctx.uow_factory,
                    chain=ctx.audit.chain,
                    key=key,
                    tenant_id=tenant_id,
                    slug=tenant_slug,
                    days=keep,
                    directory=directory,
                    batch=batch or settings.audit.archive_batch,
                    actor=uow.actor,
                )
            files.extend(found.describe() for found in written)
            tenants.append(
                {
                    "tenant": tenant_slug,
                    "retention_days": keep,
                    "files": len(written),
                    "entries": sum(found.entries for found in written),
                    "unchained": sum(found.unchained for found in written),
                }
            )
        return {"directory": str(directory), "tenants": tenants, "files": files}

    result = _run(work)
    if as_json:
        click.echo(json.dumps(result))
    else:
        for found in result["tenants"]:
            if found["retention_days"] is None:
                click.echo(f"{found['tenant']}: kept forever (no retention set)")
            else:
                click.echo(
                    f"{found['tenant']}: {found['entries'] + found['unchained']} entries older than "
                    f"{found['retention_days']} days archived into {found['files']} files"
                )
        for found in result["files"]:
            click.echo(f"  {found['file']}")


@audit.command("verify-archive")
@click.option(
    "--input",
    "inputs",
    required=True,
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="archive file (repeat for a tenant's series: they must link without gaps)",
)
@click.option("--json", "as_json", is_flag=True)
def audit_verify_archive(inputs: tuple[Path, ...], as_json: bool) -> None:
    """Check archive files without the database: seals, entries, and the links between them."""
    from idhub.audit.archive import check_files
    from idhub.audit.chain import AuditChain
    from idhub.crypto.encryption import derive_key

    settings = _settings()
    chain = AuditChain(derive_key(settings.master_key_bytes(), "audit-chain"))
    try:
        report = check_files(list(inputs), chain=chain, key=_archive_key(settings))
    except DomainError as exc:
        _fail(exc.detail or exc.__class__.__name__)
        return
    result = {
        "intact": report.intact,
        "tenant_id": str(report.tenant_id),
        "starts_at": report.starts_at,
        "files": [verdict.describe() for verdict in report.files],
        "broken_file": str(report.broken_file) if report.broken_file else None,
        "reason": report.reason,
    }
    if as_json:
        click.echo(json.dumps(result))
    else:
        for verdict in report.files:
            state = "intact" if verdict.intact else f"BROKEN: {verdict.reason}"
            click.echo(f"{verdict.path}: {state} ({verdict.entries} entries, {verdict.unchained} unchained)")
        if report.reason and all(verdict.intact for verdict in report.files):
            click.echo(f"BROKEN: {report.reason}")  # the files are sound; how they link is not
    sys.exit(0 if report.intact else 1)


@audit.command("retention")
@click.option("--tenant", "slug", required=True)
@click.option("--days", type=click.IntRange(1, 36500), default=None, help="keep entries this many days in the database")
@click.option("--forever", is_flag=True, help="never archive this tenant's entries")
@click.option("--inherit", is_flag=True, help="follow IDHUB_AUDIT__RETENTION_DAYS")
@click.option("--json", "as_json", is_flag=True)
def audit_retention(slug: str, days: int | None, forever: bool, inherit: bool, as_json: bool) -> None:
    """Set how long a tenant's audit entries stay in the database before idhub audit archive moves them."""
    from idhub.audit.archive import RETENTION_SETTING, set_retention

    if sum((days is not None, forever, inherit)) != 1:
        _fail("give exactly one of --days N, --forever, --inherit")

    async def work(ctx: AppContext, uow: UnitOfWork) -> dict[str, Any]:
        tenant = await set_retention(uow, slug=slug, days=days, inherit=inherit)
        settings = tenant.settings or {}
        return {
            "tenant": tenant.slug,
            "retention_days": settings.get(RETENTION_SETTING, ctx.settings.audit.retention_days),
            "inherited": RETENTION_SETTING not in settings,
        }

    _emit(_run(work), as_json)


# --- access policies and the entitlement report ---


@main.group()
def policy() -> None:
    """Manage access policies: which groups (or the client itself) get which scopes at a client."""


def _policy_line(found: dict[str, Any]) -> str:
    subject = "machine" if found["subject"] == "machine" else f"group {found['group_name']} ({found['group_id']})"
    return f"{found['id']}  {found['client_id']}  {subject}  {found['scope']}"


@policy.command("create")
@click.option("--tenant", "slug", required=True)
@click.option("--client", "client_id", required=True, help="the client's client_id")
@click.option("--group", "group_ref", default=None, help="the group's name or id: its members get the scopes")
@click.option("--machine", is_flag=True, help="the client's own policy: what its client_credentials tokens may carry")
@click.option("--scope", required=True, help='space-separated scopes, e.g. "orders:read orders:write"')
@click.option("--json", "as_json", is_flag=True)
def policy_create(slug: str, client_id: str, group_ref: str | None, machine: bool, scope: str, as_json: bool) -> None:
    """Give a group's members (or the client itself) scopes at a client; print the policy's id."""

    async def work(ctx: AppContext, uow: UnitOfWork) -> dict[str, Any]:
        if (group_ref is None) == (not machine):
            raise click.UsageError("give exactly one of --group and --machine")
        tenant = await require_tenant(uow.session, slug)
        group_id = None if group_ref is None else (await _find_group(ctx, uow, tenant.id, group_ref)).id
        created = await ctx.directory(uow).entitlements.create(
            tenant.id, client_id=client_id, group_id=group_id, scopes=scope
        )
        return created.to_dict()

    _emit(_run(work), as_json)


# --- backup, restore and archived records ---


def _backup_engine(settings: Settings) -> Any:
    """Return an engine for a backup or restore: one long transaction, so statements get minutes, not seconds."""
    from idhub.storage.engine import Timeouts, create_engine

    timeouts = Timeouts(
        connect=settings.database_connect_timeout,
        command=max(settings.database_command_timeout, 600.0),
        pool=settings.database_pool_timeout,
    )
    return create_engine(settings.database_url, pool_size=2, timeouts=timeouts)


async def _audit_backup_events(settings: Settings, events: list[Any]) -> None:
    """Record backup events in the audit log, acting as the operator (a separate, short unit of work).

    The backup or restore itself is done by then: an entry that cannot be written (a source database at an
    older schema, without the chain's columns) is a warning, not a failure of the command.
    """
    ctx = build_context(settings)
    try:
        async with ctx.uow(actor=_operator(), surface="cli") as uow:
            uow.raise_events(events)
    except Exception as exc:
        click.echo(f"warning: the audit entry could not be written: {str(exc).splitlines()[0]}", err=True)
    finally:
        await ctx.close()


def _run_backup_step(step: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a backup step; a domain error (a damaged file, a busy target) is a one-line error."""
    try:
        return asyncio.run(step())
    except DomainError as exc:
        _fail(exc.detail or exc.__class__.__name__)
        raise  # unreachable
    except OSError as exc:
        _fail(f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc))
        raise  # unreachable
    except SQLAlchemyError as exc:
        _fail(f"database error: {str(exc.orig if hasattr(exc, 'orig') else exc).splitlines()[0]}")
        raise  # unreachable


@main.group(invoke_without_command=True)
@click.option("--output", type=click.Path(dir_okay=False), default=None, help="the backup file to write")
@click.option("--tenant", "slug", default=None, help="one tenant (default: every tenant)")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def backup(context: click.Context, output: str | None, slug: str | None, as_json: bool) -> None:
    """Write a consistent, encrypted backup (--output FILE); "idhub backup verify" checks one."""
    if context.invoked_subcommand is not None:
        if output or slug:
            _fail("--output and --tenant belong to idhub backup itself, not to its subcommands")
        return
    if output is None:
        _fail("give --output FILE (or a subcommand: idhub backup verify --input FILE)")
        return
    import os

    from idhub.backup.dump import write_backup
    from idhub.events import BackupTaken

    settings = _settings()
    master = settings.master_key_bytes()
    _require_sqlite_file(settings)
    target = Path(output)
    partial = target.with_name(target.name + ".partial")

    async def step() -> dict[str, Any]:
        engine = _backup_engine(settings)
        try:
            # Owner-only from the first byte: the file is sealed, but who may copy it is still worth limiting.
            with os.fdopen(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as out:
                summary = await write_backup(engine, out, master_key=master, tenant=slug)
        finally:
            await engine.dispose()
        partial.replace(target)  # a file under the final name is always a whole backup
        scope = slug or "all"
        events = [BackupTaken(tenant_id=tid, file_id=summary.file_id, scope=scope) for tid, _s in summary.tenants]
        await _audit_backup_events(settings, events)
        return {"output": str(target), **summary.describe()}

    try:
        result = _run_backup_step(step)
    finally:
        partial.unlink(missing_ok=True)
    _emit_backup(result, as_json)


def _require_sqlite_file(settings: Settings) -> None:
    """Refuse to back up a SQLite database that does not exist (opening it would create an empty one)."""
    from sqlalchemy.engine import make_url

    database = make_url(settings.database_url).database
    if settings.is_sqlite and database and database != ":memory:" and not Path(database).exists():
        _fail(f"no database at {database}")


def _emit_backup(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(result))
        return
    tables = result.pop("tables", {})
    _emit(result, False)
    for name, count in tables.items():
        click.echo(f"  {name}: {count}")


@backup.command("verify")
@click.option("--input", "source", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--json", "as_json", is_flag=True)
def backup_verify(source: str, as_json: bool) -> None:
    """Decrypt and check a backup file completely (any changed, missing or added byte fails); writes nothing."""
    from idhub.backup.restore import verify_backup

    settings = _settings()
    master = settings.master_key_bytes()

    async def step() -> dict[str, Any]:
        verified = await asyncio.to_thread(verify_backup, Path(source), master_key=master)
        return {"input": source, "valid": True, **verified.describe()}

    _emit_backup(_run_backup_step(step), as_json)


@main.command()
@click.option("--input", "source", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--json", "as_json", is_flag=True)
def restore(source: str, as_json: bool) -> None:
    """Rebuild the (empty) database of IDHUB_DATABASE_URL from a backup; needs the same IDHUB_MASTER_KEY."""
    from idhub.backup.restore import restore_backup, restored_tenants
    from idhub.events import BackupRestored

    settings = _settings()
    master = settings.master_key_bytes()

    async def step() -> dict[str, Any]:
        engine = _backup_engine(settings)
        try:
            restored = await restore_backup(engine, Path(source), master_key=master)
            tenants = await restored_tenants(engine, restored.manifest)
        finally:
            await engine.dispose()
        fields = restored.header.fields
        events = [
            BackupRestored(
                tenant_id=uuid.UUID(tid), file_id=str(fields.get("file_id")), taken_at=str(fields.get("created_at"))
            )
            for tid, _slug in tenants
        ]
        await _audit_backup_events(settings, events)
        return {"input": source, "restored": True, **restored.describe()}

    _emit_backup(_run_backup_step(step), as_json)


@main.group()
def archive() -> None:
    """Archived records of deleted users: retention and purge."""


@archive.command("purge")
@click.option("--tenant", "slug", default=None, help="one tenant (default: every tenant)")
@click.option("--dry-run", is_flag=True, help="only count what the purge would remove")
@click.option("--json", "as_json", is_flag=True)
def archive_purge(slug: str | None, dry_run: bool, as_json: bool) -> None:
    """Remove archived records of deleted users whose retention period has ended (audited per person)."""
    from idhub.backup.archive import purge_archived

    settings = _settings()
    if settings.is_sqlite:
        upgrade(settings.database_url)

    async def runner() -> dict[str, Any]:
        ctx = build_context(settings)
        try:
            counts = await purge_archived(
                lambda: ctx.uow(actor=_operator(), surface="cli"),
                default_days=settings.archive.retention_days,
                tenant=slug,
                dry_run=dry_run,
            )
        finally:
            await ctx.close()
        return {
            "dry_run": dry_run,
            "purged": sum(count.purged for count in counts),
            "tenants": {
                count.tenant: {
                    "purged": count.purged,
                    "retention_days": count.retention_days,
                    "deleted_before": count.cutoff.isoformat(),
                }
                for count in counts
            },
        }

    result = _run_backup_step(runner)
    if as_json:
        click.echo(json.dumps(result))
    else:
        verb = "would purge" if dry_run else "purged"
        for tenant_slug, count in result["tenants"].items():
            click.echo(f"{tenant_slug}: {verb} {count['purged']} (deleted before {count['deleted_before']})")


@user.command("export")
@click.option("--tenant", "slug", required=True)
@click.option("--username", default=None, help="the user's username (a deleted user's too)")
@click.option("--id", "user_id", default=None, help="the user's id")
@click.option("--output", type=click.Path(dir_okay=False, writable=True), default="-", help="file (default: stdout)")
def user_export(slug: str, username: str | None, user_id: str | None, output: str) -> None:
    """Write everything held about one person as one JSON document (GDPR Art. 15 and 20); audited."""
    from idhub.backup.archive import export_person, find_person

    if (username is None) == (user_id is None):
        _fail("give exactly one of --username and --id")

    async def work(_ctx: AppContext, uow: UnitOfWork) -> dict[str, Any]:
        tenant = await require_tenant(uow.session, slug)
        person = await find_person(
            uow, tenant_id=tenant.id, username=username, user_id=_uuid(user_id, "--id") if user_id else None
        )
        return await export_person(uow, tenant=tenant, user=person)

    document = _run(work)
    with click.open_file(output, "w", encoding="utf-8") as out:
        out.write(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    if output != "-":
        click.echo(f"exported user {document['user']['id']} to {output}", err=True)


@policy.command("list")
@click.option("--tenant", "slug", required=True)
@click.option("--client", "client_id", default=None, help="only this client's policies")
@click.option("--group", "group_ref", default=None, help="only this group's policies (name or id)")
@click.option("--json", "as_json", is_flag=True)
def policy_list(slug: str, client_id: str | None, group_ref: str | None, as_json: bool) -> None:
    """List the tenant's access policies."""

    async def work(ctx: AppContext, uow: UnitOfWork) -> list[dict[str, Any]]:
        tenant = await require_tenant(uow.session, slug)
        group_id = None if group_ref is None else (await _find_group(ctx, uow, tenant.id, group_ref)).id
        found = await ctx.directory(uow).entitlements.list(tenant.id, client_id=client_id, group_id=group_id)
        return [view.to_dict() for view in found]

    policies = _run(work)
    if as_json:
        click.echo(json.dumps({"policies": policies}))
    else:
        for found in policies:
            click.echo(_policy_line(found))


@policy.command("update")
@click.option("--tenant", "slug", required=True)
@click.option("--id", "policy_id", required=True)
@click.option("--scope", required=True, help="the policy's new scopes (replace the old ones)")
@click.option("--json", "as_json", is_flag=True)
def policy_update(slug: str, policy_id: str, scope: str, as_json: bool) -> None:
    """Replace a policy's scopes; refresh tokens carrying a scope it no longer grants are revoked."""

    async def work(ctx: AppContext, uow: UnitOfWork) -> dict[str, Any]:
        tenant = await require_tenant(uow.session, slug)
        updated = await ctx.directory(uow).entitlements.update(tenant.id, _uuid(policy_id, "--id"), scopes=scope)
        return updated.to_dict()

    _emit(_run(work), as_json)


@policy.command("delete")
@click.option("--tenant", "slug", required=True)
@click.option("--id", "policy_id", required=True)
@click.option("--json", "as_json", is_flag=True)
def policy_delete(slug: str, policy_id: str, as_json: bool) -> None:
    """Delete a policy (a client's last one makes it open to everyone again)."""

    async def work(ctx: AppContext, uow: UnitOfWork) -> dict[str, Any]:
        tenant = await require_tenant(uow.session, slug)
        found = _uuid(policy_id, "--id")
        await ctx.directory(uow).entitlements.delete(tenant.id, found)
        return {"id": str(found), "deleted": True}

    _emit(_run(work), as_json)


@main.group()
def report() -> None:
    """Reports about a tenant."""


@report.command("entitlements")
@click.option("--tenant", "slug", required=True)
@click.option("--client", "client_id", default=None, help="only this client")
@click.option(
    "--people", is_flag=True, help="also list, person by person, what they can obtain and through which group"
)
@click.option("--json", "as_json", is_flag=True)
def report_entitlements(slug: str, client_id: str | None, people: bool, as_json: bool) -> None:
    """Show who can obtain which scopes at which client, and through which group."""

    async def work(ctx: AppContext, uow: UnitOfWork) -> dict[str, Any]:
        tenant = await require_tenant(uow.session, slug)
        found = await ctx.directory(uow).entitlements.report(tenant.id, client_id=client_id, people=people)
        return {"tenant": tenant.slug, **found.to_dict()}

    result = _run(work)
    if as_json:
        click.echo(json.dumps(result))
        return
    for client in result["clients"]:
        state = "governed" if client["governed"] else "ungoverned (open to every user)"
        click.echo(f"{client['client_id']} ({client['name']}): {state}")
        if client["open_to_all_users"]:
            click.echo(f"  every user: {' '.join(client['open_to_all_users'])}")
        for grant in client["scopes"]:
            click.echo(f"  {grant['scope']}: {', '.join(g['name'] for g in grant['groups'])}")
        if client["machine_scopes"] is not None:
            click.echo(f"  machine (client_credentials): {' '.join(client['machine_scopes']) or '-'}")
        for person in client.get("people") or ():
            held = ", ".join(
                f"{s['scope']} (via {', '.join(g['name'] for g in s['groups'])})" for s in person["scopes"]
            )
            click.echo(f"    {person['username']}: {held}")


@main.command()
@click.option("--json", "as_json", is_flag=True)
def doctor(as_json: bool) -> None:
    """Check this installation and list what is wrong, each problem with its fix (read-only).

    Prints the effective settings (secrets hidden) and where each comes from, the data folder, where the
    master key comes from, whether the database and Redis answer, the schema revision against this
    code's, and each tenant's signing keys. Exits 1 when an error is found; warnings alone exit 0.
    """
    report = diagnose(explain_database=database_trouble)
    click.echo(report.render_json() if as_json else report.render_text())
    if not report.ok:
        sys.exit(1)


# --- help for the options many commands share (an option's own help, where given, wins) -------------------
OPTION_HELP = {
    "as_json": "print one JSON object instead of text",
    "slug": "the tenant's slug (as in its issuer URL)",
    "name": "a display name",
    "alias": "the upstream identity provider's alias (as in its URLs and idp_hint)",
    "display_name": "the name shown on the login page",
    "policy_id": "the access policy's id",
    "source": "the backup file to read",
    "host": "the address to listen on",
    "port": "the port to listen on (without IDHUB_PUBLIC_URL the issuer follows it; set that in production)",
    "workers": "worker processes (each with its own connection pool; see the README on several instances)",
    "redirect_uris": "a redirect URI (repeatable; exact match, https or loopback for native apps)",
    "grant_types": "authorization_code, refresh_token or client_credentials (repeatable)",
    "post_logout_redirect_uris": "where RP-initiated logout may return (repeatable)",
    "backchannel_logout_uri": "where idhub POSTs logout tokens (OIDC Back-Channel Logout 1.0; https, public host)",
    "access_token_alg": "the algorithm that signs this client's access tokens (default: the tenant's)",
    "auth_method": "how the client authenticates at the token endpoint (default: client_secret_basic)",
    "username": "the person's username (case-insensitive)",
    "email": "the person's email address",
    "token_id": "the provisioning token's id",
    "kind": "the upstream's protocol or social network",
    "client_id": "the client's client_id",
    "metadata_file": "SAML: the IdP's metadata document",
    "metadata_url": "SAML: where to fetch the IdP's metadata",
    "enabled": "let people sign in through this upstream, or not",
    "jit": "create a directory user at an unknown person's first sign-in, or not",
    "clear_email_domains": "remove every authoritative email domain",
}


def _fill_option_help(command: click.Command) -> None:
    """Give every option of ``command`` and its subcommands a help text (``-h`` shows one for each)."""
    for param in command.params:
        if isinstance(param, click.Option) and not param.help and param.name in OPTION_HELP:
            param.help = OPTION_HELP[param.name]
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            _fill_option_help(sub)


_fill_option_help(main)
