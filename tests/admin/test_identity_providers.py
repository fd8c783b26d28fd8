"""Upstream identity providers through the admin API (the broker's services, as the CLI uses them)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.admin.conftest import Admin, assert_problem, client_token
from tests.broker.standin import StandInProvider, serve
from tests.broker.test_idp_mapping_cli import MAPPING, SAMPLE
from tests.conftest import Env


@pytest.fixture(scope="module")
def upstream() -> Iterator[StandInProvider]:
    yield from serve(StandInProvider())


def _system_token(env: Env) -> str:
    slug = env.ctx.settings.system_tenant
    info = env.run(env.ctx.tenants.get, slug)
    return client_token(env, info if info is not None else env.tenant(slug), "idhub:admin idhub:system")


def test_idps_social_created_listed_changed_deleted_without_secrets(admin: Admin) -> None:
    body = {"alias": "gh", "type": "github", "client_id": "abc", "client_secret": "upstream-secret"}
    created = admin.call("POST", "identity-providers", json=body)
    assert created.status_code == 201, created.text
    shown = created.json()
    assert (
        shown["alias"] == "gh" and shown["has_secret"] is True and shown["callback_url"].endswith("/broker/gh/callback")
    )
    assert "upstream-secret" not in created.text
    assert [p["alias"] for p in admin.call("GET", "identity-providers").json()["items"]] == ["gh"]
    changed = admin.call("PATCH", "identity-providers/gh", json={"enabled": False, "email_domains": ["Corp.Example"]})
    assert changed.status_code == 200 and changed.json()["enabled"] is False
    assert changed.json()["config"]["email_domains"] == ["corp.example"]
    assert_problem(admin.call("POST", "identity-providers", json=body), 409)
    assert admin.call("DELETE", "identity-providers/gh").status_code == 204
    assert_problem(admin.call("GET", "identity-providers/gh"), 404)


def test_idps_bad_input_is_a_problem(admin: Admin) -> None:
    assert_problem(admin.call("POST", "identity-providers", json={"alias": "Bad Alias!", "type": "github"}), 422)
    assert_problem(admin.call("POST", "identity-providers", json={"alias": "x", "type": "myspace"}), 422)
    saml = {"alias": "s", "type": "saml", "metadata_xml": "<not-metadata/>"}
    assert_problem(admin.call("POST", "identity-providers", json=saml), 422)
    assert_problem(admin.call("PATCH", "identity-providers/none", json={"enabled": True}), 404)


def test_idps_internal_addresses_are_for_system_admins(env: Env, admin: Admin, upstream: StandInProvider) -> None:
    body: dict[str, Any] = {
        "alias": "corp",
        "type": "oidc",
        "issuer": upstream.issuer,
        "client_id": upstream.client_id,
        "internal": True,
        "mapping": MAPPING,
    }
    assert_problem(admin.call("POST", "identity-providers", json=body), 403)
    refused = admin.call("POST", "identity-providers", json={**body, "internal": False})
    assert refused.status_code == 422, refused.text  # a loopback issuer is refused without internal
    token = _system_token(env)
    created = admin.call("POST", "identity-providers", token=token, json=body)
    assert created.status_code == 201, created.text
    admin.call("POST", "groups", json={"name": "Sales EMEA"})
    env.run(env.ctx.audit.writer.flush)  # token grants are written in batches, after their requests
    before = admin.call("GET", "audit?limit=200").json()["items"]
    preview = admin.call("POST", "identity-providers/corp/preview", json=SAMPLE)
    assert preview.status_code == 200, preview.text
    assert preview.json()["link"]["rule"] == "jit" and preview.json()["changes"]["join"] == ["Sales EMEA"]
    env.run(env.ctx.audit.writer.flush)
    after = admin.call("GET", "audit?limit=200").json()["items"]
    assert [e for e in after if e["action"] != "token.grant"] == [e for e in before if e["action"] != "token.grant"]
    assert admin.call("GET", "users").json()["items"] == []
