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

import asyncio
import ipaddress
import logging
import random
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from fastapi import Request, Response
from fastapi.routing import APIRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from idhub import request_context
from idhub.context import AppContext
from idhub.errors import DomainError
from idhub.metrics import METHODS, NOSNIFF, Metrics, route_template
from idhub.request_context import RequestInfo
from idhub.storage.faults import translate as translate_fault
from idhub.storage.retry import DEFAULT_POLICY, exhausted, is_conflict, sqlstate_of
from idhub.storage.uow import UnitOfWork

log = logging.getLogger("idhub.errors")
access_log = logging.getLogger("idhub.access")

UOW_KEY = "idhub.uow"
REQUEST_ID_HEADER = b"x-request-id"
_VALID_ID = re.compile(r"[A-Za-z0-9._:-]{8,64}")
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


async def run_in_boundary(
    scope: Scope, receive: Receive, handler: Handler, *, surface: str, render: Renderer
) -> Response:
    """Run ``handler`` in a fresh unit of work; commit on success, roll back and render on error.

    A transaction the database aborted as a deadlock or serialization failure is run again, handler and
    commit, in a new unit of work (:mod:`idhub.storage.retry`); nothing has been sent before the commit,
    and the request body is replayed to the new attempt. When every attempt collides the answer is a 503.
    """
    policy = DEFAULT_POLICY
    body = _BodyRecorder(receive)
    request = Request(scope, body.receive)
    attempt = 1
    while True:
        response, error = await _attempt(request, handler, surface)
        if error is None or not policy.should_retry(error, attempt):
            break
        log.info("%s: transaction aborted as a conflict (SQLSTATE %s); retrying", surface, sqlstate_of(error))
        await asyncio.sleep(policy.delay(attempt))
        attempt += 1
        request = Request(scope, body.replay())
    if error is not None:
        if is_conflict(error):
            error = exhausted(error, attempt)
        error = translate_fault(error)  # a database that is down or too slow is a 503, never a 500
        if isinstance(error, DomainError):
            log_refusal(error, surface)
        return render(request, error)
    assert response is not None
    return response


async def _attempt(request: Request, handler: Handler, surface: str) -> tuple[Response | None, Exception | None]:
    """Run ``handler`` once in its own unit of work; return its response or the error that ended it."""
    uow = context_of(request).uow_factory(surface=surface)
    request.scope[UOW_KEY] = uow
    error: Exception | None = None
    response: Response | None = None
    try:
        response = await handler(request)
    except Exception as exc:
        error = exc
        if is_conflict(exc):
            uow.events.clear()  # a void attempt: it is run again, and what it refused is not owed to the audit log
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
    return response, error


class _BodyRecorder:
    """Record the request body's ASGI messages as the first attempt reads them, to replay them to a retry."""

    __slots__ = ("_messages", "_receive")

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self._messages: list[Message] = []

    async def receive(self) -> Message:
        """The first attempt's ``receive``: the connection's messages, recorded."""
        message = await self._receive()
        if message["type"] == "http.request":
            self._messages.append(message)
        return message

    def replay(self) -> Receive:
        """Return a ``receive`` for a retry: the messages read so far, then the connection's own."""
        position = 0

        async def replay() -> Message:
            nonlocal position
            if position == len(self._messages):
                return await self.receive()
            position += 1
            return self._messages[position - 1]

        return replay


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
            return await run_in_boundary(request.scope, request.receive, handler, surface=surface, render=render)

        return bounded


# --- the front door: request id and caller address, and the hot back-channel routes -----------------
class TrustedProxies:
    """The proxies whose forwarding headers idhub believes: addresses or networks (``10.0.0.0/8``, ``fd00::/8``).

    Proxies in containers and Kubernetes get addresses from a range, so networks are allowed. A peer's
    answer is remembered (bounded), so the check costs one dictionary look-up per request.
    """

    __slots__ = ("_known", "_networks")

    LIMIT = 4096

    def __init__(self, entries: list[str] | None = None) -> None:
        self._networks = tuple(ipaddress.ip_network(entry.strip(), strict=False) for entry in entries or ())
        self._known: dict[str, bool] = {}

    def __bool__(self) -> bool:
        return bool(self._networks)

    def __contains__(self, peer: object) -> bool:
        if not self._networks or not isinstance(peer, str):
            return False
        known = self._known.get(peer)
        if known is None:
            try:
                address = ipaddress.ip_address(peer)
            except ValueError:
                known = False
            else:
                known = any(address in network for network in self._networks)
            if len(self._known) >= self.LIMIT:
                self._known.clear()
            self._known[peer] = known
        return known


