"""Oversized bodies are 413 on every endpoint that takes one, in each surface's own format.

Each surface is checked with a declared ``Content-Length`` over its limit (refused before reading) and
with a chunked body that has no ``Content-Length`` and grows past the limit while it is read.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from idhub.oidc.params import MAX_BODY_BYTES
from idhub.scim.discovery import BULK_MAX_PAYLOAD
from idhub.scim.router import MAX_BODY as SCIM_MAX_BODY
from idhub.tenants.service import TenantInfo
from idhub.web.forms import MAX_FORM_BYTES
from tests.conftest import Env
from tests.scim.conftest import provisioning_token

FORM = "application/x-www-form-urlencoded"
SCIM_JSON = "application/scim+json"
ERROR_URN = "urn:ietf:params:scim:api:messages:2.0:Error"
BULK_URN = "urn:ietf:params:scim:api:messages:2.0:BulkRequest"
USER_URN = "urn:ietf:params:scim:schemas:core:2.0:User"


class Answer:
    """A response read straight off the ASGI interface."""

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status_code = status
        self.headers = headers
        self.content = body
        self.text = body.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.content)


def send_chunked(env: Env, path: str, chunks: list[bytes], headers: dict[str, str]) -> Answer:
    """POST ``chunks`` as separate ASGI messages with no Content-Length (a chunked upload)."""
    app = env.client.app

    async def go() -> Answer:
        messages: list[dict[str, Any]] = [{"type": "http.request", "body": c, "more_body": True} for c in chunks]
        messages.append({"type": "http.request", "body": b"", "more_body": False})
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return messages.pop(0) if messages else {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        raw_headers = [(b"host", b"testserver"), (b"transfer-encoding", b"chunked")]
        raw_headers += [(k.lower().encode(), v.encode()) for k, v in headers.items()]
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": raw_headers,
            "client": ("127.0.0.1", 50000),
            "server": ("testserver", 80),
        }
        await app(scope, receive, send)
        start = next(m for m in sent if m["type"] == "http.response.start")
        body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
        return Answer(start["status"], {k.decode().lower(): v.decode() for k, v in start["headers"]}, body)

    result: Answer = env.run(go)
    return result


def _chunks(total: int, size: int = 16 * 1024, prefix: bytes = b"a=") -> list[bytes]:
    body = prefix + b"x" * (total - len(prefix))
    return [body[i : i + size] for i in range(0, len(body), size)]


# --- OAuth endpoints: RFC 6749 §5.2 JSON with status 413 ------------------------------------------------
OAUTH_ENDPOINTS = ["token", "introspect", "revoke", "userinfo"]


def _assert_oauth_413(response: Any) -> None:
    assert response.status_code == 413, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.headers["cache-control"] == "no-store"
    assert response.json()["error"] == "invalid_request"


@pytest.mark.parametrize("endpoint", OAUTH_ENDPOINTS)
def test_oauth_declared_length_over_limit_413_json(env: Env, endpoint: str) -> None:
    tenant = env.tenant()
    body = b"a=" + b"x" * MAX_BODY_BYTES
    response = env.client.post(f"/tenants/{tenant.slug}/{endpoint}", content=body, headers={"content-type": FORM})
    _assert_oauth_413(response)


@pytest.mark.parametrize("endpoint", OAUTH_ENDPOINTS)
def test_oauth_declared_length_refused_before_reading_413_json(env: Env, endpoint: str) -> None:
    tenant = env.tenant()
    headers = {"content-type": FORM, "content-length": str(10 * MAX_BODY_BYTES)}
    _assert_oauth_413(send_chunked(env, f"/tenants/{tenant.slug}/{endpoint}", [b"a=b"], headers))


@pytest.mark.parametrize("endpoint", OAUTH_ENDPOINTS)
def test_oauth_chunked_body_growing_over_limit_413_json(env: Env, endpoint: str) -> None:
    tenant = env.tenant()
    chunks = _chunks(MAX_BODY_BYTES + 1000)
    _assert_oauth_413(send_chunked(env, f"/tenants/{tenant.slug}/{endpoint}", chunks, {"content-type": FORM}))


def test_oauth_body_at_limit_not_413(env: Env) -> None:
    tenant = env.tenant()
    body = b"grant_type=client_credentials&pad=" + b"x" * (MAX_BODY_BYTES - 34)
    assert len(body) == MAX_BODY_BYTES
    response = env.client.post(f"/tenants/{tenant.slug}/token", content=body, headers={"content-type": FORM})
    assert response.status_code == 401 and response.json()["error"] == "invalid_client"  # read, then judged


# --- SCIM: RFC 7644 §3.12 error body, status "413", no scimType -----------------------------------------
def _scim(env: Env) -> tuple[TenantInfo, dict[str, str]]:
    tenant = env.tenant()
    headers = {"authorization": f"Bearer {provisioning_token(env, tenant)}", "content-type": SCIM_JSON}
    return tenant, headers


def _assert_scim_413(response: Any) -> None:
    assert response.status_code == 413, response.text
    assert response.headers["content-type"].startswith(SCIM_JSON)
    body = response.json()
    assert body["schemas"] == [ERROR_URN] and body["status"] == "413"
    assert "scimType" not in body


def _user_body(size: int) -> bytes:
    head = json.dumps({"schemas": [USER_URN], "userName": "big", "title": ""}).encode()[:-2]
    return head + b"x" * (size - len(head) - 2) + b'"}'


SCIM_WRITES = [("POST", "/Users"), ("PUT", "/Users/00000000-0000-0000-0000-000000000001"),
               ("PATCH", "/Users/00000000-0000-0000-0000-000000000001"), ("POST", "/Groups"),
               ("POST", "/Users/.search"), ("POST", "/.search")]  # fmt: skip


@pytest.mark.parametrize(("method", "path"), SCIM_WRITES)
def test_scim_declared_length_over_limit_413_scim_error(env: Env, method: str, path: str) -> None:
    tenant, headers = _scim(env)
    body = _user_body(SCIM_MAX_BODY + 10)
    response = env.client.request(method, f"/tenants/{tenant.slug}/scim/v2{path}", content=body, headers=headers)
    _assert_scim_413(response)


def test_scim_declared_length_over_limit_413_before_content_type(env: Env) -> None:
    tenant, headers = _scim(env)
    headers = {**headers, "content-type": "text/plain", "content-length": str(SCIM_MAX_BODY + 1)}
    _assert_scim_413(send_chunked(env, f"/tenants/{tenant.slug}/scim/v2/Users", [b"{}"], headers))


def test_scim_chunked_body_growing_over_limit_413_scim_error(env: Env) -> None:
    tenant, headers = _scim(env)
    chunks = _chunks(SCIM_MAX_BODY + 1000, size=64 * 1024, prefix=b'{"userName": "')
    _assert_scim_413(send_chunked(env, f"/tenants/{tenant.slug}/scim/v2/Users", chunks, headers))


def test_scim_bulk_limit_is_advertised_max_payload_size(env: Env) -> None:
    tenant, headers = _scim(env)
    config = env.client.get(f"/tenants/{tenant.slug}/scim/v2/ServiceProviderConfig", headers=headers).json()
    assert config["bulk"]["maxPayloadSize"] == BULK_MAX_PAYLOAD > SCIM_MAX_BODY
    op = {"method": "POST", "path": "/Users", "bulkId": "a", "data": {"schemas": [USER_URN], "userName": "bulky"}}
    # Over a single resource's limit but within maxPayloadSize: the Bulk request is read and run.
    padded = {"schemas": [BULK_URN], "Operations": [op], "pad": "x" * (SCIM_MAX_BODY + 1000)}
    response = env.client.post(f"/tenants/{tenant.slug}/scim/v2/Bulk", content=json.dumps(padded), headers=headers)
    assert response.status_code == 200, response.text[:300]
    # Over maxPayloadSize, declared or chunked: 413 and nothing runs (RFC 7644 §3.7.4).
    padded["pad"] = "x" * BULK_MAX_PAYLOAD
    op["data"]["userName"] = "never"
    raw = json.dumps(padded).encode()
    _assert_scim_413(env.client.post(f"/tenants/{tenant.slug}/scim/v2/Bulk", content=raw, headers=headers))
    chunks = [raw[i : i + 256 * 1024] for i in range(0, len(raw), 256 * 1024)]
    _assert_scim_413(send_chunked(env, f"/tenants/{tenant.slug}/scim/v2/Bulk", chunks, headers))
    found = env.client.get(
        f"/tenants/{tenant.slug}/scim/v2/Users", params={"filter": 'userName eq "never"'}, headers=headers
    )
    assert found.json()["totalResults"] == 0


# --- Pages: the HTML error page with status 413 ---------------------------------------------------------
PAGES = ["authorize", "logout", "interaction/abcdef123456/login", "interaction/abcdef123456/consent"]


def _assert_page_413(response: Any) -> None:
    assert response.status_code == 413, response.text[:300]
    assert response.headers["content-type"].startswith("text/html")
    assert "too large" in response.text
    assert "Traceback" not in response.text


@pytest.mark.parametrize("page", PAGES)
def test_page_declared_length_over_limit_413_html(env: Env, page: str) -> None:
    tenant = env.tenant()
    body = b"a=" + b"x" * MAX_FORM_BYTES
    _assert_page_413(env.client.post(f"/tenants/{tenant.slug}/{page}", content=body, headers={"content-type": FORM}))


@pytest.mark.parametrize("page", PAGES)
def test_page_chunked_body_growing_over_limit_413_html(env: Env, page: str) -> None:
    tenant = env.tenant()
    chunks = _chunks(MAX_FORM_BYTES + 1000)
    _assert_page_413(send_chunked(env, f"/tenants/{tenant.slug}/{page}", chunks, {"content-type": FORM}))
