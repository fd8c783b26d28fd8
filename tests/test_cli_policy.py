"""``idhub policy ...`` and ``idhub report entitlements`` against the test app's database (both backends)."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

import pytest
from click.testing import CliRunner, Result

from idhub.cli import main
from tests.conftest import PUBLIC_URL, TEST_MASTER_KEY, Env
from tests.directory.helpers import audit_actions
from tests.directory.policy_helpers import grant_revoked, make_group, seed_refresh

APP = {"redirect_uris": ["https://rp.example/cb"], "scope": "openid profile x y"}


@dataclass
class Cli:
    """Run the command against the database the ``env`` app serves."""

    env: Env
    environ: dict[str, str]

    def run(self, *args: str) -> Result:
        return CliRunner().invoke(main, list(args), env=self.environ, catch_exceptions=False)

    def ok(self, *args: str) -> dict[str, Any]:
        result = self.run(*args, "--json")
        assert result.exit_code == 0, result.output + result.stderr
        lines = result.stdout.strip().splitlines()
        assert len(lines) == 1, f"expected one JSON line, got {result.stdout!r}"
        value = json.loads(lines[0])
        assert isinstance(value, dict)
        return value

    def fails(self, *args: str) -> str:
        result = self.run(*args)
        assert result.exit_code != 0 and result.stdout == "", result.stdout
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
        return lines[0]


@pytest.fixture
def cli(env: Env) -> Cli:
    settings = env.ctx.settings
    return Cli(
        env,
        {
            "IDHUB_DATABASE_URL": settings.database_url,
            "IDHUB_DATA_DIR": str(settings.data_dir),
            "IDHUB_MASTER_KEY": TEST_MASTER_KEY,
            "IDHUB_PUBLIC_URL": PUBLIC_URL,
            "IDHUB_ENVIRONMENT": "test",
        },
    )


def test_cli_policy_create_list_update_delete_json(env: Env, cli: Cli) -> None:
    tenant = env.tenant()
    slug = tenant.slug
    app, _ = env.oauth_client(tenant, **APP)
    robot, _ = env.oauth_client(tenant, scope="api read", grant_types=["client_credentials"])
    group_id = cli.ok("group", "create", "--tenant", slug, "--name", "Engineering")["id"]

    created = cli.ok("policy", "create", "--tenant", slug, "--client", app, "--group", "engineering", "--scope", "x y")
    assert created["client_id"] == app and created["group_id"] == group_id and created["subject"] == "group"
    assert created["group_name"] == "Engineering" and created["scope"] == "x y"
    policy_id = created["id"]
    uuid.UUID(policy_id)
    machine = cli.ok("policy", "create", "--tenant", slug, "--client", robot, "--machine", "--scope", "read")
    assert machine["subject"] == "machine" and machine["group_id"] is None

    listed = cli.ok("policy", "list", "--tenant", slug)["policies"]
    assert {p["id"] for p in listed} == {policy_id, machine["id"]}
    assert [p["id"] for p in cli.ok("policy", "list", "--tenant", slug, "--client", app)["policies"]] == [policy_id]
    assert [p["id"] for p in cli.ok("policy", "list", "--tenant", slug, "--group", group_id)["policies"]] == [policy_id]
    table = cli.run("policy", "list", "--tenant", slug, "--client", app)
    assert table.exit_code == 0 and policy_id in table.stdout and "Engineering" in table.stdout

    updated = cli.ok("policy", "update", "--tenant", slug, "--id", policy_id, "--scope", "x")
    assert updated["scope"] == "x" and updated["id"] == policy_id
    assert cli.ok("policy", "delete", "--tenant", slug, "--id", policy_id) == {"id": policy_id, "deleted": True}
    assert [p["id"] for p in cli.ok("policy", "list", "--tenant", slug)["policies"]] == [machine["id"]]
    actions = env.run(audit_actions, env, tenant.id, policy_id)
    assert actions == ["policy.create", "policy.update", "policy.delete"]


def test_cli_policy_bad_input_one_line_error(env: Env, cli: Cli) -> None:
    tenant = env.tenant()
    slug = tenant.slug
    app, _ = env.oauth_client(tenant, **APP)
    other = env.tenant()
    foreign, _ = env.oauth_client(other, **APP)
    make_group(env, tenant, "Sales")
    create = ("policy", "create", "--tenant", slug)
    assert "client not found" in cli.fails(*create, "--client", "nope", "--group", "Sales", "--scope", "x")
    assert "client not found" in cli.fails(*create, "--client", foreign, "--group", "Sales", "--scope", "x")
    assert "Unknown" in cli.fails(*create, "--client", app, "--group", "Unknown", "--scope", "x")
    assert "admin" in cli.fails(*create, "--client", app, "--group", "Sales", "--scope", "x admin")
    assert "RFC 6749" in cli.fails(*create, "--client", app, "--group", "Sales", "--scope", 'x"')
    cli.fails(*create, "--client", app, "--group", "Sales", "--scope", "")
    assert "exactly one" in cli.fails(*create, "--client", app, "--scope", "x")
    assert "exactly one" in cli.fails(*create, "--client", app, "--group", "Sales", "--machine", "--scope", "x")
    assert "client_credentials" in cli.fails(*create, "--client", app, "--machine", "--scope", "x")
    cli.ok(*create, "--client", app, "--group", "Sales", "--scope", "x")
    assert "already" in cli.fails(*create, "--client", app, "--group", "Sales", "--scope", "y")
    cli.fails("policy", "create", "--tenant", "no-such-tenant", "--client", app, "--group", "Sales", "--scope", "x")
    assert "UUID" in cli.fails("policy", "update", "--tenant", slug, "--id", "not-an-id", "--scope", "x")
    missing = str(uuid.uuid4())
    assert "not found" in cli.fails("policy", "update", "--tenant", slug, "--id", missing, "--scope", "x")
    assert "not found" in cli.fails("policy", "delete", "--tenant", slug, "--id", missing)
    assert "not found" in cli.fails("report", "entitlements", "--tenant", slug, "--client", "nope")


def test_cli_policy_delete_revokes_refresh_tokens_carrying_scope(env: Env, cli: Cli) -> None:
    tenant = env.tenant()
    app, _ = env.oauth_client(tenant, **APP)
    alice = env.user(tenant, "alice", password=None)
    group = make_group(env, tenant, "A", users=[alice])
    make_group(env, tenant, "B", users=[alice])
    cli.ok("policy", "create", "--tenant", tenant.slug, "--client", app, "--group", "B", "--scope", "profile")
    policy = cli.ok("policy", "create", "--tenant", tenant.slug, "--client", app, "--group", str(group), "--scope", "x")
    carrying, other = (
        seed_refresh(env, tenant, app, alice, "openid x"),
        seed_refresh(env, tenant, app, alice, "profile"),
    )
    cli.ok("policy", "delete", "--tenant", tenant.slug, "--id", policy["id"])
    assert grant_revoked(env, carrying) and not grant_revoked(env, other)


def test_cli_report_entitlements_json_people_and_table(env: Env, cli: Cli) -> None:
    tenant = env.tenant()
    slug = tenant.slug
    app, _ = env.oauth_client(tenant, name="App", **APP)
    open_app, _ = env.oauth_client(tenant, name="Open", **APP)
    alice = env.user(tenant, "alice", password=None)
    make_group(env, tenant, "Sales", users=[alice])
    cli.ok("policy", "create", "--tenant", slug, "--client", app, "--group", "Sales", "--scope", "x")

    report = cli.ok("report", "entitlements", "--tenant", slug)
    assert report["tenant"] == slug
    clients = {c["client_id"]: c for c in report["clients"]}
    assert clients[open_app]["governed"] is False and clients[open_app]["open_to_all_users"] == [
        "openid",
        "profile",
        "x",
        "y",
    ]
    assert clients[app]["scopes"] == [
        {"scope": "x", "groups": [{"id": clients[app]["scopes"][0]["groups"][0]["id"], "name": "Sales"}]}
    ]
    assert "people" not in clients[app]

    people = cli.ok("report", "entitlements", "--tenant", slug, "--client", app, "--people")
    [only] = people["clients"]
    assert only["people"] == [
        {"user_id": alice, "username": "alice", "scopes": [only["scopes"][0]]},
    ]
    table = cli.run("report", "entitlements", "--tenant", slug, "--people")
    assert table.exit_code == 0, table.stderr
    assert "ungoverned (open to every user)" in table.stdout and "x: Sales" in table.stdout
    assert "alice: x (via Sales)" in table.stdout


def test_cli_init_admin_client_has_machine_policy(env: Env, cli: Cli) -> None:
    slug = f"init-{uuid.uuid4().hex[:8]}"
    result = cli.run("init", "--tenant", slug)
    assert result.exit_code == 0, result.stderr
    admin = json.loads(result.stdout)["admin_client_id"]
    [policy] = cli.ok("policy", "list", "--tenant", slug, "--client", admin)["policies"]
    assert policy["subject"] == "machine" and policy["scope"] == "idhub:admin"
    response = env.client.post(
        f"/tenants/{slug}/token",
        data={"grant_type": "client_credentials", "scope": "idhub:admin"},
        auth=(admin, json.loads(result.stdout)["admin_client_secret"]),
    )
    assert response.status_code == 200 and response.json()["scope"] == "idhub:admin"
