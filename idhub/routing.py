"""The boundary of every HTTP surface: one unit of work per request, and errors in the surface's own format.

Each surface (OAuth/OIDC endpoints, SCIM, the pages) declares a route class whose handler runs inside
:func:`run_in_boundary`: the request gets a unit of work, which commits when the handler returns and
rolls back when it raises; then the surface's renderer turns the error, whatever it is (a protocol
error, a :class:`~idhub.errors.DomainError`, a framework validation error, an unexpected exception),
into the answer that surface speaks. No handler looks at the URL to decide the format: the route a
request matched decides. Unexpected exceptions are logged with the request id; callers only learn
that something went wrong.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

from fastapi import Request, Response
from fastapi.routing import APIRoute

from idhub.context import AppContext
from idhub.errors import DomainError
from idhub.storage.uow import UnitOfWork

log = logging.getLogger("idhub.errors")

UOW_KEY = "idhub.uow"
Renderer = Callable[[Request, Exception], Response]
Handler = Callable[[Request], Awaitable[Response]]


def context_of(request: Request) -> AppContext:
    """Return the app's shared services."""
    ctx: AppContext = request.app.state.ctx
    return ctx


def uow_of(request: Request) -> UnitOfWork:
    """Return the request's unit of work (opened by the boundary)."""
    uow: UnitOfWork = request.scope[UOW_KEY]
    return uow


def log_refusal(exc: Exception, surface: str) -> None:
    """Log what a refusal's caller was not told (``internal``), with the request id via the log filter."""
    internal = getattr(exc, "internal", None)
    if internal:
        log.info("%s refused (%s): %s", surface, type(exc).__name__, internal)


def log_unexpected(exc: BaseException, surface: str) -> None:
    """Log an error nobody raised on purpose; it is a bug, and the caller gets a bare 500."""
    log.error("unhandled error on the %s surface", surface, exc_info=exc)


async def run_in_boundary(request: Request, handler: Handler, *, surface: str, render: Renderer) -> Response:
    """Run ``handler`` in a fresh unit of work; commit on success, roll back and render on error."""
    uow = context_of(request).uow(surface=surface)
    request.scope[UOW_KEY] = uow
    error: Exception | None = None
    try:
        response = await handler(request)
    except Exception as exc:
        error = exc
    except BaseException:  # cancelled: nobody is waiting for an answer
        await uow.close()
        raise
    try:
        await uow.finish(error)
    except Exception as exc:
        if error is None:
            error = exc  # the commit failed: the change did not happen, and the caller must know
        else:
            log.exception("rollback after an error failed")
    if error is not None:
        if isinstance(error, DomainError):
            log_refusal(error, surface)
        return render(request, error)
    return response


class SurfaceRoute(APIRoute):
    """A route of one surface: its handler runs in :func:`run_in_boundary` with that surface's renderer."""

    surface: ClassVar[str] = ""

    @staticmethod
    def render_error(request: Request, exc: Exception) -> Response:
        """Render ``exc`` as this surface's error answer."""
        raise NotImplementedError

    def get_route_handler(self) -> Callable[[Request], Any]:
        """Wrap FastAPI's handler (dependencies, validation, the endpoint) in the boundary."""
        handler = super().get_route_handler()
        surface, render = self.surface, type(self).render_error

        async def bounded(request: Request) -> Response:
            return await run_in_boundary(request, handler, surface=surface, render=render)

        return bounded
