"""Home-realm discovery on the login page: email first, straight to the upstream that owns the domain."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import pytest
from sqlalchemy import select

from idhub.broker.discovery import email_domain
from idhub.storage.models import IdentityProvider, Interaction
from idhub.tenants.service import TenantInfo
from tests.conftest import Env
from tests.flows import authorize_params, parse_forms, pkce_pair, query_of

REDIRECT = "https://app.example/cb"
CHALLENGE = pkce_pair()[1]


def add_upstream(env: Env, tenant: TenantInfo, alias: str, *domains: str, enabled: bool = True) -> None:
    """Store an upstream directly (no discovery fetch): only its alias, domains and state matter here."""

    async def work() -> None:
        async with env.uow() as uow:
            uow.session.add(
                IdentityProvider(
                    tenant_id=tenant.id,
                    alias=alias,
                    type="oidc",
                    display_name=f"{alias.title()} SSO",
                    enabled=enabled,
                    config={
                        "email_domains": list(domains),
                        "issuer": f"https://{alias}.example",
                        "client_id": "idhub",
                        "authorization_endpoint": f"https://{alias}.example/authorize",
                        "token_endpoint": f"https://{alias}.example/token",
                        "jwks_uri": f"https://{alias}.example/jwks",
                    },
                )
            )

    env.run(work)


def latest_interaction(env: Env, tenant: TenantInfo) -> str:
    """Return the id of the tenant's newest interaction (sealed into the upstream's state, out of sight)."""

    async def work() -> str:
        async with env.uow() as uow:
            found = await uow.session.scalar(
                select(Interaction.id).where(Interaction.tenant_id == tenant.id).order_by(Interaction.created_at.desc())
            )
            assert found is not None
            return found

    return env.run(work)


def arrange(env: Env, *upstreams: tuple[str, tuple[str, ...], bool]) -> tuple[TenantInfo, str]:
    tenant = env.tenant()
    client_id, _ = env.oauth_client(tenant, redirect_uris=[REDIRECT])
    for alias, domains, enabled in upstreams:
        add_upstream(env, tenant, alias, *domains, enabled=enabled)
    return tenant, client_id


def start(env: Env, tenant: TenantInfo, client_id: str, **extra: Any) -> Any:
    params = authorize_params(client_id=client_id, redirect_uri=REDIRECT, code_challenge=CHALLENGE, extra_params=extra)
    response = env.client.get(f"/tenants/{tenant.slug}/authorize", params=params, follow_redirects=False)
    assert response.status_code == 303, response.text
    return response


def open_login(env: Env, tenant: TenantInfo, client_id: str, **extra: Any) -> Any:
    page = env.client.get(start(env, tenant, client_id, **extra).headers["location"], follow_redirects=False)
    assert page.status_code == 200, page.text
    return page


def submit_email(env: Env, page: Any, email: str | None, *, csrf: bool = True) -> Any:
    [form] = parse_forms(page.text)
    assert form.action.endswith("/discover")
    data = {"csrf_token": form.inputs["csrf_token"]} if csrf else {}
    if email is not None:
        data["email"] = email
    return env.client.post(form.action, data=data, follow_redirects=False)


def interaction_of(page: Any) -> str:
    return urlsplit(str(page.url)).path.rsplit("/", 1)[1]


CORP = ("corp", ("corp.example",), True)


def test_login_page_with_domain_upstream_asks_for_email_first(env: Env) -> None:
    tenant, client_id = arrange(env, CORP, ("social", (), True))
    page = open_login(env, tenant, client_id)
    forms = parse_forms(page.text)
    assert len(forms) == 1 and set(forms[0].inputs) == {"email", "csrf_token"}
    assert forms[0].method == "post"
    assert 'id="upstream-social"' in page.text and 'id="upstream-corp"' in page.text
    assert "<script" not in page.text
    assert page.headers["cache-control"] == "no-store"


def test_login_page_without_domain_upstreams_shows_password_form(env: Env) -> None:
    tenant, client_id = arrange(env, ("social", (), True))
    form = parse_forms(open_login(env, tenant, client_id).text)[0]
    assert {"username", "password", "csrf_token"} <= set(form.inputs)


def test_discover_owned_domain_303_to_upstream(env: Env) -> None:
    tenant, client_id = arrange(env, CORP, ("other", ("other.example",), True))
    page = open_login(env, tenant, client_id)
    response = submit_email(env, page, "Alice.Smith@CORP.example")
    assert response.status_code == 303
    assert response.headers["location"] == f"{tenant.issuer}/broker/corp/login?interaction={interaction_of(page)}"
    assert response.headers["cache-control"] == "no-store"


def test_discover_unknown_domain_shows_password_form_prefilled(env: Env) -> None:
    tenant, client_id = arrange(env, CORP)
    page = open_login(env, tenant, client_id)
    response = submit_email(env, page, "alice@elsewhere.example")
    assert response.status_code == 200
    form = parse_forms(response.text)[0]
    assert form.action.endswith(f"/interaction/{interaction_of(page)}/login")
    assert form.inputs["username"] == "alice@elsewhere.example"
    assert {"password", "csrf_token"} <= set(form.inputs)
    assert 'id="upstream-corp"' in response.text


@pytest.mark.parametrize("email", ["alice@sub.corp.example", "alice@corp.example.evil", "alice@xcorp.example"])
def test_discover_domain_match_is_exact(env: Env, email: str) -> None:
    tenant, client_id = arrange(env, CORP)
    response = submit_email(env, open_login(env, tenant, client_id), email)
    assert response.status_code == 200
    assert "password" in parse_forms(response.text)[0].inputs


def test_discover_answer_same_whether_local_account_exists(env: Env) -> None:
    tenant, client_id = arrange(env, CORP)
    env.user(tenant, username="known@elsewhere.example", email="known@elsewhere.example")
    answers = []
    for email in ("known@elsewhere.example", "unknown@elsewhere.example"):
        response = submit_email(env, open_login(env, tenant, client_id), email)
        form = parse_forms(response.text)[0]
        interaction = urlsplit(form.action).path.split("/")[-2]
        text = response.text.replace(email, "EMAIL").replace(form.inputs["csrf_token"], "CSRF")
        answers.append((response.status_code, text.replace(interaction, "ID")))
    assert answers[0] == answers[1]


@pytest.mark.parametrize(
    "email",
    [
        "alice",
        "alice@",
        "@corp.example",
        "alice smith@corp.example",
        " alice@corp.example",
        "alice@corp.example.",
        "alice@corp..example",
        "alice@-corp.example",
        "alice@corp_x.example",
        "alice@corp.example\t",
        "alïce@corp.example",
        "a" * 65 + "@corp.example",
        "",
        None,
    ],
)
def test_discover_malformed_email_400_email_form_again(env: Env, email: str | None) -> None:
    tenant, client_id = arrange(env, CORP)
    response = submit_email(env, open_login(env, tenant, client_id), email)
    assert response.status_code == 400
    assert "Enter your email address" in response.text
    assert set(parse_forms(response.text)[0].inputs) == {"email", "csrf_token"}


def test_discover_repeated_email_field_400(env: Env) -> None:
    tenant, client_id = arrange(env, CORP)
    page = open_login(env, tenant, client_id)
    form = parse_forms(page.text)[0]
    body = f"csrf_token={form.inputs['csrf_token']}&email=a%40corp.example&email=b%40corp.example"
    response = env.client.post(
        form.action, content=body, headers={"content-type": "application/x-www-form-urlencoded"},
        follow_redirects=False,
    )  # fmt: skip
    assert response.status_code == 400
    assert "location" not in response.headers


@pytest.mark.parametrize("csrf", [None, "forged-token"])
def test_discover_without_valid_csrf_400_no_redirect(env: Env, csrf: str | None) -> None:
    tenant, client_id = arrange(env, CORP)
    page = open_login(env, tenant, client_id)
    form = parse_forms(page.text)[0]
    data = {"email": "alice@corp.example"} | ({"csrf_token": csrf} if csrf else {})
    response = env.client.post(form.action, data=data, follow_redirects=False)
    assert response.status_code == 400
    assert "location" not in response.headers
    assert "expired or was not sent by this site" in response.text


def test_discover_disabled_upstream_not_chosen(env: Env) -> None:
    tenant, client_id = arrange(env, ("corp", ("corp.example",), False), ("other", ("other.example",), True))
    page = open_login(env, tenant, client_id)
    assert 'id="upstream-corp"' not in page.text
    response = submit_email(env, page, "alice@corp.example")
    assert response.status_code == 200
    assert "password" in parse_forms(response.text)[0].inputs
    assert 'id="upstream-corp"' not in response.text


def test_login_page_only_disabled_domain_upstream_no_email_step(env: Env) -> None:
    tenant, client_id = arrange(env, ("corp", ("corp.example",), False))
    form = parse_forms(open_login(env, tenant, client_id).text)[0]
    assert {"username", "password"} <= set(form.inputs)


def test_discover_domain_claimed_twice_picks_none(env: Env) -> None:
    tenant, client_id = arrange(env, CORP, ("corp2", ("corp.example",), True))
    response = submit_email(env, open_login(env, tenant, client_id), "alice@corp.example")
    assert response.status_code == 200
    assert 'id="upstream-corp"' in response.text and 'id="upstream-corp2"' in response.text


def test_login_page_step_password_and_failed_login_show_password_form(env: Env) -> None:
    tenant, client_id = arrange(env, CORP)
    page = open_login(env, tenant, client_id)
    base = str(page.url)
    for url in (f"{base}?step=password", f"{base}?error=login"):
        form = parse_forms(env.client.get(url, follow_redirects=False).text)[0]
        assert {"username", "password"} <= set(form.inputs)
    assert "?step=password" in page.text


def test_login_hint_owned_domain_goes_straight_to_upstream(env: Env) -> None:
    tenant, client_id = arrange(env, CORP)
    location = start(env, tenant, client_id, login_hint="alice@Corp.Example").headers["location"]
    assert location.startswith("https://corp.example/authorize?")
    assert query_of(location)["redirect_uri"] == f"{tenant.issuer}/broker/corp/callback"
    # Coming back to the login page does not bounce again: it asks for the address, prefilled.
    page = env.client.get(f"{tenant.issuer}/interaction/{latest_interaction(env, tenant)}", follow_redirects=False)
    assert page.status_code == 200
    assert parse_forms(page.text)[0].inputs["email"] == "alice@Corp.Example"


def test_login_hint_unknown_domain_prefills_email_step(env: Env) -> None:
    tenant, client_id = arrange(env, CORP)
    page = open_login(env, tenant, client_id, login_hint="bob@elsewhere.example")
    assert parse_forms(page.text)[0].inputs["email"] == "bob@elsewhere.example"


def test_login_hint_disabled_upstream_shows_login_page(env: Env) -> None:
    tenant, client_id = arrange(env, ("corp", ("corp.example",), False))
    page = open_login(env, tenant, client_id, login_hint="alice@corp.example")
    assert parse_forms(page.text)[0].inputs["username"] == "alice@corp.example"


def test_idp_hint_wins_over_login_hint(env: Env) -> None:
    tenant, client_id = arrange(env, CORP, ("other", ("other.example",), True))
    location = start(env, tenant, client_id, login_hint="a@corp.example", idp_hint="other").headers["location"]
    assert location.startswith("https://other.example/authorize?")


@pytest.mark.parametrize(
    ("address", "domain"),
    [
        ("a@Corp.Example", "corp.example"),
        ('"a@b"@corp.example', "corp.example"),
        ("a@xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("a@bücher.example", None),
        ("a@localhost", None),
        ("a@127.0.0.1", None),
        ("a@[127.0.0.1]", None),
        ("a@" + "b" * 64 + ".example", None),
    ],
)
def test_email_domain_strict(address: str, domain: str | None) -> None:
    assert email_domain(address) == domain
