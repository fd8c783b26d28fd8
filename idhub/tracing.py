"""OpenTelemetry tracing, opt-in through the standard ``OTEL_*`` variables; nothing of it is loaded otherwise.

When tracing is on, every HTTP request gets one server span named by its route template
(``POST /tenants/{tenant}/token``), SQL statements get client spans under it (SQLAlchemy, the async
engine's ``sync_engine``), and outgoing HTTP calls get client spans carrying W3C ``traceparent``: the
broker's upstream calls (discovery, JWKS, token, UserInfo, SAML metadata) through
:class:`~idhub.broker.fetch.GuardedTransport`, and every ``httpx`` client (the audit stream). An incoming
``traceparent`` is continued. Log records get ``trace_id`` and ``span_id`` attributes.

**What switches it on** (:func:`requested`): ``OTEL_TRACES_EXPORTER`` naming an exporter other than
``none`` (``otlp``, ``console``, or any installed ``opentelemetry_traces_exporter`` entry point), or,
with ``OTEL_TRACES_EXPORTER`` unset, an OTLP endpoint (``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` or
``OTEL_EXPORTER_OTLP_ENDPOINT``). ``OTEL_SDK_DISABLED=true`` wins over both, and ``OTEL_TRACES_EXPORTER=none``
wins over an endpoint. ``OTEL_SERVICE_NAME`` alone does not switch it on: platforms often set it for every
container. Everything else is the SDK's own reading of the standard variables: the sampler
(``OTEL_TRACES_SAMPLER``, ``OTEL_TRACES_SAMPLER_ARG``; default ``parentbased_always_on``), the resource
(``OTEL_SERVICE_NAME``, default ``idhub``; ``OTEL_RESOURCE_ATTRIBUTES``), the OTLP exporter's endpoint,
headers, timeout and protocol, the batch processor (``OTEL_BSP_*``), the propagators (``OTEL_PROPAGATORS``).

**Off is free:** with tracing off :func:`install` returns at once; no OpenTelemetry module is imported
by idhub, no middleware wraps the app and no record factory runs (FastAPI may import the OpenTelemetry
*API* itself; its own telemetry is switched off by :func:`idhub.app.framework_options`).

**No secrets in spans:** query strings are recorded with their values replaced (``code=REDACTED``), so an
authorization code or ``state`` in a callback URL never reaches a span; request and response bodies are
never recorded (client secrets, passwords, assertions travel in forms); captured headers (opt-in through
``OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_*``) always have ``authorization``, ``cookie``,
``set-cookie`` and ``dpop`` redacted; SQL spans carry the statement text, never its parameters.

The server span wraps idhub's front door (:class:`~idhub.routing.FrontDoor`), not FastAPI: the hottest
back-channel endpoints are served there without the framework's router, and FastAPI's instrumentation
would not see them. One ASGI middleware outside the front door gives every request exactly one server
span; it is named when the request is done, from ``scope["route"]`` (set by the router, or by the front
door for the routes it serves itself), so a tenant's slug never ends up in a span name.
"""

from __future__ import annotations

import asyncio
import logging
import os
import weakref
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from contextlib import asynccontextmanager
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

import httpx
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from idhub import __version__
from idhub.broker.fetch import GuardedTransport
from idhub.metrics import route_template

if TYPE_CHECKING:
    from fastapi import FastAPI
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span
    from sqlalchemy.ext.asyncio import AsyncEngine

log = logging.getLogger(__name__)

EXTRA = "pip install 'idhub[otel]'"
REDACTED = "REDACTED"
# Attributes that hold a URL or its query (old and new HTTP semantic conventions).
_URL_ATTRIBUTES = ("http.url", "url.full", "http.target")
_QUERY_ATTRIBUTES = ("url.query",)
# Headers never recorded even when an operator asks for them (regexes, matched case-insensitively).
_SECRET_HEADERS = ("authorization", "proxy-authorization", "cookie", "set-cookie", "dpop", "x-api-key")
# Probes and scrapes: a span every few seconds per replica, saying nothing. OTEL_PYTHON_ASGI_EXCLUDED_URLS
# or OTEL_PYTHON_EXCLUDED_URLS replaces this list.
_PROBES = r"^[a-z]+://[^/]+/(healthz|readyz|metrics)$"
_TRACED_TRANSPORT = "_idhub_traced"
_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT", "QUERY"))


