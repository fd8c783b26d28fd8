"""OpenTelemetry tracing: off and free unless OTEL_* asks for it; one server span per request, named by route.

The traced apps here share the session app's database (``env``) and get an in-memory exporter through
``idhub.tracing.install(app, exporter=...)``, the test-only hook; the ``serve`` test sets the variables
an operator would and reads the console exporter's output.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from idhub import tracing
from idhub.app import create_app
from idhub.broker.fetch import Fetcher, FetchPolicy
from tests.conftest import PUBLIC_URL, TEST_MASTER_KEY, Env, make_settings
from tests.oidc.grants.helpers import REDIRECT_URI, basic
from tests.scim.conftest import SCIM_JSON, USER_URN, provisioning_token

ROOT = Path(__file__).resolve().parents[2]
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"
INTERNAL = FetchPolicy(internal=True)  # the upstream stand-in listens on loopback
OTEL_VARIABLES = (
    "OTEL_SDK_DISABLED",
    "OTEL_TRACES_EXPORTER",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
)


@pytest.fixture
def no_otel(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unset every variable that could switch tracing on."""
    for name in OTEL_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@dataclass
class Traced:
    """A traced app's client, its in-memory exporter and its tracing."""

    client: TestClient
    exporter: InMemorySpanExporter
    tracing: tracing.Tracing


@pytest.fixture
def traced(env: Env, tmp_path: Path, no_otel: None) -> Iterator[Traced]:
    """A second app on the session's database, traced into an in-memory exporter."""
    app = create_app(make_settings(env.ctx.settings.database_url, tmp_path))
    exporter = InMemorySpanExporter()
    installed = tracing.install(app, exporter=exporter)
    assert installed is not None
    with TestClient(app, base_url=PUBLIC_URL) as client:
        yield Traced(client, exporter, installed)


def _trace_of(spans: tuple[ReadableSpan, ...], server: ReadableSpan) -> list[ReadableSpan]:
    assert server.context is not None
    return [span for span in spans if span.context is not None and span.context.trace_id == server.context.trace_id]


def _attribute_text(spans: tuple[ReadableSpan, ...]) -> str:
    parts = []
    for span in spans:
        parts.append(span.name)
        parts.extend(f"{key}={value}" for key, value in (span.attributes or {}).items())
        for event in span.events:
            parts.extend(f"{key}={value}" for key, value in (event.attributes or {}).items())
    return "\n".join(parts)


# --- what switches tracing on -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("environ", "exporters"),
    [
        ({}, []),
        ({"OTEL_SERVICE_NAME": "idhub"}, []),
        ({"OTEL_TRACES_EXPORTER": "none"}, []),
        ({"OTEL_TRACES_EXPORTER": "console"}, ["console"]),
        ({"OTEL_TRACES_EXPORTER": "otlp, console"}, ["otlp", "console"]),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, ["otlp"]),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, ["otlp"]),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, []),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}, []),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_SDK_DISABLED": "TRUE"}, []),
        ({"OTEL_TRACES_EXPORTER": "console", "OTEL_SDK_DISABLED": "false"}, ["console"]),
    ],
)
def test_requested_exporters_follow_the_standard_variables(environ: dict[str, str], exporters: list[str]) -> None:
    assert tracing.requested(environ) == exporters


def test_query_values_are_redacted_names_kept() -> None:
    assert (
        tracing.scrub_url("https://rp/cb?code=abc&state=xyz&flag") == "https://rp/cb?code=REDACTED&state=REDACTED&flag"
    )
    assert tracing.scrub_url("https://rp/cb") == "https://rp/cb"
    assert tracing.scrub_query("client_secret=s3cret&") == "client_secret=REDACTED"


def test_scrubbing_covers_both_http_conventions_and_captured_headers() -> None:
    from opentelemetry.sdk.trace import TracerProvider

    attributes = {
        "url.full": "https://idp.example/cb?code=abc",  # stable HTTP conventions
        "url.query": "code=abc&state=def",
        "http.url": "https://idp.example/cb?code=abc",  # the older ones
        "http.request.header.authorization": ("Bearer abc",),
        "http.request.header.user_agent": ("curl",),
    }
    with TracerProvider().get_tracer(__name__).start_as_current_span("x", attributes=attributes) as span:
        tracing.scrub_span(span)
        recorded = dict(span.attributes)  # type: ignore[attr-defined]
    assert "abc" not in str(recorded) and "def" not in str(recorded)
    assert recorded["url.query"] == "code=REDACTED&state=REDACTED"
    assert recorded["http.request.header.user_agent"] == ("curl",)


