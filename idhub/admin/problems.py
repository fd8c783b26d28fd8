"""The admin surface's boundary: every error under ``/admin/v1`` is ``application/problem+json`` (RFC 9457).

Domain errors map to their statuses (``NotFound`` 404, ``Conflict`` 409, ``PreconditionFailed`` 412,
``Forbidden`` 403, ``Invalid`` 422, ``Unavailable`` 503 with ``Retry-After``); framework validation
errors are 422 with the offending fields listed (an extension member, RFC 9457 §3.2); framework HTTP
errors keep their status; anything unexpected is a bare 500 whose detail stays in the log under the
request id, which every problem carries so a caller can quote it to an operator.
"""

from __future__ import annotations

from collections.abc import Callable
from http import HTTPStatus
from typing import Any

import orjson
from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.types import Message

from idhub.errors import Conflict, DomainError, Forbidden, Invalid, NotFound, PreconditionFailed, Unavailable
from idhub.request_context import RequestInfo
from idhub.routing import SurfaceRoute, log_refusal, log_unexpected, run_in_boundary

SURFACE = "admin"
PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_BASE = "https://idhub.dev/problems/"  # identifiers, not locators (RFC 9457 §3.1.1)


class Problem(Exception):
    """An admin API error with its status, a type slug and a detail written for the caller."""

    def __init__(
        self,
        status: int,
        detail: str = "",
        *,
        kind: str | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.kind = kind
        self.headers = headers or {}
        self.extra = extra or {}


class Unauthorized(Problem):
    """No valid credentials (RFC 6750 §3: the bearer challenge goes with it)."""

    def __init__(self, detail: str = "a valid bearer token is required", *, error: str | None = None) -> None:
        challenge = 'Bearer realm="idhub-admin"' + (f', error="{error}"' if error else "")
        super().__init__(401, detail, kind="unauthorized", headers={"www-authenticate": challenge})


class NotPermitted(Problem):
    """Valid credentials whose role does not allow the operation (RFC 6750 §3.1 ``insufficient_scope``)."""

    def __init__(self, detail: str = "your role does not allow this") -> None:
        challenge = 'Bearer realm="idhub-admin", error="insufficient_scope"'
        super().__init__(403, detail, kind="forbidden", headers={"www-authenticate": challenge})


_DOMAIN: tuple[tuple[type[DomainError], int, str], ...] = (
    (NotFound, 404, "not-found"),
    (PreconditionFailed, 412, "precondition-failed"),
    (Conflict, 409, "conflict"),
    (Forbidden, 403, "forbidden"),
    (Invalid, 422, "invalid"),
    (Unavailable, 503, "unavailable"),
)


def problem_response(
    request: Request | None,
    status: int,
    detail: str = "",
    *,
    kind: str | None = None,
    headers: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> Response:
    """Render one problem (RFC 9457 §3.1: type, title, status, detail, instance; plus ``request_id``)."""
    body: dict[str, Any] = {
        "type": PROBLEM_BASE + kind if kind else "about:blank",
        "title": _title(status),
        "status": status,
    }
    if detail:
        body["detail"] = detail
    if request is not None:
        body["instance"] = request.url.path
        info: RequestInfo | None = request.scope.get("idhub.request")
        if info is not None:
            body["request_id"] = info.request_id
    if extra:
        body.update(extra)
    return Response(orjson.dumps(body), status_code=status, media_type=PROBLEM_MEDIA_TYPE, headers=headers)


def _title(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _field_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    """List what was wrong with the request, without echoing the values (they may be secrets)."""
    out = []
    for error in exc.errors()[:50]:
        location = [str(part) for part in error.get("loc", ())]
        out.append({"location": location, "message": str(error.get("msg", "invalid"))})
    return out


def render_problem(request: Request, exc: Exception) -> Response:
    """Render any exception raised behind an admin route as a problem."""
    if isinstance(exc, HTTPException) and isinstance(exc.__cause__, Problem):
        exc = exc.__cause__  # FastAPI wraps what reading the body raised (the body limit) in a 400
    if isinstance(exc, Problem):
        return problem_response(request, exc.status, exc.detail, kind=exc.kind, headers=exc.headers, extra=exc.extra)
    if isinstance(exc, DomainError):
        for cls, status, kind in _DOMAIN:
            if isinstance(exc, cls):
                headers = {"retry-after": str(exc.retry_after)} if isinstance(exc, Unavailable) else None
                return problem_response(request, status, exc.detail, kind=kind, headers=headers)
        log_refusal(exc, SURFACE)
        return problem_response(request, 400, exc.detail, kind="bad-request")
    if isinstance(exc, RequestValidationError):
        errors = _field_errors(exc)
        return problem_response(request, 422, "the request is not valid", kind="validation", extra={"errors": errors})
    if isinstance(exc, HTTPException):
        detail = exc.detail if isinstance(exc.detail, str) else ""
        return problem_response(request, exc.status_code, detail, headers=dict(exc.headers or {}))
    log_unexpected(exc, SURFACE)
    return problem_response(request, 500, "something went wrong on our side; quote the request id")


MAX_BODY = 2 * 1024 * 1024  # the largest body the admin API reads (SAML metadata is the biggest input)


class PayloadTooLarge(Problem):
    """The body is over :data:`MAX_BODY` (RFC 9110 §15.5.14)."""

    def __init__(self) -> None:
        super().__init__(413, f"the body exceeds {MAX_BODY} bytes", kind="payload-too-large")


def limit_body(request: Request, limit: int = MAX_BODY) -> None:
    """Refuse a body over ``limit``: a declared length at once, a chunked one as soon as it grows past it.

    FastAPI reads and parses a JSON body before the endpoint runs, so the limit sits in front of it, on
    the request's ``receive`` (Starlette keeps it as ``_receive``; it is the documented way in, as for
    ``BaseHTTPMiddleware``).
    """
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise PayloadTooLarge()
    receive = request._receive
    seen = 0

    async def counting() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise PayloadTooLarge()
        return message

    request._receive = counting


class AdminRoute(SurfaceRoute):
    """A route of the admin API: bodies capped at :data:`MAX_BODY`, errors as problems."""

    surface = SURFACE
    render_error = staticmethod(render_problem)

    def get_route_handler(self) -> Callable[[Request], Any]:
        """Run FastAPI's handler behind the body limit, inside the surface's boundary."""
        handler = APIRoute.get_route_handler(self)
        render = type(self).render_error

        async def limited(request: Request) -> Response:
            limit_body(request)
            response: Response = await handler(request)
            return response

        async def bounded(request: Request) -> Response:
            return await run_in_boundary(request.scope, request.receive, limited, surface=SURFACE, render=render)

        return bounded