def requested(environ: Mapping[str, str]) -> list[str]:
    """Return the span exporters the ``OTEL_*`` variables ask for; empty when tracing is off.

    OpenTelemetry SDK specification, "General SDK Configuration": ``OTEL_SDK_DISABLED=true`` disables
    the SDK whatever else is set, and ``OTEL_TRACES_EXPORTER=none`` means no exporter.
    """
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    named = [name.strip().lower() for name in environ.get("OTEL_TRACES_EXPORTER", "").split(",") if name.strip()]
    if named:
        return [] if "none" in named else list(dict.fromkeys(named))
    endpoints = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
    return ["otlp"] if any(environ.get(name, "").strip() for name in endpoints) else []


def scrub_url(url: str) -> str:
    """Return ``url`` with the value of every query parameter replaced (``?code=REDACTED&state=REDACTED``)."""
    base, sep, query = url.partition("?")
    return f"{base}?{scrub_query(query)}" if sep else url


def scrub_query(query: str) -> str:
    """Return a query string with every value replaced; the parameter names stay (they help debugging)."""
    parts = (part.partition("=") for part in query.split("&") if part)
    return "&".join(f"{name}={REDACTED}" if sep else name for name, sep, _ in parts)


def scrub_span(span: Span) -> None:
    """Replace query values and secret headers in the attributes a span was started with."""
    attributes = getattr(span, "attributes", None)  # the SDK's spans expose them; non-recording ones do not
    if not attributes or not span.is_recording():
        return
    for key, value in list(attributes.items()):
        if not isinstance(value, str):
            if key.startswith(("http.request.header.", "http.response.header.")) and _secret_header(key):
                span.set_attribute(key, [f"[{REDACTED}]"])
            continue
        if key in _URL_ATTRIBUTES and "?" in value:
            span.set_attribute(key, scrub_url(value))
        elif key in _QUERY_ATTRIBUTES:
            span.set_attribute(key, scrub_query(value))


def _secret_header(attribute: str) -> bool:
    name = attribute.rsplit(".", 1)[-1].replace("_", "-")
    return name in _SECRET_HEADERS


class _NameByRoute:
    """Name the request's server span by the route template it matched, as the answer starts.

    OpenTelemetry HTTP semantic conventions: a server span is named ``{method} {http.route}``, or just
    ``{method}`` when no route matched (never the raw path: it holds tenant slugs and identifiers). The
    route is known once the router (or the front door) has matched it, before the answer starts; the
    middleware outside ends the span with the answer's last byte, so the name is set at the start.
    """

    __slots__ = ("app", "current_span")

    def __init__(self, app: ASGIApp, current_span: Callable[[], Span]) -> None:
        self.app = app
        self.current_span = current_span

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        span = self.current_span()  # the server span: the middleware outside made it current
        if not span.is_recording():  # sampled out, or an excluded URL
            await self.app(scope, receive, send)
            return

        async def send_naming(message: Message) -> None:
            if message["type"] == "http.response.start":
                _name(span, scope)
            await send(message)

        await self.app(scope, receive, send_naming)


def _name(span: Span, scope: Scope) -> None:
    """Name ``span`` after the route ``scope`` matched; add the template and the tenant as attributes."""
    template = route_template(scope)
    if template == "unmatched":
        return
    span.update_name(f"{_method(scope)} {template}")
    span.set_attribute("http.route", template)
    tenant = _tenant_of(scope, template)
    if tenant:
        span.set_attribute("idhub.tenant", tenant)


def _tenant_of(scope: Scope, template: str) -> str | None:
    """Return the tenant slug of a request whose route has a ``{tenant}`` parameter."""
    if "{tenant}" not in template:
        return None
    tenant = (scope.get("path_params") or {}).get("tenant")
    if tenant is None and template.startswith("/tenants/{tenant}/"):  # a route the front door serves itself
        tenant = str(scope["path"])[9:].partition("/")[0]
    return str(tenant)[:128] if tenant else None


def _load_exporter(name: str, environ: Mapping[str, str]) -> SpanExporter | None:
    """Return the span exporter ``OTEL_TRACES_EXPORTER`` names, or ``None`` (with a warning) when there is none."""
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    if name == "otlp":  # the SDK's naming: otlp means the protocol OTEL_EXPORTER_OTLP_*PROTOCOL names
        protocol = environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        name = "otlp_proto_grpc" if (protocol or "").strip() == "grpc" else "otlp_proto_http"
    found = entry_points(group="opentelemetry_traces_exporter", name=name)
    if not found:
        log.warning("OTEL_TRACES_EXPORTER names %r, which is not installed; spans are not exported there", name)
        return None
    try:
        exporter: SpanExporter = next(iter(found)).load()()
    except Exception as exc:  # a broken exporter package: no export there, never a failed start
        log.warning("the %r span exporter could not be loaded (%s); spans are not exported there", name, exc)
        return None
    return exporter