def test_an_exporter_that_is_not_installed_is_one_warning_and_no_tracing(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "zipkin_json")
    # import-linter's run in tests/test_layering.py disables the loggers that exist then (dictConfig).
    monkeypatch.setattr(logging.getLogger("idhub.tracing"), "disabled", False)
    with caplog.at_level(logging.WARNING, logger="idhub.tracing"):
        assert tracing.from_environment() is None
    assert len(caplog.records) == 1 and "zipkin_json" in caplog.records[0].getMessage()


def _run_python(code: str, environ: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "IDHUB_"))}
    env.update(environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True, timeout=120, check=False
    )


APP_IN_A_FRESH_PROCESS = """
    import logging, sys
    import fastapi  # FastAPI may import the OpenTelemetry API itself: only what idhub adds counts
    before = {m for m in sys.modules if m.startswith("opentelemetry")}
    from pathlib import Path
    from idhub.app import create_app
    from idhub.routing import FrontDoor
    from idhub.settings import Settings
    app = create_app(Settings(environment="test", data_dir=Path("ROOT_DIR"), master_key="MASTER_KEY",
                              database_url="sqlite+aiosqlite:///ROOT_DIR/off.db"))
    added = sorted(m for m in sys.modules if m.startswith("opentelemetry") and m not in before)
    print("ADDED", added)
    print("FRONT", type(app.front_door) is FrontDoor)
    print("FACTORY", getattr(logging.getLogRecordFactory(), "idhub_trace_id", False))
"""


def test_tracing_off_imports_nothing_and_wraps_nothing(tmp_path: Path) -> None:
    key = TEST_MASTER_KEY
    result = _run_python(
        APP_IN_A_FRESH_PROCESS.replace("ROOT_DIR", str(tmp_path)).replace("MASTER_KEY", key),
        {"OTEL_SERVICE_NAME": "idhub"},
    )
    assert result.returncode == 0, result.stderr
    assert "ADDED []" in result.stdout and "FRONT True" in result.stdout and "FACTORY False" in result.stdout, (
        result.stdout
    )


def test_tracing_asked_for_without_the_extra_is_one_warning_and_no_tracing(tmp_path: Path) -> None:
    key = TEST_MASTER_KEY
    code = "import sys; sys.modules['opentelemetry.sdk'] = None  # as if idhub[otel] were not installed\n"
    code += textwrap.dedent(
        APP_IN_A_FRESH_PROCESS.replace("ROOT_DIR", str(tmp_path)).replace("MASTER_KEY", key)
    ).replace("import logging, sys\n", "")
    code = "import logging\nlogging.basicConfig(format='%(levelname)s %(message)s')\n" + code
    result = _run_python(code, {"OTEL_TRACES_EXPORTER": "otlp"})
    assert result.returncode == 0, result.stderr
    assert "FRONT True" in result.stdout, result.stdout
    lines = [line for line in result.stderr.splitlines() if "tracing" in line]
    assert len(lines) == 1 and "pip install 'idhub[otel]'" in lines[0], result.stderr
    assert "Traceback" not in result.stderr


