"""Strict parsing of OAuth request parameters and the cheap request plumbing of back-channel endpoints.

The token, introspection and revocation endpoints are hot paths, so they read the raw body and parse
``application/x-www-form-urlencoded`` themselves instead of going through form libraries and models.
Parsing is strict: a repeated parameter is ``invalid_request`` (RFC 6749 §3.1, §3.2), an empty value
counts as omitted (RFC 6749 §3.1), and anything that is not a well-formed UTF-8 form is refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson
from fastapi import Request, Response

from idhub.context import AppContext
from idhub.errors import NotFound
from idhub.formdata import decode_pairs
from idhub.metrics import NOSNIFF
from idhub.oidc.errors import InvalidRequest, RequestTooLarge
from idhub.tenants.service import TenantInfo

FORM_TYPE = "application/x-www-form-urlencoded"
# RFC 6749 §5.1: answers carrying tokens or credentials must not be cached.
NO_STORE = {"cache-control": "no-store", "pragma": "no-cache"}
_NO_STORE_JSON_HEADERS = [
    (b"content-type", b"application/json"),
    (b"cache-control", b"no-store"),
    (b"pragma", b"no-cache"),
    NOSNIFF,
]
MAX_BODY_BYTES = 64 * 1024
TOO_LARGE = f"the request body exceeds {MAX_BODY_BYTES} bytes"
MAX_FIELDS = 64
# RFC 8707 §2: ``resource`` may be given more than once.
REPEATABLE: frozenset[str] = frozenset({"resource"})


@dataclass(slots=True)
class Params:
    """Parsed parameters: single values by name, plus the repeatable ones as lists."""

    values: dict[str, str]
    multi: dict[str, list[str]] = field(default_factory=dict)

    def get(self, name: str) -> str | None:
        """Return the value of a single-valued parameter, or ``None`` when omitted."""
        return self.values.get(name)

    def require(self, name: str) -> str:
        """Return a parameter that must be present (RFC 6749 §5.2 ``invalid_request`` otherwise)."""
        value = self.values.get(name)
        if value is None:
            raise InvalidRequest(f"{name} is required")
        return value

    def all(self, name: str) -> list[str]:
        """Return every value of a repeatable parameter."""
        return self.multi.get(name, [])

    def __contains__(self, name: str) -> bool:
        return name in self.values or name in self.multi


def parse_pairs(pairs: list[tuple[str, str]], *, repeatable: frozenset[str] = REPEATABLE) -> Params:
    """Group name/value pairs strictly: repeats refused, empty values omitted, NUL refused."""
    values: dict[str, str] = {}
    multi: dict[str, list[str]] = {}
    for name, value in pairs:
        if not value:
            continue  # RFC 6749 §3.1: a parameter sent without a value is treated as omitted.
        if "\x00" in value or "\x00" in name:
            raise InvalidRequest("parameters must not contain NUL characters")
        if name in repeatable:
            multi.setdefault(name, []).append(value)
        elif name in values:
            raise InvalidRequest(f"{name} is repeated")  # RFC 6749 §3.1: parameters MUST NOT repeat.
        else:
            values[name] = value
    return Params(values, multi)


def parse_form(body: bytes, *, repeatable: frozenset[str] = REPEATABLE) -> Params:
    """Parse an urlencoded body strictly (see :func:`parse_pairs`)."""
    if len(body) > MAX_BODY_BYTES:
        raise RequestTooLarge(TOO_LARGE)
    try:
        pairs = decode_pairs(body, max_fields=MAX_FIELDS)
    except ValueError as exc:
        raise InvalidRequest("malformed form body") from exc
    return parse_pairs(pairs, repeatable=repeatable)


class NoStoreJSON(Response):
    """A JSON answer with ``Cache-Control: no-store`` (RFC 6749 §5.1), its headers built once.

    Starlette's generic header handling costs more than the token endpoint's own logic, so this sets
    the raw headers directly.
    """

    media_type = "application/json"

    def __init__(self, body: dict[str, Any] | bytes | str, status_code: int = 200) -> None:
        if isinstance(body, dict):
            body = orjson.dumps(body)
        self.body = body.encode() if isinstance(body, str) else body
        self.status_code = status_code
        self.background = None
        self.raw_headers = [*_NO_STORE_JSON_HEADERS, (b"content-length", str(len(self.body)).encode())]


def header(request: Request, name: bytes) -> str | None:
    """Return one request header (``name`` lower-case) straight from the ASGI scope (hot paths)."""
    for key, value in request.scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


def is_form(request: Request) -> bool:
    """Tell whether the body is declared ``application/x-www-form-urlencoded`` (charset allowed)."""
    content_type = header(request, b"content-type")
    if not content_type:
        return False
    return content_type.split(";", 1)[0].strip().lower() == FORM_TYPE


async def read_form(request: Request, *, repeatable: frozenset[str] = REPEATABLE) -> Params:
    """Read and parse the request's form body; other content types are ``invalid_request`` (RFC 6749 §3.2).

    A body over :data:`MAX_BODY_BYTES` is 413 (RFC 9110 §15.5.14), whether its declared length says so
    up front or a chunked body grows past the limit while it is read.
    """
    declared = header(request, b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise RequestTooLarge(TOO_LARGE)
    if not is_form(request):
        raise InvalidRequest(f"the request body must be {FORM_TYPE}")
    # Read the ASGI messages directly (cheaper than Request.stream on this hot path).
    body = b""
    receive = request.receive
    while True:
        message = await receive()
        if message["type"] != "http.request":  # nobody is left to answer; not a server error
            raise InvalidRequest("client disconnected")
        body += message.get("body", b"")
        if len(body) > MAX_BODY_BYTES:
            raise RequestTooLarge(TOO_LARGE)
        if not message.get("more_body", False):
            break
    return parse_form(body, repeatable=repeatable)


def read_query(request: Request, *, repeatable: frozenset[str] = REPEATABLE) -> Params:
    """Parse the query string strictly (see :func:`parse_pairs`)."""
    raw = request.scope.get("query_string", b"")
    if not raw:
        return Params({})
    if len(raw) > MAX_BODY_BYTES:
        raise InvalidRequest("the query string is too long")
    return parse_form(raw, repeatable=repeatable)


async def tenant_of(ctx: AppContext, slug: str) -> TenantInfo:
    """Resolve the ``{tenant}`` path segment (cached); unknown tenants are 404 like everywhere else."""
    tenant = await ctx.tenants.get(slug)
    if tenant is None:
        raise NotFound("unknown tenant")
    return tenant


# --- OpenAPI descriptions of hand-parsed bodies ------------------------------------------------------

_STRING: dict[str, Any] = {"type": "string"}
OAUTH_ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": _STRING, "error_description": _STRING},
}
CLIENT_AUTH_FIELDS: dict[str, Any] = {
    "client_id": {**_STRING, "description": "client_secret_post, private_key_jwt or none (public clients)"},
    "client_secret": {**_STRING, "description": "client_secret_post (RFC 6749 §2.3.1)"},
    "client_assertion_type": {**_STRING, "enum": ["urn:ietf:params:oauth:client-assertion-type:jwt-bearer"]},
    "client_assertion": {**_STRING, "description": "private_key_jwt (RFC 7523 §2.2)"},
}


def form_request_body(fields: dict[str, Any], *, required: list[str]) -> dict[str, Any]:
    """Return ``openapi_extra`` documenting an ``application/x-www-form-urlencoded`` body."""
    return {
        "requestBody": {
            "required": True,
            "content": {
                FORM_TYPE: {
                    "schema": {"type": "object", "required": required, "properties": fields},
                }
            },
        }
    }


def json_response(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    """Return one OpenAPI response entry with a JSON body."""
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def oauth_error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """Return OpenAPI entries for OAuth error answers (RFC 6749 §5.2) with the given statuses, plus 413."""
    text = {400: "invalid request", 401: "client or token authentication failed", 403: "insufficient scope"}
    responses: dict[int | str, dict[str, Any]] = {
        status: json_response(text.get(status, "error"), OAUTH_ERROR_SCHEMA) for status in statuses
    }
    responses[413] = json_response(f"form body over {MAX_BODY_BYTES} bytes (invalid_request)", OAUTH_ERROR_SCHEMA)
    responses[404] = json_response("unknown tenant", {"type": "object", "properties": {"detail": _STRING}})
    return responses
