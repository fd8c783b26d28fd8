"""Prometheus metrics (one registry per app) and the ASGI middleware that records requests."""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Every response: no MIME sniffing. Pages (text/html) also: no framing (clickjacking), no referrer
# leaks. JSON answers are never rendered by a browser, so they skip the page-only headers (each header
# costs the server time on the hottest endpoints).
NOSNIFF = (b"x-content-type-options", b"nosniff")
PAGE_HEADERS: list[tuple[bytes, bytes]] = [
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy", b"frame-ancestors 'none'"),
]
SECURITY_HEADERS: list[tuple[bytes, bytes]] = [NOSNIFF, *PAGE_HEADERS]


class Metrics:
    """The metrics idhub exports."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "idhub_http_requests_total",
            "HTTP requests by route template, method and status",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "idhub_http_request_duration_seconds",
            "HTTP request latency by route template",
            ["route", "method"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
            registry=self.registry,
        )
        self.tokens_issued = Counter(
            "idhub_tokens_issued_total",
            "Tokens issued by grant type and token kind",
            ["grant_type", "kind"],
            registry=self.registry,
        )
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._issued: dict[tuple[str, str], Any] = {}

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        """Record one request (label children cached: this runs on every request)."""
        key = (route, method, status)
        children = self._children.get(key)
        if children is None:
            children = (self.requests.labels(route, method, str(status)), self.latency.labels(route, method))
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def count_issued(self, grant_type: str, kinds: list[str]) -> None:
        """Count tokens issued by grant type and kind (label children cached: runs per token request)."""
        for kind in kinds:
            child = self._issued.get((grant_type, kind))
            if child is None:
                child = self._issued[(grant_type, kind)] = self.tokens_issued.labels(grant_type, kind)
            child.inc()

    def render(self) -> bytes:
        """Return the exposition text."""
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Time every HTTP request, label it by route template, and add the security headers."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = _with_security_headers(list(message.get("headers", ())))
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.observe(template, scope["method"], status, time.perf_counter() - start)


def _with_security_headers(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """Add the security headers a response lacks (page-only ones for HTML and non-JSON answers)."""
    names = {name.lower() for name, _ in headers}
    content_type = next((value for name, value in headers if name.lower() == b"content-type"), b"")
    if b"json" in content_type:
        if NOSNIFF[0] not in names:
            headers.append(NOSNIFF)
        return headers
    headers.extend(header for header in SECURITY_HEADERS if header[0] not in names)
    return headers
