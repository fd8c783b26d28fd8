"""No input makes any endpoint answer 5xx: schemathesis fuzzes every operation of the served OpenAPI.

Cases come from the document the app serves (``GET /openapi.json``) and are sent through the ``env``
fixture's app (SQLite and PostgreSQL), so ``{tenant}`` hits a real tenant with real clients as well as
random slugs. The number of examples per operation is bounded to keep the suite fast.
"""

from __future__ import annotations

import base64
import os
from typing import Any
from urllib.parse import quote

import hypothesis
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given
from hypothesis import strategies as st
from schemathesis import Case, GenerationMode
from schemathesis.checks import not_a_server_error

from tests.conftest import Env

MAX_EXAMPLES = int(os.environ.get("IDHUB_FUZZ_EXAMPLES", "25"))
REDIRECT_URI = "https://rp.example/cb"


def _send(env: Env, case: Case) -> Any:
    """Serialise ``case`` the way schemathesis's requests transport does, then send it through the app."""
    kwargs = case.as_transport_kwargs(base_url=env.base_url)
    prepared = requests.Request(
        method=kwargs["method"],
        url=kwargs["url"],
        headers=kwargs.get("headers"),
        params=kwargs.get("params"),
        cookies=kwargs.get("cookies"),
        data=kwargs.get("data"),
        json=kwargs.get("json"),
        files=kwargs.get("files"),
    ).prepare()
    body = prepared.body.encode() if isinstance(prepared.body, str) else prepared.body
    return env.client.request(
        prepared.method or "GET",
        prepared.url or "",
        headers=dict(prepared.headers),
        content=body,
        follow_redirects=False,
    )


def _basic(client_id: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{quote(client_id, safe='')}:{quote(secret, safe='')}".encode()).decode()


def _strategy(operation: Any, slug: str, client_id: str, secret: str, scim: dict[str, str]) -> st.SearchStrategy[Case]:
    """Mix cases aimed at the real tenant (and client) with fully random ones, valid and invalid."""
    names = {parameter.name for parameter in operation.iter_parameters()}
    strategies = [
        operation.as_strategy(GenerationMode.POSITIVE),
        operation.as_strategy(GenerationMode.NEGATIVE),
    ]
    if "tenant" in names:
        real = {"tenant": slug}
        strategies += [
            operation.as_strategy(GenerationMode.POSITIVE, path_parameters=real),
            operation.as_strategy(GenerationMode.NEGATIVE, path_parameters=real),
        ]
        if "client_id" in names and "redirect_uri" in names:
            query = {"client_id": client_id, "redirect_uri": REDIRECT_URI, "response_type": "code"}
            strategies.append(operation.as_strategy(GenerationMode.POSITIVE, path_parameters=real, query=query))
        if operation.method.lower() == "post":
            # Authenticated as a real client, so token/introspection/revocation bodies get past client auth.
            headers = {"Authorization": _basic(client_id, secret)}
            strategies.append(operation.as_strategy(GenerationMode.POSITIVE, path_parameters=real, headers=headers))
        if "/scim/v2/" in operation.path:
            # Authenticated with a provisioning token, aimed at a real user and group as well as random ids.
            headers = {"Authorization": f"Bearer {scim['token']}"}
            ids = {name: scim[name] for name in ("user_id", "group_id") if name in names}
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                strategies.append(operation.as_strategy(mode, path_parameters={**real, **ids}, headers=headers))
        if operation.path.startswith("/admin/"):
            # Authenticated as the tenant's administrator, aimed at a real user and group as well as random ids.
            headers = {"Authorization": f"Bearer {scim['admin_token']}"}
            ids = {name: scim[name] for name in ("user_id", "group_id") if name in names}
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                strategies.append(operation.as_strategy(mode, path_parameters={**real, **ids}, headers=headers))
    return st.one_of(strategies)


def _scim_targets(env: Env, tenant: Any) -> dict[str, str]:
    """Create a provisioning token, a user and a group to aim SCIM cases at."""
    from tests.scim.conftest import GROUP_URN, USER_URN, provisioning_token

    token = provisioning_token(env, tenant)
    headers = {"authorization": f"Bearer {token}", "content-type": "application/scim+json"}
    base = f"/tenants/{tenant.slug}/scim/v2"
    user = env.client.post(f"{base}/Users", json={"schemas": [USER_URN], "userName": "fuzz"}, headers=headers)
    group = env.client.post(f"{base}/Groups", json={"schemas": [GROUP_URN], "displayName": "fuzz"}, headers=headers)
    from tests.admin.conftest import client_token

    admin_token = client_token(env, tenant, "idhub:admin")
    return {"token": token, "user_id": user.json()["id"], "group_id": group.json()["id"], "admin_token": admin_token}


def test_schemathesis_every_operation_no_server_error(env: Env) -> None:
    document = env.client.get("/openapi.json").json()
    schema = schemathesis.openapi.from_dict(document)
    tenant = env.tenant()
    client_id, secret = env.oauth_client(
        tenant, redirect_uris=[REDIRECT_URI], grant_types=["authorization_code", "refresh_token", "client_credentials"]
    )
    scim = _scim_targets(env, tenant)
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert operations, "the served OpenAPI document lists no operations"

    for operation in operations:

        @given(case=_strategy(operation, tenant.slug, client_id, secret or "", scim))
        @hypothesis.settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            database=None,
            derandomize=True,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        def check(case: Case) -> None:
            response = _send(env, case)
            case.validate_response(response, checks=[not_a_server_error])

        try:
            check()
        except Exception as exc:  # collect every failing operation, then report them together
            notes = "\n".join(getattr(exc, "__notes__", []))
            failures.append(f"{operation.method.upper()} {operation.path}: {type(exc).__name__}: {exc}\n{notes}")

    assert not failures, "server errors found:\n" + "\n\n".join(failures)


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics"])
def test_schemathesis_operations_document_lists_ops_endpoints(env: Env, path: str) -> None:
    assert path in env.client.get("/openapi.json").json()["paths"]
