"""Prometheus metrics (one registry per app) and the ASGI middleware that records requests."""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
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


BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class _Series:
    """Counts and latency histogram of one (route, method) pair."""

    __slots__ = ("buckets", "statuses", "sum")

    def __init__(self) -> None:
        self.statuses: dict[int, int] = {}
        self.buckets = [0] * (len(BUCKETS) + 1)  # the last one is +Inf
        self.sum = 0.0


class Metrics:
    """The metrics idhub exports, as one Prometheus collector.

    prometheus_client's metric objects take a lock and walk label children on every update; the token
    endpoint records thousands of requests per second, so updates here are plain dict and list
    arithmetic and the exposition families are built only when ``/metrics`` is scraped. Updates run
    on the event loop thread only (nothing here is touched from worker threads), so no lock is needed.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._series: dict[tuple[str, str], _Series] = {}
        self._issued: dict[tuple[str, str], int] = {}
        self._faults: dict[tuple[str, str], int] = {}
        self.throttle_fallbacks = 0
        self._audit_sink: dict[str, int] = {}
        self.registry.register(self)

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        """Record one request's status and latency."""
        series = self._series.get((route, method))
        if series is None:
            series = self._series[(route, method)] = _Series()
        series.statuses[status] = series.statuses.get(status, 0) + 1
        series.buckets[bisect_left(BUCKETS, seconds)] += 1
        series.sum += seconds

    def count_issued(self, grant_type: str, kinds: list[str]) -> None:
        """Count tokens issued by grant type and kind."""
        issued = self._issued
        for kind in kinds:
            issued[(grant_type, kind)] = issued.get((grant_type, kind), 0) + 1

    def issued(self, grant_type: str, kind: str) -> int:
        """Return how many tokens of ``kind`` the grant issued so far."""
        return self._issued.get((grant_type, kind), 0)

    def count_fault(self, dependency: str, event: str) -> None:
        """Count one dependency fault and what idhub did about it (``redis``, ``revocation_poll_fallback``)."""
        faults = self._faults
        faults[(dependency, event)] = faults.get((dependency, event), 0) + 1

    def faults(self, dependency: str, event: str) -> int:
        """Return how often ``event`` happened because ``dependency`` failed."""
        return self._faults.get((dependency, event), 0)

    def count_throttle_fallback(self) -> None:
        """Count one abuse-limit counter operation served per process because Redis was unreachable."""
        self.throttle_fallbacks += 1

    def count_audit_sink(self, outcome: str, entries: int) -> None:
        """Count audit entries the streaming sink ``sent`` or ``dropped`` (full queue, sink down)."""
        self._audit_sink[outcome] = self._audit_sink.get(outcome, 0) + entries

    def audit_sink(self, outcome: str) -> int:
        """Return how many audit entries the sink ``sent`` or ``dropped`` so far."""
        return self._audit_sink.get(outcome, 0)

    def collect(self) -> Iterator[Metric]:
        """Build the exposition families (prometheus_client's custom collector protocol)."""
        requests = CounterMetricFamily(
            "idhub_http_requests",
            "HTTP requests by route template, method and status",
            labels=["route", "method", "status"],
        )
        latency = HistogramMetricFamily(
            "idhub_http_request_duration_seconds", "HTTP request latency by route template", labels=["route", "method"]
        )
        for (route, method), series in sorted(self._series.items()):
            for status, count in sorted(series.statuses.items()):
                requests.add_metric([route, method, str(status)], count)
            cumulative, total = [], 0
            for bound, count in zip([*map(str, BUCKETS), "+Inf"], series.buckets, strict=True):
                total += count
                cumulative.append((bound, total))
            latency.add_metric([route, method], cumulative, series.sum)
        issued = CounterMetricFamily(
            "idhub_tokens_issued", "Tokens issued by grant type and token kind", labels=["grant_type", "kind"]
        )
        for (grant_type, kind), count in sorted(self._issued.items()):
            issued.add_metric([grant_type, kind], count)
        faults = CounterMetricFamily(
            "idhub_dependency_faults",
            "Faults of a dependency (database, Redis) by what idhub did instead (fallback, stale data)",
            labels=["dependency", "event"],
        )
        for (dependency, event), count in sorted(self._faults.items()):
            faults.add_metric([dependency, event], count)
        fallbacks = CounterMetricFamily(
            "idhub_throttle_fallback",
            "Abuse-limit counter operations served per process because Redis was unreachable",
            value=self.throttle_fallbacks,
        )
        sink = CounterMetricFamily(
            "idhub_audit_sink_entries",
            "Audit entries streamed to the configured sink, by outcome (sent, dropped); the database keeps all",
            labels=["outcome"],
        )
        for outcome, count in sorted(self._audit_sink.items()):
            sink.add_metric([outcome], count)
        yield from (requests, latency, issued, faults, fallbacks, sink)

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
