"""The SCIM surface's boundary: every error under ``{issuer}/scim/v2`` is a SCIM error body (RFC 7644 §3.12).

SCIM errors render as themselves; directory errors are translated (:func:`~idhub.scim.errors.from_domain`:
a taken userName is 409 ``uniqueness``, a stale ``If-Match`` 412, an unavailable database 503 with
``Retry-After``); framework errors keep their status; anything unexpected is a bare SCIM 500 whose
detail stays in the log under the request id.

Every SCIM operation is counted here (``idhub_scim_operations_total``), once per request whatever the
outcome: each route knows its operation when it is built, so a request costs one dict update (and
reading the ``scimType`` back from an error body, on errors only).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

import orjson
from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException

from idhub.errors import DomainError
from idhub.routing import SurfaceRoute, context_of, log_unexpected
from idhub.scim import errors

SURFACE = "scim"
SCIM_MEDIA_TYPE = "application/scim+json"


def scim_error_response(exc: errors.ScimError) -> Response:
    """Render a SCIM error (RFC 7644 §3.12); 401s carry the bearer challenge (RFC 6750 §3)."""
    headers = dict(exc.headers)
    if isinstance(exc, errors.Unauthorized):
        headers["www-authenticate"] = 'Bearer realm="idhub"'
    return Response(orjson.dumps(exc.body()), status_code=exc.status, media_type=SCIM_MEDIA_TYPE, headers=headers)


def render_scim_error(request: Request, exc: Exception) -> Response:
    """Render any exception raised behind a SCIM endpoint as a SCIM error."""
    if isinstance(exc, errors.ScimError):
        return scim_error_response(exc)
    if isinstance(exc, DomainError):
        return scim_error_response(errors.from_domain(exc))
    if isinstance(exc, RequestValidationError):
        return scim_error_response(errors.InvalidSyntax("malformed request parameters"))
    if isinstance(exc, HTTPException):
        error = errors.ScimError(str(exc.detail), headers=dict(exc.headers or {}))
        error.status = exc.status_code
        return scim_error_response(error)
    log_unexpected(exc, SURFACE)
    return scim_error_response(errors.ServerError())


_RESOURCES = {"Users": "User", "Groups": "Group"}
_ON_COLLECTION = {"GET": "list", "POST": "create"}
_ON_RESOURCE = {"GET": "get", "PUT": "replace", "PATCH": "patch", "DELETE": "delete"}


def scim_operation(path: str, methods: Collection[str]) -> tuple[str, str] | None:
    """Return the ``(resource, operation)`` a SCIM route serves, ``None`` for discovery and fallbacks.

    Operations: ``create``, ``get``, ``replace``, ``patch``, ``delete`` (RFC 7644 §3.3-§3.6), ``list``
    (GET on a collection, §3.4.2), ``search`` (POST ``.search``, §3.4.3) and ``bulk`` (§3.7); the resource
    is ``User``, ``Group``, or ``any`` for the server-wide search and bulk.
    """
    if len(methods) != 1:
        return None  # the catch-alls answering methods a path does not take
    method = next(iter(methods))
    parts = path.rpartition("/scim/v2/")[2].split("/")
    if parts == ["Bulk"] and method == "POST":
        return "any", "bulk"
    if parts == [".search"] and method == "POST":
        return "any", "search"
    resource = _RESOURCES.get(parts[0])
    if resource is None:
        return None
    if len(parts) == 1:
        operation = _ON_COLLECTION.get(method)
    elif parts[1] == ".search":
        operation = "search" if method == "POST" else None
    else:
        operation = _ON_RESOURCE.get(method)
    return None if operation is None else (resource, operation)


def scim_outcome(response: Response) -> str:
    """Return how a SCIM operation ended: ``success``, the error's ``scimType``, or the HTTP status."""
    status = response.status_code
    if status < 400:
        return "success"
    try:
        scim_type = orjson.loads(response.body).get("scimType")
    except (orjson.JSONDecodeError, AttributeError):
        scim_type = None
    return scim_type if isinstance(scim_type, str) and scim_type.isalpha() else str(status)


class ScimRoute(SurfaceRoute):
    """A route of the SCIM surface; its operations are counted by resource, operation and outcome."""

    surface = SURFACE
    render_error = staticmethod(render_scim_error)

    def get_route_handler(self) -> Callable[[Request], Any]:
        """Wrap the boundary's handler so each request counts once, after its answer is decided."""
        bounded = super().get_route_handler()
        operation = scim_operation(self.path, self.methods or ())
        if operation is None:
            return bounded
        resource, name = operation

        async def counted(request: Request) -> Response:
            response: Response = await bounded(request)
            context_of(request).metrics.count_scim(resource, name, scim_outcome(response))
            return response

        return counted
