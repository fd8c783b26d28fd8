"""Prometheus metrics (one registry per app) and the ASGI middleware that records requests.

Families (``_total`` is added to counters at exposition):

- ``idhub_http_requests_total{route,method,status}``, ``idhub_http_request_duration_seconds{route,method}``:
  every request, labelled by the template of the route it matched (``/tenants/{tenant}/token``), or
  ``unmatched``; methods outside the standard ones are ``other`` (a client chooses them).
- ``idhub_signins_total{method,outcome}`` (``password`` | ``upstream``; ``success`` | ``failure`` | ``blocked``),
  ``idhub_signin_lockouts_total`` (sign-ins refused by the abuse limits).
- ``idhub_token_requests_total{endpoint,grant_type,outcome}`` (``issued`` or the OAuth error code),
  ``idhub_tokens_issued_total{grant_type,kind}``.
- ``idhub_scim_operations_total{resource,operation,outcome}`` (``success``, the ``scimType``, or the status).
- ``idhub_revocations_total{kind}`` (recorded by this process), ``idhub_revocations_applied_total{source}`` and
  ``idhub_revocation_propagation_seconds{source}`` (``local`` | ``broadcast`` | ``poll``: how a revocation
  reached this process, and how long after it was recorded).
- ``idhub_db_pool_*`` gauges (size, in use, idle, overflow, waiting), read from the engine at scrape time.
- ``idhub_dependency_faults_total``, ``idhub_throttle_fallback_total``, ``idhub_audit_sink_entries_total``.
- prometheus_client's ``process_*``, ``python_info`` and ``python_gc_*`` collectors.

Every process keeps its own figures: run one idhub process per container (``serve --workers 1``, as the
Helm chart does) and let Prometheus add the replicas up.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from starlette.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from idhub.storage.engine import PoolStats

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
# How long a revocation took to reach this process: the poll runs every second by default.
PROPAGATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# Methods a label may name; anything else a client sends is ``other`` (labels must stay few).
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class _Series:
    """Counts and latency histogram of one (route, method) pair."""

    __slots__ = ("buckets", "statuses", "sum")

    def __init__(self) -> None:
        self.statuses: dict[int, int] = {}
        self.buckets = [0] * (len(BUCKETS) + 1)  # the last one is +Inf
        self.sum = 0.0


class _Histogram:
    """Bucket counts and sum of one histogram series (plain arithmetic, read at scrape time)."""

    __slots__ = ("bounds", "buckets", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.buckets = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        """Record one value."""
        self.buckets[bisect_left(self.bounds, value)] += 1
        self.sum += value


def _cumulative(bounds: tuple[float, ...], buckets: list[int]) -> list[tuple[str, float]]:
    """Return Prometheus' cumulative ``(le, count)`` pairs for per-bucket counts."""
    cumulative, total = [], 0
    for bound, count in zip([*map(str, bounds), "+Inf"], buckets, strict=True):
        total += count
        cumulative.append((bound, float(total)))
    return cumulative


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
        self._signins: dict[tuple[str, str], int] = {}
        self.lockouts = 0
        self._token_requests: dict[tuple[str, str, str], int] = {}
        self._scim: dict[tuple[str, str, str], int] = {}
        self._revocations: dict[str, int] = {}
        self._applied: dict[str, int] = {}
        self._propagation: dict[str, _Histogram] = {}
        self._pool: Callable[[], PoolStats | None] | None = None
        self.registry.register(self)
        # Read at scrape time only (/proc, gc.get_stats): nothing on the request path.
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)

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

    def count_sign_in(self, method: str, outcome: str) -> None:
        """Count one sign-in attempt (``password`` or ``upstream``) by outcome; ``blocked`` is also a lockout."""
        key = (method, outcome)
        self._signins[key] = self._signins.get(key, 0) + 1
        if outcome == "blocked":
            self.lockouts += 1

    def sign_ins(self, method: str, outcome: str) -> int:
        """Return how many sign-ins by ``method`` ended in ``outcome`` so far."""
        return self._signins.get((method, outcome), 0)

    def count_token_request(self, endpoint: str, grant_type: str, outcome: str) -> None:
        """Count one token, introspection or revocation request: ``issued`` or the OAuth error code."""
        key = (endpoint, grant_type, outcome)
        self._token_requests[key] = self._token_requests.get(key, 0) + 1

    def token_requests(self, endpoint: str, grant_type: str, outcome: str) -> int:
        """Return how many requests to ``endpoint`` for ``grant_type`` ended in ``outcome`` so far."""
        return self._token_requests.get((endpoint, grant_type, outcome), 0)

    def count_scim(self, resource: str, operation: str, outcome: str) -> None:
        """Count one SCIM operation: ``success``, the error's ``scimType``, or its HTTP status."""
        key = (resource, operation, outcome)
        self._scim[key] = self._scim.get(key, 0) + 1

    def scim(self, resource: str, operation: str, outcome: str) -> int:
        """Return how many SCIM ``operation`` on ``resource`` ended in ``outcome`` so far."""
        return self._scim.get((resource, operation, outcome), 0)

    def count_revocation(self, kind: str) -> None:
        """Count one revocation this process recorded (``jti``, ``grant``, ``subject``, ``client``, ``credential``)."""
        self._revocations[kind] = self._revocations.get(kind, 0) + 1

    def observe_revocation(self, source: str, lag: float) -> None:
        """Record a revocation this process applied for the first time, and how long after it was recorded."""
        self._applied[source] = self._applied.get(source, 0) + 1
        histogram = self._propagation.get(source)
        if histogram is None:
            histogram = self._propagation[source] = _Histogram(PROPAGATION_BUCKETS)
        histogram.observe(max(lag, 0.0))  # clocks of two hosts may disagree a little

    def revocations_applied(self, source: str) -> int:
        """Return how many revocations reached this process by ``source`` so far."""
        return self._applied.get(source, 0)

    def watch_pool(self, read: Callable[[], PoolStats | None]) -> None:
        """Read the database pool's figures with ``read`` at every scrape."""
        self._pool = read

    def collect(self) -> Iterator[Metric]:
        """Build the exposition families (prometheus_client's custom collector protocol)."""
        yield from self._collect_requests()
        yield from self._collect_events()
        yield from self._collect_pool()

    def _collect_requests(self) -> Iterator[Metric]:
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
            latency.add_metric([route, method], _cumulative(BUCKETS, series.buckets), series.sum)
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

    def _collect_events(self) -> Iterator[Metric]:
        signins = CounterMetricFamily(
            "idhub_signins",
            "Sign-in attempts by method (password, upstream) and outcome (success, failure, blocked)",
            labels=["method", "outcome"],
        )
        for (method, outcome), count in sorted(self._signins.items()):
            signins.add_metric([method, outcome], count)
        lockouts = CounterMetricFamily(
            "idhub_signin_lockouts", "Sign-in attempts refused by the abuse limits", value=self.lockouts
        )
        token_requests = CounterMetricFamily(
            "idhub_token_requests",
            "Token, introspection and revocation requests by endpoint, grant type and outcome (issued or the "
            "OAuth error code)",
            labels=["endpoint", "grant_type", "outcome"],
        )
        for (endpoint, grant_type, outcome), count in sorted(self._token_requests.items()):
            token_requests.add_metric([endpoint, grant_type, outcome], count)
        scim = CounterMetricFamily(
            "idhub_scim_operations",
            "SCIM operations by resource, operation and outcome (success, the scimType, or the HTTP status)",
            labels=["resource", "operation", "outcome"],
        )
        for (resource, operation, outcome), count in sorted(self._scim.items()):
            scim.add_metric([resource, operation, outcome], count)
        revocations = CounterMetricFamily(
            "idhub_revocations", "Revocations recorded by this process, by kind", labels=["kind"]
        )
        for kind, count in sorted(self._revocations.items()):
            revocations.add_metric([kind], count)
        applied = CounterMetricFamily(
            "idhub_revocations_applied",
            "Revocations this process applied, by how they arrived (local commit, broadcast, poll)",
            labels=["source"],
        )
        for source, count in sorted(self._applied.items()):
            applied.add_metric([source], count)
        lag = HistogramMetricFamily(
            "idhub_revocation_propagation_seconds",
            "Time from recording a revocation to this process applying it, by how it arrived",
            labels=["source"],
        )
        for source, histogram in sorted(self._propagation.items()):
            lag.add_metric([source], _cumulative(histogram.bounds, histogram.buckets), histogram.sum)
        yield from (signins, lockouts, token_requests, scim, revocations, applied, lag)

    def _collect_pool(self) -> Iterator[Metric]:
        stats = self._pool() if self._pool is not None else None
        if stats is None:  # no pool (an in-memory database) or not started yet
            return
        yield GaugeMetricFamily("idhub_db_pool_size", "Connections the pool keeps open", value=stats.size)
        yield GaugeMetricFamily(
            "idhub_db_pool_max", "Most connections the pool opens (size plus overflow)", value=stats.limit
        )
        yield GaugeMetricFamily("idhub_db_pool_in_use", "Connections checked out of the pool", value=stats.in_use)
        yield GaugeMetricFamily("idhub_db_pool_idle", "Open connections waiting in the pool", value=stats.idle)
        yield GaugeMetricFamily(
            "idhub_db_pool_overflow", "Connections open beyond the pool's size", value=stats.overflow
        )
        yield GaugeMetricFamily(
            "idhub_db_pool_waiting",
            "Checkouts not served yet: waiting for a free connection or for a new one to open",
            value=stats.waiting,
        )

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
            method = scope["method"]
            self.metrics.observe(
                route_template(scope), method if method in METHODS else "other", status, time.perf_counter() - start
            )


def route_template(scope: Scope) -> str:
    """Return the template of the route a request matched, its router's prefix included, or ``unmatched``.

    FastAPI 0.12x and later no longer copy the routes of an included router: ``scope["route"]`` is the
    router's own route, whose path lacks the prefix it was included with (``/tenants/{tenant}``). The
    full template is then on the route context FastAPI selected (``scope["fastapi"]``); with older
    versions the route in the scope is the prefixed copy. A route whose path does not match the
    request's (a prefix not found) is ``unmatched`` rather than a label that names the wrong route.
    """
    selected = scope.get("fastapi")
    if selected is not None:
        template = getattr(selected.get("effective_route_context"), "path_format", None)
        if template:
            return str(template)
    route = scope.get("route")
    template = getattr(route, "path", None)
    if not template:
        return "unmatched"
    regex = getattr(route, "path_regex", None)
    if regex is not None and regex.match(scope["path"]) is None:
        return "unmatched"
    return str(template)


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
