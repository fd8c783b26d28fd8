"""Mapping rules end to end: an app's ID token after a brokered sign-in carries the mapped attributes.

``corp`` (a second idhub tenant) is the upstream; the ``apps`` tenant maps its claims with a template
and constants, and joins an existing group. A later sign-in with a changed mapping updates the user.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
from sqlalchemy import select

from idhub.broker.sync import source_of
from idhub.events import Actor
from idhub.storage.models import Group, GroupMember
from tests.conftest import Env
from tests.interop.test_broker_oidc import Setup, _claims, browser

__all__ = ["browser"]


def _set_mapping(live: Env, setup: Setup, mapping: dict[str, Any]) -> Any:
    async def work() -> Any:
        async with live.ctx.uow(actor=Actor("cli", "test"), surface="cli") as uow:
            return await live.ctx.broker.providers(uow).update(setup.apps.id, setup.alias, mapping=json.dumps(mapping))

    return live.run(work)


def test_broker_mapping_reaches_the_apps_id_token_and_groups(live: Env, browser: httpx.Client) -> None:
    setup = Setup(live)
    mapping = {
        "rules": [
            {"kind": "attribute", "target": "formattedName", "template": "{preferred_username} (corp)"},
            {"kind": "constant", "target": "familyName", "value": "Corp"},
            {"kind": "constant", "group": "Corp staff"},
        ]
    }
    provider = _set_mapping(live, setup, mapping)

    async def make_group() -> uuid.UUID:
        async with live.uow() as uow:
            return (await live.ctx.directory(uow).groups.create(setup.apps.id, name="Corp staff")).id

    group_id = live.run(make_group)
    claims = _claims(setup.tokens(setup.sign_in(browser)["code"])["id_token"])
    assert claims["name"] == f"{setup.username} (corp)" and claims["family_name"] == "Corp"

    async def memberships() -> list[tuple[uuid.UUID, str | None]]:
        async with live.ctx.sessionmaker() as session:
            rows = await session.execute(
                select(GroupMember.group_id, GroupMember.source)
                .join(Group, Group.id == GroupMember.group_id)
                .where(GroupMember.user_id == uuid.UUID(claims["sub"]))
            )
            return [(gid, source) for gid, source in rows]

    assert live.run(memberships) == [(group_id, source_of(provider))]

    _set_mapping(live, setup, {"rules": [{"kind": "constant", "target": "familyName", "value": "Corporate"}]})
    again = _claims(setup.tokens(setup.sign_in(browser, prompt="login")["code"])["id_token"])
    assert again["sub"] == claims["sub"] and again["family_name"] == "Corporate"
    assert live.run(memberships) == []  # the upstream's own membership ends when no longer asserted