class Tracing:
    """One app's tracing: its tracer provider, the instrumentations it switched on, and how to undo them."""

    def __init__(self, provider: TracerProvider) -> None:
        self.provider = provider
        self._instrumented: list[Callable[[], None]] = []

    def wrap(self, app: ASGIApp) -> ASGIApp:
        """Return ``app`` inside the server-span middleware (W3C ``traceparent`` continued)."""
        from opentelemetry import trace
        from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
        from opentelemetry.util.http import (
            OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SANITIZE_FIELDS,
            ExcludeList,
            get_custom_headers,
            get_excluded_urls,
        )

        excluded = get_excluded_urls("ASGI")
        if not os.environ.get("OTEL_PYTHON_ASGI_EXCLUDED_URLS") and not os.environ.get("OTEL_PYTHON_EXCLUDED_URLS"):
            excluded = ExcludeList([_PROBES])
        sanitized = [*get_custom_headers(OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SANITIZE_FIELDS), *_SECRET_HEADERS]
        middleware: ASGIApp = OpenTelemetryMiddleware(
            _NameByRoute(app, trace.get_current_span),
            excluded_urls=excluded,
            default_span_details=_method_only,
            server_request_hook=_server_request_hook,
            tracer_provider=self.provider,
            http_capture_headers_sanitize_fields=sanitized,
            exclude_spans=["receive", "send"],  # one span per request, not one per ASGI message
        )
        return middleware

    def start(self, engine: AsyncEngine) -> None:
        """Instrument SQLAlchemy (``engine``), httpx clients and the broker's guarded transport."""
        from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
        from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

        # The instrumentation declares SQLAlchemy < 2.1; what it hooks (engine events) is unchanged in
        # 2.1, and the tests check its spans, so the version check is skipped.
        sqlalchemy = SQLAlchemyInstrumentor()
        if not sqlalchemy.is_instrumented_by_opentelemetry:
            sqlalchemy.instrument(engine=engine.sync_engine, tracer_provider=self.provider, skip_dep_check=True)
            self._instrumented.append(sqlalchemy.uninstrument)
        httpx_clients = HTTPXClientInstrumentor()
        if not httpx_clients.is_instrumented_by_opentelemetry:
            httpx_clients.instrument(
                tracer_provider=self.provider, request_hook=_client_hook, async_request_hook=_async_client_hook
            )
            self._instrumented.append(httpx_clients.uninstrument)
        self._instrumented.append(_trace_guarded_transport(self.provider))

    def shutdown(self) -> None:
        """Undo the instrumentations and flush the spans still queued (the app is stopping)."""
        while self._instrumented:
            self._instrumented.pop()()
        self.provider.shutdown()


def _method_only(scope: Scope) -> tuple[str, dict[str, Any]]:
    """Name a server span by its method until the route is known (:class:`_NameByRoute`)."""
    return _method(scope), {}


def _method(scope: Scope) -> str:
    """Return the request's method, or ``HTTP`` for one HTTP does not define (names stay a closed set)."""
    method = str(scope.get("method", ""))
    return method if method in _METHODS else "HTTP"


def _server_request_hook(span: Span, scope: Scope) -> None:
    scrub_span(span)


def _client_hook(span: Span, request: Any) -> None:
    scrub_span(span)


async def _async_client_hook(span: Span, request: Any) -> None:
    scrub_span(span)


