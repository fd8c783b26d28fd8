"""The SCIM surface's boundary: every error under ``{issuer}/scim/v2`` is a SCIM error body (RFC 7644 §3.12).

SCIM errors render as themselves; directory errors are translated (:func:`~idhub.scim.errors.from_domain`:
a taken userName is 409 ``uniqueness``, a stale ``If-Match`` 412, an unavailable database 503 with
``Retry-After``); framework errors keep their status; anything unexpected is a bare SCIM 500 whose
detail stays in the log under the request id.
"""

from __future__ import annotations

import orjson
from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException

from idhub.errors import DomainError
from idhub.routing import SurfaceRoute, log_unexpected
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


class ScimRoute(SurfaceRoute):
    """A route of the SCIM surface."""

    surface = SURFACE
    render_error = staticmethod(render_scim_error)