def client_address(scope: Scope, trusted_proxies: TrustedProxies | frozenset[str]) -> str:
    """Return the caller's address; ``X-Forwarded-For`` is believed only from a trusted proxy."""
    client = scope.get("client")
    peer = str(client[0]) if client else "unknown"
    if trusted_proxies and peer in trusted_proxies:
        for name, value in scope["headers"]:
            if name == b"x-forwarded-for":
                forwarded = value.decode("latin-1").split(",")[-1].strip()
                return forwarded or peer
    return peer


def new_request_id() -> str:
    """Return a fresh request id: 16 hexadecimal digits (64 random bits).

    A correlation id, not a secret (it is echoed to the caller): the non-cryptographic generator is
    enough and costs no system call per request. CPython reseeds it in each forked worker.
    """
    return _random_bits(64).to_bytes(8, "big").hex()


_random_bits = random.getrandbits
# What the management port answers (IDHUB_MANAGEMENT_PORT); the public port then no longer serves /metrics.
MANAGEMENT_PATHS = frozenset({"/metrics", "/healthz", "/readyz"})
FastHandler = Callable[[str, Request], Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class FastRoute:
    """A hot ``POST /tenants/{tenant}/<endpoint>`` served by :class:`FrontDoor` without the framework."""

    handler: FastHandler  # called with the tenant slug and the request
    surface: str
    render: Renderer
    label: str  # the documented route's path, for metrics


class _MatchedRoute:
    """Stands in for the matched route in ``scope["route"]`` (what metrics and logs read)."""

    __slots__ = ("path",)

    def __init__(self, path: str) -> None:
        self.path = path


class FrontDoor:
    """The outermost ASGI layer: every HTTP request gets its id and caller address here, first.

    The id comes from a well-formed ``X-Request-ID`` sent by a trusted proxy (one the operator named in
    ``IDHUB_TRUSTED_PROXIES``: anyone else could plant ids in the logs) or is made here; it is set as the request's
    context (:mod:`idhub.request_context`) and echoed on the answer. With a management port
    (``IDHUB_MANAGEMENT_PORT``), requests are told apart by the port they came in on
    (``scope["server"]``): that port answers only ``/metrics``, ``/healthz`` and ``/readyz``, and the
    public port everything but ``/metrics``; the rest is a 404. Then the hot back-channel POSTs
    (``{issuer}/token``, ``{issuer}/introspect``: thousands a second) go straight to their endpoint
    functions in the same boundary their documented routes use (:func:`run_in_boundary`: one unit of
    work, the surface's own errors), skipping the framework's middleware, router and dependency
    machinery, which cost more than the endpoints themselves. Everything else goes to ``app``.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        owner: Any,
        metrics: Metrics,
        trusted_proxies: list[str] | None = None,
        fast_routes: dict[str, FastRoute] | None = None,
        access_log: bool = False,
        management_port: int | None = None,
    ) -> None:
        self.app = app
        self.management_port = management_port
        self.owner = owner  # the application object routes find in ``scope["app"]``
        self.metrics = metrics
        self.trusted_proxies = TrustedProxies(trusted_proxies)
        self.access_log = access_log
        self.fast_routes = {name: (route, _MatchedRoute(route.label)) for name, route in (fast_routes or {}).items()}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = None
        client = scope.get("client")
        if client and self.trusted_proxies and client[0] in self.trusted_proxies:
            for name, value in scope["headers"]:
                if name == REQUEST_ID_HEADER:
                    candidate = value.decode("latin-1")
                    if _VALID_ID.fullmatch(candidate):
                        request_id = candidate
                    break
        if request_id is None:
            request_id = new_request_id()
        info = RequestInfo(request_id, client_address(scope, self.trusted_proxies))
        scope["idhub.request"] = info
        token = request_context.enter(info)
        try:
            if self.management_port is not None and not self._on_its_port(scope):
                await self._not_found(scope, send, request_id)
                return
            if self.access_log:
                await self._serve_logged(scope, receive, send, request_id)
            else:
                await self._serve(scope, receive, send, request_id)
        finally:
            request_context.leave(token)

    async def _serve(self, scope: Scope, receive: Receive, send: Send, request_id: str) -> None:
        fast = self._fast_route(scope)
        if fast is not None:
            await self._serve_fast(scope, receive, send, fast, request_id)
            return
        encoded = request_id.encode("ascii")

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), (REQUEST_ID_HEADER, encoded)]
            await send(message)

        await self.app(scope, receive, send_with_id)

    async def _serve_logged(self, scope: Scope, receive: Receive, send: Send, request_id: str) -> None:
        """Serve, then write the access-log line (``IDHUB_ACCESS_LOG``): no query string, it carries codes."""
        start = time.perf_counter()
        status = 500

        async def send_seen(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self._serve(scope, receive, send_seen, request_id)
        finally:
            route = route_template(scope)
            millis = round((time.perf_counter() - start) * 1000, 2)
            access_log.info(
                "%s %s %s %sms",
                scope["method"],
                scope["path"],
                status,
                millis,
                extra={
                    "method": scope["method"],
                    "path": scope["path"],
                    "route": route,
                    "status": status,
                    "duration_ms": millis,
                    "client": scope["idhub.request"].address,
                },
            )

    def _on_its_port(self, scope: Scope) -> bool:
        """Tell whether the request's path is served on the port it came in on (management or public)."""
        server = scope.get("server")
        path: str = scope["path"]
        if server is not None and server[1] == self.management_port:
            return path in MANAGEMENT_PATHS
        return path != "/metrics"

    async def _not_found(self, scope: Scope, send: Send, request_id: str) -> None:
        """Answer 404 for a path not served on this port, as the app answers a path it does not know."""
        start = time.perf_counter()
        body = b'{"detail":"Not Found"}'
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode("ascii")),
            NOSNIFF,
            (REQUEST_ID_HEADER, request_id.encode("ascii")),
        ]
        await send({"type": "http.response.start", "status": 404, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        method = scope["method"]
        self.metrics.observe("unmatched", method if method in METHODS else "other", 404, time.perf_counter() - start)

    def _fast_route(self, scope: Scope) -> tuple[str, FastRoute, _MatchedRoute] | None:
        if scope["method"] != "POST" or not self.fast_routes:
            return None
        path: str = scope["path"]
        if not path.startswith("/tenants/"):
            return None
        slug, sep, endpoint = path[9:].partition("/")
        entry = self.fast_routes.get(endpoint) if sep and slug else None
        return None if entry is None else (slug, *entry)

    async def _serve_fast(
        self, scope: Scope, receive: Receive, send: Send, fast: tuple[str, FastRoute, _MatchedRoute], request_id: str
    ) -> None:
        slug, route, matched = fast
        scope["app"] = self.owner
        scope["route"] = matched
        start = time.perf_counter()
        handler = route.handler

        async def call(request: Request) -> Response:
            return await handler(slug, request)

        response = await run_in_boundary(scope, receive, call, surface=route.surface, render=route.render)
        # The framework's middleware is skipped, so the answer carries what it would have added.
        headers = response.raw_headers
        if NOSNIFF not in headers:
            headers.append(NOSNIFF)
        headers.append((REQUEST_ID_HEADER, request_id.encode("ascii")))
        await response(scope, receive, send)
        self.metrics.observe(matched.path, "POST", response.status_code, time.perf_counter() - start)


# --- entity tags: one version number per object, shared by SCIM and the admin API -------------------
def etag(version: int) -> str:
    """Return the weak entity tag of a resource version (RFC 7644 §3.14, RFC 7232 §2.3)."""
    return f'W/"{version}"'


def parse_etag(header: str) -> set[int] | None:
    """Return the versions an ``If-Match``/``If-None-Match`` header names, ``None`` for ``*``.

    Unparseable tags name no version (they can never match), so a garbled header fails safe.
    """
    if header.strip() == "*":
        return None
    versions: set[int] = set()
    for raw in header.split(","):
        tag = raw.strip()
        if tag.startswith("W/"):
            tag = tag[2:]
        if len(tag) >= 2 and tag[0] == '"' and tag[-1] == '"' and tag[1:-1].isdigit() and len(tag) < 20:
            versions.add(int(tag[1:-1]))
    return versions
