"""The ``idhub`` command: serve, migrate, init, client, user, keys.

Every subcommand prints one JSON object with ``--json`` (``init`` always does) and exits non-zero with
a one-line error on bad input.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, TypeVar

import click
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from idhub.clients.service import create_client
from idhub.context import AppContext, build_context
from idhub.directory.users import create_user
from idhub.errors import DomainError
from idhub.settings import Settings
from idhub.storage.migrate import upgrade
from idhub.tenants.service import get_or_create_tenant, issuer_for, require_tenant

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


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        where = "__".join(str(part) for part in first.get("loc", ()))
        message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
        _fail(f"invalid setting{' IDHUB_' + where.upper() if where else ''}: {message}")
        raise  # unreachable
    except ValueError as exc:
        _fail(str(exc).splitlines()[0])
        raise  # unreachable


def _run(work: Callable[[AppContext, AsyncSession], Awaitable[T]]) -> T:
    """Run ``work`` in one transaction against the configured database (migrating SQLite first)."""
    settings = _settings()
    if settings.is_sqlite:
        upgrade(settings.database_url)

    async def runner() -> T:
        ctx = build_context(settings)
        try:
            async with ctx.sessionmaker() as session:
                result = await work(ctx, session)
                await session.commit()
                return result
        finally:
            await ctx.engine.dispose()

    try:
        return asyncio.run(runner())
    except DomainError as exc:
        _fail(exc.detail or exc.__class__.__name__)
        raise  # unreachable


@click.group()
def main() -> None:
    """Idhub: federated identity and access management."""


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--workers", default=1, show_default=True, type=int)
def serve(host: str, port: int, workers: int) -> None:
    """Start the HTTP server (SQLite databases are migrated on start)."""
    import uvicorn

    settings = _settings()
    if settings.is_sqlite:
        upgrade(settings.database_url)
    uvicorn.run(
        "idhub.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        proxy_headers=False,
        access_log=False,
        server_header=False,
        log_level=settings.log_level.lower(),
    )


@main.command()
def migrate() -> None:
    """Upgrade the database schema to the newest revision."""
    settings = _settings()
    upgrade(settings.database_url)
    click.echo(json.dumps({"migrated": True}))


@main.command()
@click.option("--tenant", "slug", required=True, help="tenant slug (lowercase letters, digits, hyphens)")
def init(slug: str) -> None:
    """Create the tenant if missing plus a new admin client; print the credentials as JSON."""

    async def work(ctx: AppContext, session: AsyncSession) -> dict[str, Any]:
        tenant, _created = await get_or_create_tenant(session, slug=slug, sealer=ctx.sealer)
        client, secret = await create_client(
            session,
            tenant_id=tenant.id,
            name="idhub admin",
            hasher=ctx.secret_hasher,
            grant_types=["client_credentials"],
            scope="idhub:admin",
        )
        return {
            "tenant": tenant.slug,
            "issuer": issuer_for(ctx.settings.public_url, tenant.slug),
            "admin_client_id": client.client_id,
            "admin_client_secret": secret,
        }

    click.echo(json.dumps(_run(work)))


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
@click.option("--resource", "resources", multiple=True, help="RFC 8707 resource the client may ask for")
@click.option("--access-token-alg", type=click.Choice(["ES256", "RS256"]), default=None)
@click.option("--auth-method", type=click.Choice(["client_secret_basic", "client_secret_post"]), default=None)
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
    resources: tuple[str, ...],
    access_token_alg: str | None,
    auth_method: str | None,
    first_party: bool,
    as_json: bool,
) -> None:
    """Register a client and print its id and (once) its secret."""

    async def work(ctx: AppContext, session: AsyncSession) -> dict[str, Any]:
        tenant = await require_tenant(session, slug)
        row, secret = await create_client(
            session,
            tenant_id=tenant.id,
            name=name,
            hasher=ctx.secret_hasher,
            redirect_uris=list(redirect_uris),
            grant_types=list(grant_types) or None,
            scope=scope,
            public=public,
            token_endpoint_auth_method=auth_method,
            post_logout_redirect_uris=list(post_logout_redirect_uris),
            backchannel_logout_uri=backchannel_logout_uri,
            resources=list(resources),
            access_token_alg=access_token_alg,
            first_party=first_party,
        )
        return {"client_id": row.client_id, "client_secret": secret}

    _emit(_run(work), as_json)


@main.group()
def user() -> None:
    """Manage local users."""


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
    """Create a local user and print its id."""
    password = sys.stdin.readline().rstrip("\r\n") if password_stdin else None

    async def work(ctx: AppContext, session: AsyncSession) -> dict[str, Any]:
        tenant = await require_tenant(session, slug)
        row = await create_user(
            session,
            tenant_id=tenant.id,
            username=username,
            email=email,
            name=name,
            password=password,
            hasher=ctx.passwords,
        )
        return {"id": str(row.id)}

    _emit(_run(work), as_json)


@main.group()
def keys() -> None:
    """Manage signing keys."""


@keys.command("rotate")
@click.option("--tenant", "slug", required=True)
@click.option("--json", "as_json", is_flag=True)
def keys_rotate(slug: str, as_json: bool) -> None:
    """Rotate keys: next -> active -> retired (published until its tokens expire)."""
    from idhub.crypto.keys import rotate_keys

    async def work(ctx: AppContext, session: AsyncSession) -> dict[str, Any]:
        tenant = await require_tenant(session, slug)
        tokens = ctx.settings.tokens
        lifetime = max(tokens.access_token_ttl, tokens.id_token_ttl) + 300
        active = await rotate_keys(
            session, tenant_id=tenant.id, sealer=ctx.sealer, max_token_lifetime=timedelta(seconds=lifetime)
        )
        return {"tenant": tenant.slug, "active_kids": active}

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
    from idhub.audit.service import Actor, record
    from idhub.scim.tokens import create_provisioning_token

    async def work(ctx: AppContext, session: AsyncSession) -> dict[str, Any]:
        tenant = await require_tenant(session, slug)
        row, token = await create_provisioning_token(session, tenant_id=tenant.id, name=name, hasher=ctx.secret_hasher)
        await record(
            session,
            tenant_id=tenant.id,
            actor=Actor(type="cli", id="operator"),
            action="provisioning_token.create",
            target_type="ProvisioningToken",
            target_id=str(row.id),
            details={"name": name},
        )
        return {"tenant": tenant.slug, "id": str(row.id), "token": token}

    _emit(_run(work), as_json)


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

    async def work(ctx: AppContext, session: AsyncSession) -> dict[str, Any]:
        row = await update_tenant(session, slug=slug, name=name, access_token_alg=access_token_alg)
        return {"tenant": row.slug, "name": row.name, "settings": row.settings}

    _emit(_run(work), as_json)