# --- spans of requests through the app ----------------------------------------------------------------
def test_every_request_gets_one_server_span_named_by_its_route(env: Env, traced: Traced) -> None:
    client, exporter = traced.client, traced.exporter
    tenant = env.tenant()
    client_id, secret = env.oauth_client(
        tenant, grant_types=["client_credentials", "authorization_code"], scope="api", redirect_uris=[REDIRECT_URI]
    )
    assert secret
    scim_token = provisioning_token(env, tenant)
    exporter.clear()
    page = client.get(
        f"/tenants/{tenant.slug}/authorize",
        params={
            "client_id": client_id,
            "response_type": "code",
            "redirect_uri": REDIRECT_URI,
            "scope": "openid",
            "state": "STATE-SECRET-1",
            "code_challenge": "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
            "code_challenge_method": "S256",
        },
        follow_redirects=False,
    )
    callback = client.get(
        f"/tenants/{tenant.slug}/broker/nobody/callback", params={"code": "CODE-SECRET-1", "state": "x"}
    )
    token = client.post(
        f"/tenants/{tenant.slug}/token",
        data={"grant_type": "client_credentials", "scope": "api"},
        headers={**basic(client_id, secret), "traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"},
    )
    scim = client.post(
        f"/tenants/{tenant.slug}/scim/v2/Users",
        json={"schemas": [USER_URN], "userName": "traced.user", "password": "PASSWORD-SECRET-1"},
        headers={"authorization": f"Bearer {scim_token}", "content-type": SCIM_JSON},
    )
    assert page.status_code in (200, 302, 303), page.text[:300]
    assert callback.status_code < 500 and token.status_code == 200 and scim.status_code == 201, scim.text
    spans = exporter.get_finished_spans()
    servers = [span for span in spans if span.kind is SpanKind.SERVER]
    assert [span.name for span in servers] == [
        "GET /tenants/{tenant}/authorize",
        "GET /tenants/{tenant}/broker/{alias}/callback",
        "POST /tenants/{tenant}/token",  # served by the front door, not the framework
        "POST /tenants/{tenant}/scim/v2/Users",
    ], [span.name for span in servers]
    # One server span per request: each request is its own trace with exactly one.
    trace_ids = [span.context.trace_id for span in servers if span.context is not None]
    assert len(set(trace_ids)) == 4
    for server in servers:
        assert server.attributes is not None
        assert server.attributes["http.route"] == server.name.split(" ", 1)[1]
        assert server.attributes["idhub.tenant"] == tenant.slug
        assert tenant.slug not in server.name
        assert [span.kind for span in _trace_of(spans, server)].count(SpanKind.SERVER) == 1
    # The token request continues the caller's trace (W3C traceparent).
    token_span = servers[2]
    assert token_span.context is not None and token_span.parent is not None
    assert format(token_span.context.trace_id, "032x") == TRACE_ID
    assert format(token_span.parent.span_id, "016x") == PARENT_ID
    # SQL statements are child spans of the request that ran them (no parameters recorded).
    for server in (token_span, servers[3]):
        assert server.context is not None
        sql = [
            span
            for span in _trace_of(spans, server)
            if span.kind is SpanKind.CLIENT and "db.statement" in (span.attributes or {})
        ]
        assert sql, server.name
        assert all(span.parent is not None and span.parent.span_id == server.context.span_id for span in sql)
    assert any(str((span.attributes or {}).get("db.statement", "")).startswith("INSERT") for span in spans)
    # Nothing secret in any span: query values, credentials, tokens, passwords.
    text = _attribute_text(spans)
    secrets = [secret, scim_token, token.json()["access_token"], "STATE-SECRET-1", "CODE-SECRET-1", "PASSWORD-SECRET-1"]
    assert not [value for value in secrets if value in text]
    assert "code=REDACTED" in text and "state=REDACTED" in text


def test_probes_are_not_traced_and_unmatched_paths_are_named_by_method(traced: Traced) -> None:
    client, exporter = traced.client, traced.exporter
    exporter.clear()
    assert client.get("/healthz").status_code == 200
    assert client.get("/no/such/thing/abc123").status_code == 404
    servers = [span for span in exporter.get_finished_spans() if span.kind is SpanKind.SERVER]
    assert [span.name for span in servers] == ["GET"]


def test_log_records_carry_the_trace_id_inside_a_span(traced: Traced) -> None:
    logger = logging.getLogger("idhub.test_tracing")
    outside = logger.makeRecord(logger.name, logging.INFO, __file__, 1, "outside", (), None)
    with traced.tracing.provider.get_tracer(__name__).start_as_current_span("work") as span:
        inside = logger.makeRecord(logger.name, logging.INFO, __file__, 1, "inside", (), None)
    assert (outside.trace_id, outside.span_id) == ("-", "-")  # type: ignore[attr-defined]
    assert inside.trace_id == format(span.get_span_context().trace_id, "032x")  # type: ignore[attr-defined]
    assert inside.span_id == format(span.get_span_context().span_id, "016x")  # type: ignore[attr-defined]


