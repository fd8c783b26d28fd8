"""The account page: a signed-in person's linked upstream accounts, and removing one of their own."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from idhub.sessions.service import create_session
from idhub.storage.models import IdentityProvider, UserSession
from idhub.storage.models.broker import FederatedIdentity
from idhub.tenants.service import TenantInfo
from tests.audit.test_audit import audit_rows, with_action
from tests.conftest import Env
from tests.flows import parse_forms


@dataclass
class Account:
    """A tenant with two upstreams and two people: alice (two links) and bob (one)."""

    tenant: TenantInfo
    alice: uuid.UUID
    bob: uuid.UUID
    alice_corp: uuid.UUID
    alice_social: uuid.UUID
    bob_corp: uuid.UUID


def make_account(env: Env) -> Account:
    tenant = env.tenant()
    alice, bob = uuid.UUID(env.user(tenant, "alice")), uuid.UUID(env.user(tenant, "bob"))
    ids: dict[str, uuid.UUID] = {}

    async def work() -> None:
        async with env.uow() as uow:
            corp = IdentityProvider(tenant_id=tenant.id, alias="corp", type="oidc", display_name="Corp SSO", config={})
            social = IdentityProvider(tenant_id=tenant.id, alias="social", type="google", display_name="Google")
            uow.session.add_all([corp, social])
            await uow.session.flush()
            for name, provider, user, email in (
                ("alice_corp", corp, alice, "alice@corp.example"),
                ("alice_social", social, alice, "alice@gmail.example"),
                ("bob_corp", corp, bob, "bob@corp.example"),
            ):
                link = FederatedIdentity(
                    tenant_id=tenant.id, provider_id=provider.id, user_id=user, subject=f"sub-{name}", email=email
                )
                uow.session.add(link)
                await uow.session.flush()
                ids[name] = link.id

    env.run(work)
    return Account(tenant, alice, bob, ids["alice_corp"], ids["alice_social"], ids["bob_corp"])


def sign_in(env: Env, tenant: TenantInfo, user_id: uuid.UUID, link_id: uuid.UUID | None = None) -> str:
    """Start an SSO session as the given sign-in would; return its cookie value."""

    async def work() -> str:
        async with env.uow() as uow:
            _sso, cookie = await create_session(
                uow.session,
                hasher=env.ctx.secret_hasher,
                settings=env.ctx.settings.sessions,
                tenant_id=tenant.id,
                user_id=user_id,
                amr=["fed"] if link_id else ["pwd"],
                link_id=link_id,
            )
        return cookie

    result: str = env.run(work)
    return result


def cookie_header(env: Env, cookie: str | None) -> dict[str, str]:
    return {"cookie": f"{env.ctx.settings.sessions.cookie_name}={cookie}"} if cookie else {}


def get_page(env: Env, tenant: TenantInfo, cookie: str | None, query: str = "") -> Any:
    page = env.client.get(f"{tenant.issuer}/account{query}", headers=cookie_header(env, cookie), follow_redirects=False)
    assert page.status_code == 200, page.text
    return page


def remove(env: Env, tenant: TenantInfo, cookie: str | None, link_id: uuid.UUID, csrf: str | None) -> Any:
    return env.client.post(
        f"{tenant.issuer}/account/links/{link_id}/delete",
        data={"csrf_token": csrf} if csrf else {},
        headers=cookie_header(env, cookie),
        follow_redirects=False,
    )


def csrf_of(page: Any) -> str:
    return parse_forms(page.text)[0].inputs["csrf_token"]


def links_of(env: Env, tenant: TenantInfo) -> set[uuid.UUID]:
    async def work() -> set[uuid.UUID]:
        async with env.ctx.sessionmaker() as session:
            found = await session.scalars(select(FederatedIdentity.id).where(FederatedIdentity.tenant_id == tenant.id))
            return set(found)

    result: set[uuid.UUID] = env.run(work)
    return result


def revoked(env: Env, *cookies: str) -> list[bool]:
    """Return whether the session of each cookie is revoked."""

    async def work() -> list[bool]:
        async with env.ctx.sessionmaker() as session:
            return [
                (await session.scalar(
                    select(UserSession.revoked_at).where(UserSession.token_hash == env.ctx.secret_hasher.hash(cookie))
                )) is not None
                for cookie in cookies
            ]  # fmt: skip

    result: list[bool] = env.run(work)
    return result


def test_account_page_without_session_says_sign_in(env: Env) -> None:
    tenant = make_account(env).tenant
    page = get_page(env, tenant, None)
    assert "You are not signed in" in page.text
    assert not parse_forms(page.text)
    assert page.headers["cache-control"] == "no-store"


def test_account_page_dead_cookie_cleared(env: Env) -> None:
    page = get_page(env, make_account(env).tenant, "not-a-live-session-cookie")
    assert "You are not signed in" in page.text
    assert any(value.startswith(env.ctx.settings.sessions.cookie_name + '=""') or "max-age=0" in value.lower()
               for value in page.headers.get_list("set-cookie"))  # fmt: skip


def test_account_page_lists_only_own_links(env: Env) -> None:
    account = make_account(env)
    page = get_page(env, account.tenant, sign_in(env, account.tenant, account.alice))
    assert "alice" in page.text
    assert "Corp SSO" in page.text and "Google" in page.text
    assert "alice@corp.example" in page.text and "alice@gmail.example" in page.text
    assert f"link-{account.alice_corp}" in page.text and f"link-{account.alice_social}" in page.text
    assert str(account.bob_corp) not in page.text and "bob@corp.example" not in page.text
    actions = {form.action for form in parse_forms(page.text)}
    assert actions == {
        f"{account.tenant.issuer}/account/links/{account.alice_corp}/delete",
        f"{account.tenant.issuer}/account/links/{account.alice_social}/delete",
    }
    assert "<script" not in page.text


def test_account_remove_own_link_ends_its_sessions_and_audits(env: Env) -> None:
    account = make_account(env)
    tenant = account.tenant
    cookie = sign_in(env, tenant, account.alice)  # a password session: stays
    other_browser = sign_in(env, tenant, account.alice, account.alice_social)
    response = remove(env, tenant, cookie, account.alice_social, csrf_of(get_page(env, tenant, cookie)))
    assert response.status_code == 303
    assert response.headers["location"] == f"{tenant.issuer}/account?notice=removed"
    assert links_of(env, tenant) == {account.alice_corp, account.bob_corp}
    assert revoked(env, other_browser, cookie) == [True, False]
    assert "You are not signed in" in get_page(env, tenant, other_browser).text
    page = get_page(env, tenant, cookie, "?notice=removed")
    assert "was removed" in page.text and f"link-{account.alice_social}" not in page.text
    [event] = [row for row in audit_rows(env, tenant, with_action("link.delete")) if row["action"] == "link.delete"]
    assert event["target_id"] == str(account.alice)
    assert event["actor_type"] == "user" and event["actor_id"] == str(account.alice)
    assert event["details"]["how"] == "self" and event["details"]["alias"] == "social"


def test_account_remove_link_signed_in_with_signs_out(env: Env) -> None:
    account = make_account(env)
    tenant = account.tenant
    cookie = sign_in(env, tenant, account.alice, account.alice_corp)
    elsewhere = sign_in(env, tenant, account.alice, account.alice_corp)
    response = remove(env, tenant, cookie, account.alice_corp, csrf_of(get_page(env, tenant, cookie)))
    assert response.status_code == 303
    assert response.headers["location"] == f"{tenant.issuer}/account?notice=signed-out"
    name = env.ctx.settings.sessions.cookie_name
    cleared = [value for value in response.headers.get_list("set-cookie") if value.startswith(name)]
    assert cleared and "max-age=0" in cleared[0].lower()
    assert revoked(env, cookie, elsewhere) == [True, True]
    for browser in (cookie, elsewhere):
        assert "You are not signed in" in get_page(env, tenant, browser).text
    assert "you are now signed out" in get_page(env, tenant, None, "?notice=signed-out").text
    assert links_of(env, tenant) == {account.alice_social, account.bob_corp}


def test_account_cannot_remove_someone_elses_link_404(env: Env) -> None:
    account = make_account(env)
    tenant = account.tenant
    cookie = sign_in(env, tenant, account.alice)
    bob = sign_in(env, tenant, account.bob, account.bob_corp)
    response = remove(env, tenant, cookie, account.bob_corp, csrf_of(get_page(env, tenant, cookie)))
    assert response.status_code == 404
    assert "text/html" in response.headers["content-type"]
    assert account.bob_corp in links_of(env, tenant)
    assert revoked(env, bob) == [False]
    assert "bob" in get_page(env, tenant, bob).text


def test_account_unknown_link_404(env: Env) -> None:
    account = make_account(env)
    cookie = sign_in(env, account.tenant, account.alice)
    response = remove(env, account.tenant, cookie, uuid.uuid4(), csrf_of(get_page(env, account.tenant, cookie)))
    assert response.status_code == 404


def test_account_remove_without_valid_csrf_400(env: Env) -> None:
    account = make_account(env)
    tenant = account.tenant
    cookie = sign_in(env, tenant, account.alice)
    other = sign_in(env, tenant, account.alice)  # a token from another session of the same person
    for csrf in (None, "forged", csrf_of(get_page(env, tenant, other))):
        response = remove(env, tenant, cookie, account.alice_social, csrf)
        assert response.status_code == 400, csrf
        assert "expired or was not sent by this site" in response.text
    assert account.alice_social in links_of(env, tenant)


def test_account_remove_without_session_back_to_page(env: Env) -> None:
    account = make_account(env)
    response = remove(env, account.tenant, None, account.alice_social, "anything")
    assert response.status_code == 303
    assert response.headers["location"] == f"{account.tenant.issuer}/account"
    assert account.alice_social in links_of(env, account.tenant)


def test_account_remove_malformed_link_id_400(env: Env) -> None:
    account = make_account(env)
    cookie = sign_in(env, account.tenant, account.alice)
    response = env.client.post(
        f"{account.tenant.issuer}/account/links/not-a-uuid/delete",
        data={"csrf_token": "x"}, headers=cookie_header(env, cookie), follow_redirects=False,
    )  # fmt: skip
    assert response.status_code == 400
    assert "text/html" in response.headers["content-type"]
