"""The OAuth/OIDC surface's boundary: every error of a protocol endpoint is an RFC 6749 §5.2 answer.

Protocol errors render as themselves; domain errors are translated (an unavailable dependency is
``temporarily_unavailable`` with ``Retry-After``, RFC 6749 §4.1.2.1 / §5.2 practice); framework
validation errors are ``invalid_request``; anything unexpected is ``server_error`` with nothing but
the request id to go on (the detail is in the log).
"""

from __future__ import annotations

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from idhub.errors import DomainError, NotFound, Unavailable
from idhub.oidc.errors import (
    InvalidClient,
    InvalidRequest,
    InvalidToken,
    MissingToken,
    OAuthError,
    ServerError,
    TemporarilyUnavailable,
)
from idhub.oidc.params import NO_STORE
from idhub.routing import SurfaceRoute, log_refusal, log_unexpected

SURFACE = "oidc"


def oauth_error_response(exc: OAuthError, *, retry_after: int | None = None) -> Response:
    """Render an OAuth error as RFC 6749 §5.2 JSON (RFC 6750 §3 for bearer-token errors)."""
    headers = dict(NO_STORE)
    if isinstance(exc, MissingToken):
        # RFC 6750 §3.1: a request without credentials gets the challenge and no error information.
        headers["www-authenticate"] = 'Bearer realm="idhub"'
        return Response(status_code=401, headers=headers)
    if isinstance(exc, InvalidClient):
        headers["www-authenticate"] = 'Basic realm="idhub"'
    elif isinstance(exc, InvalidToken) or (
        exc.status_code in (401, 403) and exc.error in ("invalid_token", "insufficient_scope")
    ):
        headers["www-authenticate"] = f'Bearer error="{exc.error}"'
    if retry_after is not None:
        headers["retry-after"] = str(retry_after)
    return JSONResponse(exc.to_dict(), status_code=exc.status_code, headers=headers)


def render_oauth_error(request: Request, exc: Exception) -> Response:
    """Render any exception raised behind an OAuth endpoint in the OAuth error format."""
    if isinstance(exc, OAuthError):
        log_refusal(exc, SURFACE)
        return oauth_error_response(exc)
    if isinstance(exc, Unavailable):
        return oauth_error_response(TemporarilyUnavailable(exc.detail or None), retry_after=exc.retry_after)
    if isinstance(exc, NotFound):
        return JSONResponse(
            InvalidRequest(exc.detail or "not found").to_dict(), status_code=404, headers=dict(NO_STORE)
        )
    if isinstance(exc, DomainError):
        return oauth_error_response(InvalidRequest(exc.detail or None))
    if isinstance(exc, RequestValidationError):
        return oauth_error_response(InvalidRequest("malformed request parameters"))
    if isinstance(exc, HTTPException):
        error = InvalidRequest(str(exc.detail))
        return JSONResponse(error.to_dict(), status_code=exc.status_code, headers={**NO_STORE, **(exc.headers or {})})
    log_unexpected(exc, SURFACE)
    return oauth_error_response(ServerError())


class OAuthRoute(SurfaceRoute):
    """A route of the OAuth/OIDC protocol surface."""

    surface = SURFACE
    render_error = staticmethod(render_oauth_error)
