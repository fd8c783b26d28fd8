"""The pages' boundary: every error behind a page is an HTML error page, never JSON and never a redirect.

An interaction that cannot go on says why in words the person can act on; a domain error shows its
caller-safe detail; an unavailable dependency asks to try again later (503 with ``Retry-After``);
anything unexpected shows a generic page while the detail goes to the log with the request id.
"""

from __future__ import annotations

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException

from idhub.errors import Conflict, DomainError, NotFound, Unavailable
from idhub.oidc.interaction import InteractionError
from idhub.routing import SurfaceRoute, log_unexpected
from idhub.web.forms import FormTooLarge
from idhub.web.render import error_page

SURFACE = "web"
TOO_LARGE = "The form you sent is too large. Go back and try again with less text."
UNEXPECTED = "Something went wrong on our side. Please try again; if it keeps happening, contact your administrator."


def render_page_error(request: Request, exc: Exception) -> Response:
    """Render any exception raised behind a page as the HTML error page."""
    if isinstance(exc, InteractionError):
        return error_page(exc.message, tenant=None, status=exc.status)
    if isinstance(exc, FormTooLarge):
        return error_page(TOO_LARGE, tenant=None, status=413)  # RFC 9110 §15.5.14
    if isinstance(exc, Unavailable):
        response = error_page("The service is busy or down for a moment. Please try again shortly.", tenant=None,
                              status=503)  # fmt: skip
        response.headers["retry-after"] = str(exc.retry_after)
        return response
    if isinstance(exc, NotFound):
        return error_page("This page does not exist.", tenant=None, status=404)
    if isinstance(exc, DomainError):
        status = 409 if isinstance(exc, Conflict) else 400
        return error_page(exc.detail or "The request cannot be completed.", tenant=None, status=status)
    if isinstance(exc, RequestValidationError):
        return error_page("The request is malformed.", tenant=None)
    if isinstance(exc, HTTPException):
        return error_page(str(exc.detail), tenant=None, status=exc.status_code)
    log_unexpected(exc, SURFACE)
    return error_page(UNEXPECTED, tenant=None, status=500)


class PageRoute(SurfaceRoute):
    """A route of the pages (login, consent, logout, the browser side of authorization)."""

    surface = SURFACE
    render_error = staticmethod(render_page_error)
