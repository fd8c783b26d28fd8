"""Who is asking, per request: a request id and the caller's address, for logs and audit entries.

An outermost ASGI middleware sets both as context variables (one task serves one request, so they
follow the request through every await) and echoes the id in ``X-Request-ID``. A caller-supplied id is
kept when it is short and plain, so a load balancer's id ties its logs to ours; anything else is
replaced. A logging filter puts the id on every record.
"""

from __future__ import annotations

import logging
import re
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from idhub.crypto.secrets import random_token

REQUEST_ID_HEADER = b"x-request-id"
_VALID_ID = re.compile(r"[A-Za-z0-9._:-]{8,64}")


@dataclass(frozen=True, slots=True)
class RequestInfo:
    """The request id and the caller's address (the proxy-supplied one only from trusted proxies)."""

    request_id: str
    address: str | None


_current: ContextVar[RequestInfo | None] = ContextVar("idhub_request", default=None)


def current() -> RequestInfo | None:
    """Return the request being served by this task, if any (CLI commands have none)."""
    return _current.get()


def client_address(scope: Scope, trusted_proxies: frozenset[str]) -> str:
    """Return the caller's address; ``X-Forwarded-For`` is believed only from a trusted proxy."""
    client = scope.get("client")
    peer = str(client[0]) if client else "unknown"
    if trusted_proxies and peer in trusted_proxies:
        for name, value in scope["headers"]:
            if name == b"x-forwarded-for":
                forwarded = value.decode("latin-1").split(",")[-1].strip()
                return forwarded or peer
    return peer


class RequestContextMiddleware:
    """Give every HTTP request an id and an address, and echo the id in the response."""

    def __init__(self, app: ASGIApp, trusted_proxies: list[str] | None = None) -> None:
        self.app = app
        self.trusted_proxies = frozenset(trusted_proxies or ())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = None
        for name, value in scope["headers"]:
            if name == REQUEST_ID_HEADER:
                candidate = value.decode("latin-1")
                if _VALID_ID.fullmatch(candidate):
                    request_id = candidate
                break
        if request_id is None:
            request_id = random_token(12)
        info = RequestInfo(request_id, client_address(scope, self.trusted_proxies))
        scope["idhub.request"] = info
        token = _current.set(info)
        encoded = request_id.encode("ascii")

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), (REQUEST_ID_HEADER, encoded)]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            _current.reset(token)


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
