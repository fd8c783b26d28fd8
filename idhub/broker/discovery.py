"""Home-realm discovery: which upstream, if any, owns the domain of the address a person typed.

An operator marks an upstream authoritative for email domains (``idhub idp create|update
--email-domain``). When an enabled upstream of the tenant has any, the login page asks for the address
first and sends the person straight to the upstream that owns its domain; an authorization request's
``login_hint`` does the same. The answer depends on the tenant's configuration only, never on whether an
account with that address exists here (no account enumeration).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from idhub.broker.providers import DOMAIN, ProviderInfo, info_of
from idhub.storage.models import IdentityProvider

MAX_EMAIL = 320  # RFC 5321 §4.5.3.1: 64 for the local part, @, 255 for the domain
MAX_LOCAL_PART = 64


def email_domain(address: str) -> str | None:
    """Return the lower-cased domain of a well-formed email address, or ``None``.

    Strict on purpose: the domain is the part after the last ``@`` and must be a DNS name of letters,
    digits and hyphens (an internationalised one in its ``xn--`` form); the local part must be 1 to 64
    printable ASCII characters without spaces. Nothing is trimmed or guessed.
    """
    if len(address) > MAX_EMAIL or "@" not in address:
        return None
    local, domain = address.rsplit("@", 1)
    if not 1 <= len(local) <= MAX_LOCAL_PART or not all("!" <= char <= "~" for char in local):
        return None
    domain = domain.lower()
    return domain if DOMAIN.fullmatch(domain) else None


def discovers_by_email(providers: Iterable[ProviderInfo]) -> bool:
    """Tell whether the login page should ask for an address first: an enabled upstream owns a domain."""
    return any(provider.enabled and provider.email_domains for provider in providers)


def owner_of(providers: Iterable[ProviderInfo], domain: str) -> ProviderInfo | None:
    """Return the one enabled upstream that owns ``domain``; none when no upstream or several claim it."""
    owners = [provider for provider in providers if provider.enabled and domain in provider.email_domains]
    # Two upstreams claiming one domain is a configuration mistake: neither is picked, the page offers both.
    return owners[0] if len(owners) == 1 else None


async def enabled_providers(session: AsyncSession, tenant_id: uuid.UUID) -> list[ProviderInfo]:
    """Return the tenant's enabled upstreams, by alias."""
    rows = await session.scalars(
        select(IdentityProvider)
        .where(IdentityProvider.tenant_id == tenant_id, IdentityProvider.enabled.is_(True))
        .order_by(IdentityProvider.alias)
    )
    return [info_of(row) for row in rows]


async def provider_for_email_domain(session: AsyncSession, tenant_id: uuid.UUID, email: str) -> ProviderInfo | None:
    """Return the enabled upstream of the tenant that owns the domain of ``email``, or ``None``."""
    domain = email_domain(email)
    if domain is None:
        return None
    return owner_of(await enabled_providers(session, tenant_id), domain)
