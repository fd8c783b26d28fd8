"""Access policies enforced wherever tokens are issued: /authorize, consent, code, refresh, client_credentials."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import delete, select

from idhub.crypto import jwt
from idhub.storage.models import Consent, GroupMember, RefreshToken
from idhub.tenants.service import TenantInfo
from tests.conftest import Env
from tests.directory.policy_helpers import delete_policy, make_group, make_policy
from tests.flows import authorize_params, follow_to_client, login_and_get_code, parse_forms, pkce_pair
from tests.oidc.grants.helpers import REDIRECT_URI, basic, introspect, make_code, post
from tests.scim.conftest import PATCH_URN, Scim, provisioning_token

PASSWORD = "correct horse"
SCOPES = "openid profile x y"


def _setup(env: Env, **client_kw: Any) -> tuple[TenantInfo, str, str, str]:
    """A tenant, a confidential code client allowed ``SCOPES`` with refresh tokens, and alice."""
    tenant = env.tenant()
    client_kw.setdefault("redirect_uris", [REDIRECT_URI])
    client_kw.setdefault("scope", SCOPES)
    client_kw.setdefault("grant_types", ["authorization_code", "refresh_token"])
    client_id, secret = env.oauth_client(tenant, **client_kw)
    alice = env.user(tenant, "alice", password=PASSWORD)
    return tenant, client_id, secret or "", alice


def _login(env: Env, tenant: TenantInfo, client_id: str, scope: str) -> tuple[dict[str, str], str]:
    verifier, challenge = pkce_pair()
    result = login_and_get_code(
        env.client, tenant_slug=tenant.slug, client_id=client_id, redirect_uri=REDIRECT_URI,
        username="alice", password=PASSWORD, code_challenge=challenge, scope=scope,
    )  # fmt: skip
    return result, verifier


def _exchange(env: Env, tenant: TenantInfo, client_id: str, secret: str, code: str, verifier: str) -> dict[str, Any]:
    data = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT_URI, "code_verifier": verifier}
    response = post(env, tenant, "token", data, basic(client_id, secret))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _tokens_for(env: Env, tenant: TenantInfo, client_id: str, secret: str, user_id: str, scope: str) -> dict[str, Any]:
    """Exchange a code made directly with ``scope`` (as /authorize issued it then)."""
    verifier, challenge = pkce_pair()
    code = make_code(env, tenant, client_id, user_id, challenge=challenge, scope=scope)
    return _exchange(env, tenant, client_id, secret, code, verifier)


def _refresh(env: Env, tenant: TenantInfo, client_id: str, secret: str, token: str, **extra: str) -> Any:
    data = {"grant_type": "refresh_token", "refresh_token": token, **extra}
    return post(env, tenant, "token", data, basic(client_id, secret))


def _access_scope(env: Env, tenant: TenantInfo, token: str) -> str:
    async def work() -> str:
        keys = await env.ctx.keys.get(tenant.id)
        return str(jwt.verify(token, keys.verify_set, typ="at+jwt")["scope"])

    result: str = env.run(work)
    return result


# --- /authorize, consent and the code ------------------------------------------------------------------


def test_authorize_member_of_group_gets_entitled_scope_not_other(env: Env) -> None:
    tenant, client_id, secret, alice = _setup(env, first_party=True)
    a = make_group(env, tenant, "A", users=[alice])
    b = make_group(env, tenant, "B")
    make_policy(env, tenant, client_id, a, "x")
    make_policy(env, tenant, client_id, b, "y profile")
    result, verifier = _login(env, tenant, client_id, "openid x y profile")
    assert "code" in result, result
    body = _exchange(env, tenant, client_id, secret, result["code"], verifier)
    assert body["scope"] == "openid x"
    assert _access_scope(env, tenant, body["access_token"]) == "openid x"
    assert "id_token" in body


def test_authorize_ungoverned_client_unchanged(env: Env) -> None:
    tenant, client_id, secret, alice = _setup(env, first_party=True)
    make_group(env, tenant, "A", users=[alice])
    other, _ = env.oauth_client(tenant, redirect_uris=[REDIRECT_URI], scope=SCOPES)
    make_policy(env, tenant, other, make_group(env, tenant, "B"), "x")  # another client's policy changes nothing here
    result, verifier = _login(env, tenant, client_id, "openid x y profile")
    assert _exchange(env, tenant, client_id, secret, result["code"], verifier)["scope"] == "openid x y profile"


def test_consent_page_lists_only_grantable_scopes_and_records_them(env: Env) -> None:
    tenant, client_id, secret, alice = _setup(env)  # third party: asks for consent
    make_policy(env, tenant, client_id, make_group(env, tenant, "A", users=[alice]), "x")
    verifier, challenge = pkce_pair()
    params = authorize_params(
        client_id=client_id, redirect_uri=REDIRECT_URI, code_challenge=challenge, scope="openid x y"
    )
    start = env.client.get(f"/tenants/{tenant.slug}/authorize", params=params, follow_redirects=False)
    login = env.client.get(start.headers["location"], follow_redirects=False)
    form = parse_forms(login.text)[0]
    response = env.client.post(
        form.action, data={**form.inputs, "username": "alice", "password": PASSWORD}, follow_redirects=False
    )
    page = env.client.get(response.headers["location"], follow_redirects=False)
    assert page.status_code == 200 and "Allow access" in page.text
    assert "<code>openid</code>" in page.text and "<code>x</code>" in page.text
    assert "<code>y</code>" not in page.text
    result = follow_to_client(env.client, page, tenant_slug=tenant.slug)
    assert _exchange(env, tenant, client_id, secret, result["code"], verifier)["scope"] == "openid x"

    async def consent() -> str:
        async with env.ctx.sessionmaker() as session:
            return str(await session.scalar(select(Consent.scope).where(Consent.user_id == uuid.UUID(alice))))

    assert env.run(consent) == "openid x"


def test_authorize_nothing_entitled_access_denied_openid_alone_fine(env: Env) -> None:
    tenant, client_id, secret, _alice = _setup(env, first_party=True)
    make_policy(env, tenant, client_id, make_group(env, tenant, "A"), "x")  # alice is not in A
    result, _ = _login(env, tenant, client_id, "x y")
    assert result["error"] == "access_denied" and result["state"] == "xyz"
    result, verifier = _login(env, tenant, client_id, "openid x")
    assert _exchange(env, tenant, client_id, secret, result["code"], verifier)["scope"] == "openid"


def test_code_exchange_grants_what_the_person_holds_now(env: Env) -> None:
    tenant, client_id, secret, alice = _setup(env)
    make_policy(env, tenant, client_id, make_group(env, tenant, "A", users=[alice]), "x")
    body = _tokens_for(env, tenant, client_id, secret, alice, "openid x y")  # y: lost since the code was issued
    assert body["scope"] == "openid x"


# --- refresh -----------------------------------------------------------------------------------------------


def test_refresh_after_scim_membership_removal_revoked(env: Env) -> None:
    tenant, client_id, secret, alice = _setup(env)
    scim = Scim(env=env, tenant=tenant, token=provisioning_token(env, tenant))
    group = scim.create_group("Engineering", members=[alice])
    make_policy(env, tenant, client_id, uuid.UUID(group["id"]), "x")
    tokens = _tokens_for(env, tenant, client_id, secret, alice, "openid x")
    assert tokens["scope"] == "openid x"
    assert _refresh(env, tenant, client_id, secret, tokens["refresh_token"]).status_code == 200  # still entitled

    fresh = _tokens_for(env, tenant, client_id, secret, alice, "openid x")
    remove = {"schemas": [PATCH_URN], "Operations": [{"op": "remove", "path": f'members[value eq "{alice}"]'}]}
    assert scim.request("PATCH", f"/Groups/{group['id']}", remove).status_code in (200, 204)
    response = _refresh(env, tenant, client_id, secret, fresh["refresh_token"])
    assert response.status_code == 400 and response.json()["error"] == "invalid_grant"
    assert introspect(env, tenant, fresh["access_token"], client_id, secret) == {"active": False}
    # What the next sign-in gets: openid only (x is gone with the membership).
    assert _tokens_for(env, tenant, client_id, secret, alice, "openid x")["scope"] == "openid"


def test_refresh_reevaluated_lost_scope_dropped(env: Env) -> None:
    tenant, client_id, secret, alice = _setup(env)
    a = make_group(env, tenant, "A", users=[alice])
    b = make_group(env, tenant, "B", users=[alice])
    make_policy(env, tenant, client_id, a, "x")
    make_policy(env, tenant, client_id, b, "y")
    tokens = _tokens_for(env, tenant, client_id, secret, alice, "openid x y")
    assert tokens["scope"] == "openid x y"

    async def leave_b_behind_the_services_back() -> None:
        async with env.ctx.sessionmaker() as session:
            await session.execute(delete(GroupMember).where(GroupMember.group_id == b))
            await session.commit()

    env.run(leave_b_behind_the_services_back)
    response = _refresh(env, tenant, client_id, secret, tokens["refresh_token"])
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["scope"] == "openid x"
    assert _access_scope(env, tenant, body["access_token"]) == "openid x"

    async def carried() -> list[str]:
        async with env.ctx.sessionmaker() as session:
            rows = await session.scalars(
                select(RefreshToken.scope).where(
                    RefreshToken.rotated_at.is_(None), RefreshToken.user_id == uuid.UUID(alice)
                )
            )
            return list(rows)

    assert env.run(carried) == ["openid x"]
    # Asking for the lost scope explicitly: still only what is held.
    again = _refresh(env, tenant, client_id, secret, body["refresh_token"], scope="x")
    assert again.status_code == 200 and again.json()["scope"] == "x"


def test_policy_removal_revokes_refresh_and_access_tokens_carrying_scope(env: Env) -> None:
    tenant, client_id, secret, alice = _setup(env)
    group = make_group(env, tenant, "A", users=[alice])
    make_policy(env, tenant, client_id, make_group(env, tenant, "B", users=[alice]), "profile")
    policy = make_policy(env, tenant, client_id, group, "x")
    carrying = _tokens_for(env, tenant, client_id, secret, alice, "openid x")
    other = _tokens_for(env, tenant, client_id, secret, alice, "openid profile")
    delete_policy(env, tenant, policy)
    response = _refresh(env, tenant, client_id, secret, carrying["refresh_token"])
    assert response.status_code == 400 and response.json()["error"] == "invalid_grant"
    assert introspect(env, tenant, carrying["access_token"], client_id, secret) == {"active": False}
    assert _refresh(env, tenant, client_id, secret, other["refresh_token"]).status_code == 200
    assert introspect(env, tenant, other["access_token"], client_id, secret)["active"] is True


# --- client_credentials ------------------------------------------------------------------------------------


def _machine_token(env: Env, tenant: TenantInfo, client_id: str, secret: str, scope: str | None) -> Any:
    data = {"grant_type": "client_credentials"} | ({} if scope is None else {"scope": scope})
    return post(env, tenant, "token", data, basic(client_id, secret))


def test_client_credentials_limited_by_machine_policy(env: Env) -> None:
    tenant = env.tenant()
    client_id, secret = env.oauth_client(tenant, scope="api read write", grant_types=["client_credentials"])
    assert _machine_token(env, tenant, client_id, secret or "", None).json()["scope"] == "api read write"
    make_policy(env, tenant, client_id, None, "read write")
    assert _machine_token(env, tenant, client_id, secret or "", None).json()["scope"] == "read write"
    assert _machine_token(env, tenant, client_id, secret or "", "api read").json()["scope"] == "read"
    refused = _machine_token(env, tenant, client_id, secret or "", "api")
    assert refused.status_code == 400 and refused.json()["error"] == "invalid_scope"


def test_client_credentials_governed_without_machine_policy_gets_nothing(env: Env) -> None:
    tenant = env.tenant()
    client_id, secret = env.oauth_client(
        tenant, scope="openid api", redirect_uris=[REDIRECT_URI],
        grant_types=["authorization_code", "client_credentials"],
    )  # fmt: skip
    make_policy(env, tenant, client_id, make_group(env, tenant, "A"), "api")  # for people only
    for scope in (None, "api"):
        response = _machine_token(env, tenant, client_id, secret or "", scope)
        assert response.status_code == 400 and response.json()["error"] == "invalid_scope"