# --- outgoing calls -----------------------------------------------------------------------------------
class _Upstream(BaseHTTPRequestHandler):
    """A loopback upstream that answers JSON and remembers the headers it was sent."""

    seen: list[dict[str, str]] = []

    def do_GET(self) -> None:
        type(self).seen.append({key.lower(): value for key, value in self.headers.items()})
        body = json.dumps({"issuer": "http://127.0.0.1"}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def upstream() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Upstream.seen = []
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_outgoing_calls_get_client_spans_and_carry_traceparent(traced: Traced, upstream: str) -> None:
    client, exporter = traced.client, traced.exporter
    tracer = traced.tracing.provider.get_tracer(__name__)

    async def calls() -> None:
        fetcher = Fetcher()  # the broker's guarded transport (discovery, JWKS, token, UserInfo)
        try:
            with tracer.start_as_current_span("sign-in"):
                await fetcher.get_json(
                    f"{upstream}/.well-known/openid-configuration?code=CODE-SECRET-2", policy=INTERNAL
                )
                async with httpx.AsyncClient() as plain:  # any other httpx client (the audit stream)
                    assert (await plain.get(f"{upstream}/events?token=TOKEN-SECRET-2")).status_code == 200
        finally:
            await fetcher.aclose()

    exporter.clear()
    client.portal.call(calls)  # type: ignore[union-attr]
    spans = exporter.get_finished_spans()
    parent = next(span for span in spans if span.name == "sign-in")
    outgoing = [span for span in spans if span.kind is SpanKind.CLIENT and span.name == "GET"]
    assert len(outgoing) == 2, [(span.name, span.kind) for span in spans]
    assert parent.context is not None
    assert all(span.parent is not None and span.parent.span_id == parent.context.span_id for span in outgoing)
    trace_id = format(parent.context.trace_id, "032x")
    assert [headers.get("traceparent", "").split("-")[1] for headers in _Upstream.seen] == [trace_id, trace_id]
    text = _attribute_text(spans)
    assert "CODE-SECRET-2" not in text and "TOKEN-SECRET-2" not in text and "code=REDACTED" in text


# --- a real server --------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_serve_with_the_console_exporter_prints_a_span_per_request(tmp_path: Path) -> None:
    port = _free_port()
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("IDHUB_", "OTEL_"))}
    environ.update(
        IDHUB_DATA_DIR=str(tmp_path),
        IDHUB_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'serve.db'}",
        IDHUB_MASTER_KEY=base64.urlsafe_b64encode(os.urandom(32)).decode(),
        IDHUB_PUBLIC_URL=f"http://127.0.0.1:{port}",
        OTEL_TRACES_EXPORTER="console",
        OTEL_SERVICE_NAME="idhub-under-test",
        PYTHONPATH=str(ROOT),
    )
    command = [sys.executable, "-c", "import sys; from idhub.cli import main; sys.exit(main())"]
    server = subprocess.Popen(
        [*command, "serve", "--port", str(port)], env=environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        deadline, ready = time.monotonic() + 60, False
        while time.monotonic() < deadline and not ready and server.poll() is None:
            try:
                ready = httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200  # not traced
            except httpx.HTTPError:
                time.sleep(0.2)
        assert ready, f"server did not come up: {server.poll()}"
        answer = httpx.get(
            f"http://127.0.0.1:{port}/tenants/acme/.well-known/openid-configuration?code=CODE-SECRET-3",
            headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"},
        )
        assert answer.status_code == 404
    finally:
        server.terminate()  # a graceful stop: the lifespan flushes the spans still queued
        out, err = server.communicate(timeout=30)
    printed = out.decode()
    assert '"name": "GET /tenants/{tenant}/.well-known/openid-configuration"' in printed, (printed[-2000:], err[-2000:])
    assert f'"trace_id": "0x{TRACE_ID}"' in printed
    assert '"service.name": "idhub-under-test"' in printed
    assert "/healthz" not in printed and "CODE-SECRET-3" not in printed
    assert b"Traceback" not in err, err.decode()[-2000:]