class _Untraced(httpx.AsyncBaseTransport):
    """One guarded transport's original, untraced method, as a transport for the tracing one to wrap."""

    def __init__(self, transport: GuardedTransport, handle: _Handle) -> None:
        self._transport = weakref.proxy(transport)  # the transport keeps its tracer, not the reverse
        self._handle = handle

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` as the guarded transport does without tracing."""
        return await self._handle(self._transport, request)


_Handle = Callable[[GuardedTransport, httpx.Request], Coroutine[Any, Any, httpx.Response]]


def _trace_guarded_transport(provider: TracerProvider) -> Callable[[], None]:
    """Give the broker's guarded transport client spans; return the function that takes them away again.

    :class:`~idhub.broker.fetch.GuardedTransport` is an ``httpx`` transport of its own (the SSRF check
    lives in it), so the httpx instrumentation, which hooks httpx's own transport, does not see it. Each
    instance gets the instrumentation's tracing transport around its original method, made on first use.
    """
    from opentelemetry.instrumentation.httpx import AsyncOpenTelemetryTransport

    original: _Handle = GuardedTransport.handle_async_request

    async def traced(self: GuardedTransport, request: httpx.Request) -> httpx.Response:
        cached = self.__dict__.get(_TRACED_TRANSPORT)
        if cached is None or cached[0] is not provider:
            tracer = AsyncOpenTelemetryTransport(
                _Untraced(self, original), tracer_provider=provider, request_hook=_async_client_hook
            )
            cached = self.__dict__[_TRACED_TRANSPORT] = (provider, tracer)
        response: httpx.Response = await cached[1].handle_async_request(request)
        return response

    GuardedTransport.handle_async_request = traced  # type: ignore[method-assign]

    def untrace() -> None:
        GuardedTransport.handle_async_request = original  # type: ignore[method-assign,assignment]

    return untrace


def _provider(exporters: list[SpanExporter], *, synchronous: bool) -> TracerProvider:
    """Build a tracer provider: the resource and sampler from the environment, one processor per exporter."""
    from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    detected = Resource.create()  # OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES
    attributes = {SERVICE_VERSION: __version__, **detected.attributes}
    if str(attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):  # the SDK's "none given"
        attributes[SERVICE_NAME] = "idhub"
    resource = Resource(attributes, detected.schema_url)
    provider = TracerProvider(resource=resource)  # sampler: OTEL_TRACES_SAMPLER, OTEL_TRACES_SAMPLER_ARG
    for exporter in exporters:
        provider.add_span_processor(SimpleSpanProcessor(exporter) if synchronous else BatchSpanProcessor(exporter))
    return provider


def from_environment(*, exporter: SpanExporter | None = None) -> Tracing | None:
    """Return the tracing the ``OTEL_*`` variables ask for, or ``None`` when it is off or cannot be had.

    ``exporter`` (tests only) switches tracing on whatever the environment says and receives every span
    as soon as it ends. Tracing asked for without the ``otel`` extra installed is one warning line and
    no tracing, never a failed start.
    """
    names = requested(os.environ)
    if not names and exporter is None:
        return None
    try:
        import opentelemetry.instrumentation.asgi
        import opentelemetry.instrumentation.httpx
        import opentelemetry.instrumentation.sqlalchemy
        import opentelemetry.sdk.trace  # noqa: F401
    except ImportError as exc:
        log.warning(
            "tracing is asked for (OTEL_* variables) but %s is not installed: %s; serving without tracing",
            exc.name or "OpenTelemetry",
            EXTRA,
        )
        return None
    exporters = [found for found in (_load_exporter(name, os.environ) for name in names) if found is not None]
    if exporter is not None:
        exporters.append(exporter)
    if not exporters:
        return None
    return Tracing(_provider(exporters, synchronous=exporter is not None))


def install(app: FastAPI, *, exporter: SpanExporter | None = None) -> Tracing | None:
    """Trace ``app`` when the ``OTEL_*`` variables ask for it (see the module's docstring); else do nothing.

    Wraps the app's outermost layer (``app.front_door``, :class:`~idhub.routing.FrontDoor`) in the
    server-span middleware, and its lifespan so that SQLAlchemy and httpx are instrumented once the engine
    exists (``app.state.ctx.engine``), and everything is undone and the last spans flushed when the app
    stops. Each worker process builds its own app, so each has its own provider and exporter.
    """
    tracing = from_environment(exporter=exporter)
    if tracing is None:
        return None
    app.front_door = tracing.wrap(app.front_door)  # type: ignore[attr-defined]
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[Any]:
        try:
            async with inner(app) as state:
                try:
                    tracing.start(app.state.ctx.engine)
                except Exception as exc:  # tracing must never stop idhub from serving
                    log.warning("tracing could not instrument the database and HTTP clients: %s", exc)
                yield state
        finally:
            await asyncio.to_thread(tracing.shutdown)  # flushing may wait for the collector

    app.router.lifespan_context = lifespan
    install_trace_ids()
    return tracing


def install_trace_ids() -> None:
    """Give every log record ``trace_id`` (32 hex digits) and ``span_id`` (16), ``"-"`` outside a span; idempotent."""
    from opentelemetry import trace

    previous = logging.getLogRecordFactory()
    if getattr(previous, "idhub_trace_id", False):
        return
    current_span = trace.get_current_span

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        context = current_span().get_span_context()
        if context.is_valid:
            record.trace_id = format(context.trace_id, "032x")
            record.span_id = format(context.span_id, "016x")
        else:
            record.trace_id = record.span_id = "-"
        return record

    factory.idhub_trace_id = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)
