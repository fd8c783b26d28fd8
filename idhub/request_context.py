"""Who is asking, per request: a request id and the caller's address, for logs and audit entries.

The HTTP boundary (:class:`idhub.routing.RequestContextMiddleware`) sets both as a context variable (one
task serves one request, so it follows the request through every await); services read it here without
knowing HTTP. A log record factory puts the id on every record.
"""

from __future__ import annotations

import logging
from contextvars import ContextVar, Token
from typing import Any, NamedTuple


class RequestInfo(NamedTuple):
    """The request id and the caller's address (the proxy-supplied one only from trusted proxies).

    A named tuple rather than a frozen dataclass: one is built per request, and a tuple is cheaper to make.
    """

    request_id: str
    address: str | None


_current: ContextVar[RequestInfo | None] = ContextVar("idhub_request", default=None)


def enter(info: RequestInfo) -> Token[RequestInfo | None]:
    """Make ``info`` the request this task serves; pass the token to :func:`leave` when it is done."""
    return _current.set(info)


def leave(token: Token[RequestInfo | None]) -> None:
    """Restore what :func:`enter` replaced."""
    _current.reset(token)


def current() -> RequestInfo | None:
    """Return the request being served by this task, if any (CLI commands have none)."""
    return _current.get()


def install_log_record_factory() -> None:
    """Give every log record a ``request_id`` attribute ("-" outside a request); idempotent.

    A record factory rather than a filter: filters of a logger do not apply to its children, and idhub
    does not own the handlers (uvicorn's or the operator's logging configuration does).
    """
    previous = logging.getLogRecordFactory()
    if getattr(previous, "idhub_request_id", False):
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        info = _current.get()
        record.request_id = info.request_id if info is not None else "-"
        return record

    factory.idhub_request_id = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)
