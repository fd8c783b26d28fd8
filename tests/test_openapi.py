"""The committed ``openapi/openapi.json`` is exactly what the app serves."""

from __future__ import annotations

import json
from pathlib import Path

from idhub.openapi import export_openapi, render_openapi
from tests.conftest import Env

COMMITTED = Path(__file__).resolve().parent.parent / "openapi" / "openapi.json"
HINT = "openapi/openapi.json is stale: run `idhub openapi --output openapi/openapi.json` and commit the result"


def test_openapi_served_document_equals_committed_file(env: Env) -> None:
    response = env.client.get("/openapi.json")
    assert response.status_code == 200
    committed = json.loads(COMMITTED.read_text(encoding="utf-8"))
    assert response.json() == committed, HINT


def test_openapi_export_matches_committed_file_byte_for_byte() -> None:
    assert render_openapi(export_openapi()) == COMMITTED.read_text(encoding="utf-8"), HINT


def test_openapi_document_lists_issuer_paths_under_tenant_prefix() -> None:
    document = export_openapi()
    assert document["openapi"].startswith("3.")
    assert "/healthz" in document["paths"]
    assert "/tenants/{tenant}/.well-known/openid-configuration" in document["paths"]


def test_openapi_every_operation_declares_its_security() -> None:
    document = json.loads(COMMITTED.read_text())
    schemes = document["components"]["securitySchemes"]
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            assert "security" in operation, f"{method.upper()} {path} declares no security"
            for requirement in operation["security"]:
                assert set(requirement) <= set(schemes), (path, requirement)
    admin = document["paths"]["/admin/v1/tenants/{tenant}/users"]["get"]["security"]
    assert admin == [{"adminBearer": []}]
    assert document["paths"]["/tenants/{tenant}/scim/v2/Users"]["get"]["security"] == [{"scimBearer": []}]
    assert document["paths"]["/tenants/{tenant}/jwks"]["get"]["security"] == []
