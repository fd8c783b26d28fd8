#!/usr/bin/env python3
"""Benchmark idhub's SCIM 2.0 endpoints (RFC 7644) on PostgreSQL, in one run on one machine, and print the figures.

One idhub server process (``idhub serve --workers 1``, started exactly as ``bench/run.py`` starts it) on
PostgreSQL (the ``bench_scim`` database is created if missing and reset first), set up through the CLI
(``idhub migrate``, ``idhub init``, ``idhub provisioning-token create``). Every SCIM request sends the
provisioning token as ``Authorization: Bearer`` and ``Content-Type: application/scim+json``; the client
is one keep-alive httpx client sending requests one after another (no concurrency).

1. Onboarding: ``--users`` users (default 100,000) created through ``POST {issuer}/scim/v2/Bulk``,
   1,000 ``POST /Users`` operations per request (core + enterprise schema, no passwords); every
   operation must answer status 201. Target: total wall time < 60 s. The request bodies are built
   before the clock starts.
2. Exact lookup: ``GET /Users?filter=userName eq "user<random>@acme.example"``, 100 warm-up then 2,000
   measured requests, each must find exactly one user. Targets: p50 < 5 ms, p99 < 20 ms.
3. A page of a substring search: ``GET /Users?filter=userName co "99"&count=100`` (and ``co "user99"``),
   5 warm-up then 100 measured requests each, each must return a full page. Target: p50 < 50 ms.
4. Deactivation: a user (``idhub user create``) signs in through the real login form, the code is
   exchanged at the token endpoint (client_secret_basic, PKCE S256), the access token is introspected
   (active), then ``PATCH /Users/<id>`` sets ``active`` to false and the very next introspection must
   answer ``active: false``. The PATCH latency is reported.

The server runs on one CPU core and this process, the load generator, on another (``--server-cpu``,
default 0; ``--client-cpu``, default 1): the server is started under ``taskset -c <server-cpu>`` and this
process pins itself to the client CPU once the server is up, for all SCIM requests. With fewer than two
usable CPUs, or ``--no-pin``, both run unpinned and the report says so. PostgreSQL is not pinned.

Latencies are client-side (``time.perf_counter`` around each request). The targets are set for 100,000
users; a smaller ``--users`` is a smoke run. This is not a test: it prints figures and exits non-zero when
a target is missed or a scenario could not run.

The report lists PostgreSQL's version and ``autovacuum`` setting: right after the bulk load the planner
statistics are stale until autovacuum analyzes the tables. ``--analyze`` runs ``ANALYZE`` after onboarding
to separate that effect from idhub's own cost; the default run does not.

Usage: ``python bench/scim.py [--users 100000] [--analyze] [--json-out FILE] [--no-pin]``; ``python bench/scim.py
--users 2000`` is a quick smoke run. The server it starts is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import os
import random
import secrets
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as base  # bench/run.py: server, CLI and sign-in helpers

DEFAULT_DATABASE_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/bench_scim"
TARGET_USERS = 100_000
BULK_SIZE = 1000
EQ_WARMUP, EQ_REQUESTS = 100, 2000
CO_WARMUP, CO_REQUESTS, CO_PAGE, CO_NEEDLE, CO_NEEDLE_LONG = 5, 100, 100, "99", "user99"
DOMAIN = "acme.example"

SCIM_MEDIA_TYPE = "application/scim+json"
BULK_REQUEST = "urn:ietf:params:scim:api:messages:2.0:BulkRequest"
PATCH_OP = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
USER_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:User"
ENTERPRISE_SCHEMA = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
GIVEN_NAMES = ["Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Ken", "Radia", "Tony"]
FAMILY_NAMES = ["Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Allen", "Thompson", "Perlman", "Hoare"]


# --- results ------------------------------------------------------------------------------------
@dataclass
class Result:
    """One measured scenario: a figure, its target and whether it was met."""

    name: str
    figure: str
    target: str
    passed: bool
    p50_ms: float | None = None
    p99_ms: float | None = None
    requests: int = 0
    errors: int = 0
    note: str = ""
    values: dict[str, Any] = field(default_factory=dict)


@dataclass
class Report:
    """Everything the run measured."""

    machine: dict[str, Any]
    settings: dict[str, Any]
    results: list[Result] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    def render(self) -> str:
        """Render the table and machine information."""
        header = f"{'scenario':<36} {'figure':<34} {'p50 ms':>8} {'p99 ms':>8}  {'target':<34} result"
        lines = [*base.pinning_header(self.machine.get("pinning")), "", header, "-" * len(header)]
        for result in self.results:
            p50 = f"{result.p50_ms:.2f}" if result.p50_ms is not None else "-"
            p99 = f"{result.p99_ms:.2f}" if result.p99_ms is not None else "-"
            verdict = "PASS" if result.passed else "FAIL"
            lines.append(
                f"{result.name:<36} {result.figure:<34} {p50:>8} {p99:>8}  {result.target:<34} {verdict}".rstrip()
            )
            details = ([f"errors: {result.errors}"] if result.errors else []) + ([result.note] if result.note else [])
            if details:
                lines.append(f"{'':<4}" + "; ".join(details))
        for name, reason in self.skipped.items():
            lines.append(f"{name:<36} skipped: {reason}")
        lines.append("")
        if self.settings.get("users") != TARGET_USERS:
            lines.append(f"note: targets are set for {TARGET_USERS} users; this run had {self.settings.get('users')}")
        lines.append("machine: " + ", ".join(f"{k}={v}" for k, v in self.machine.items() if k != "pinning"))
        lines.append("settings: " + ", ".join(f"{k}={v}" for k, v in self.settings.items()))
        return "\n".join(lines)

    def failed(self) -> bool:
        """Tell whether a target was missed or a scenario could not run."""
        return bool(self.skipped) or any(not result.passed for result in self.results)


def percentile(sorted_values: list[float], p: float) -> float | None:
    """Return the nearest-rank ``p``-th percentile of already sorted values."""
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, round(p / 100 * (len(sorted_values) - 1)))]


def measure_gets(
    http: httpx.Client,
    url: str,
    *,
    params: Callable[[], dict[str, str]],
    check: Callable[[httpx.Response], str | None],
    warmup: int,
    requests: int,
) -> tuple[list[float], list[str]]:
    """Send ``warmup`` then ``requests`` sequential GETs; return the sorted latencies (ms) and the errors.

    ``check`` returns a description of what is wrong with a response, or None when it is right.
    """
    latencies: list[float] = []
    errors: list[str] = []
    for n in range(warmup + requests):
        query = params()
        started = time.perf_counter()
        response = http.get(url, params=query)
        elapsed = (time.perf_counter() - started) * 1000
        if n < warmup:
            continue
        latencies.append(elapsed)
        problem = check(response)
        if problem is not None:
            errors.append(problem)
    latencies.sort()
    return latencies, errors


def first_errors(errors: list[str]) -> str:
    """Summarise the errors of a scenario for the table."""
    return f"first: {errors[0][:200]}" if errors else ""


# --- PostgreSQL ------------------------------------------------------------------------------------
def _dsn(database_url: str) -> str:
    return database_url.replace("postgresql+asyncpg://", "postgresql://")


def postgres_info(database_url: str) -> dict[str, Any]:
    """Return the server version and the settings that change these figures (``autovacuum`` keeps statistics)."""
    import asyncpg

    async def work() -> dict[str, Any]:
        conn = await asyncpg.connect(_dsn(database_url), timeout=5)
        try:
            rows = await conn.fetch(
                "SELECT name, setting, unit FROM pg_settings WHERE name = ANY($1::text[]) ORDER BY name",
                ["server_version", "autovacuum", "shared_buffers", "synchronous_commit"],
            )
        finally:
            await conn.close()
        return {f"pg_{row['name']}": row["setting"] + (f"x{row['unit']}" if row["unit"] else "") for row in rows}

    return asyncio.run(work())


def analyze(database_url: str) -> None:
    """Refresh the planner statistics (what autovacuum would do some time after a bulk load)."""
    import asyncpg

    async def work() -> None:
        conn = await asyncpg.connect(_dsn(database_url), timeout=5)
        try:
            await conn.execute("ANALYZE")
        finally:
            await conn.close()

    asyncio.run(work())


# --- 1. onboarding through /Bulk ------------------------------------------------------------------
def user_name(i: int) -> str:
    """Return the userName of the ``i``-th onboarded user."""
    return f"user{i}@{DOMAIN}"


def bulk_operation(i: int) -> dict[str, Any]:
    """Return the ``POST /Users`` bulk operation of the ``i``-th user (no password: HR feeds carry none)."""
    given, family = GIVEN_NAMES[i % len(GIVEN_NAMES)], FAMILY_NAMES[i // len(GIVEN_NAMES) % len(FAMILY_NAMES)]
    return {
        "method": "POST",
        "path": "/Users",
        "bulkId": f"b{i}",
        "data": {
            "schemas": [USER_SCHEMA, ENTERPRISE_SCHEMA],
            "userName": user_name(i),
            "externalId": f"hr-{i}",
            "name": {"givenName": given, "familyName": family},
            "displayName": f"{given} {family} {i}",
            "emails": [{"value": user_name(i), "type": "work", "primary": True}],
            "active": True,
            ENTERPRISE_SCHEMA: {"employeeNumber": str(i), "department": f"Dept {i % 50}"},
        },
    }


def bench_onboarding(http: httpx.Client, scim: str, users: int) -> Result:
    """Create ``users`` users through ``POST /Bulk``, ``BULK_SIZE`` operations per request, sequentially."""
    bodies = [
        json.dumps(
            {
                "schemas": [BULK_REQUEST],
                "Operations": [bulk_operation(i) for i in range(start, min(start + BULK_SIZE, users))],
            }
        ).encode()
        for start in range(0, users, BULK_SIZE)
    ]
    latencies: list[float] = []
    errors: list[str] = []
    created = 0
    started = time.perf_counter()
    for start, body in zip(range(0, users, BULK_SIZE), bodies, strict=True):
        sent = min(BULK_SIZE, users - start)
        request_started = time.perf_counter()
        response = http.post(f"{scim}/Bulk", content=body)
        latencies.append((time.perf_counter() - request_started) * 1000)
        if response.status_code != 200:
            errors.extend([f"Bulk answered {response.status_code}: {response.text[:200]}"] * sent)
            continue
        operations = response.json().get("Operations", [])
        for op in operations:
            if str(op.get("status")) == "201":
                created += 1
            else:
                errors.append(f"{op.get('bulkId')}: status {op.get('status')} {json.dumps(op.get('response'))}")
        if len(operations) != sent:
            errors.extend([f"sent {sent} operations, {len(operations)} answered"] * abs(sent - len(operations)))
    wall = time.perf_counter() - started
    first_ms, last_ms = latencies[0], latencies[-1]
    latencies.sort()
    rate = created / wall if wall else 0.0
    return Result(
        name=f"onboarding: POST /Bulk x{BULK_SIZE}",
        figure=f"{created} users in {wall:.2f} s, {rate:.0f}/s",
        target="wall < 60 s, every op 201",
        passed=wall < 60 and not errors and created == users,
        p50_ms=percentile(latencies, 50),
        p99_ms=percentile(latencies, 99),
        requests=len(bodies),
        errors=len(errors),
        note=f"per request: first {first_ms:.0f} ms, last {last_ms:.0f} ms. {first_errors(errors)}".strip(),
        values={
            "users": users,
            "created": created,
            "wall_s": round(wall, 3),
            "users_per_s": round(rate, 1),
            "first_request_ms": round(first_ms, 1),
            "last_request_ms": round(last_ms, 1),
        },
    )


# --- 2. and 3. filters ------------------------------------------------------------------------------
def bench_eq_filter(http: httpx.Client, scim: str, users: int) -> Result:
    """Look users up by exact userName, one at a time."""
    rng = random.Random(7)  # which user to look up, not a secret

    def params() -> dict[str, str]:
        return {"filter": f'userName eq "{user_name(rng.randrange(users))}"'}

    def check(response: httpx.Response) -> str | None:
        if response.status_code != 200:
            return f"answered {response.status_code}: {response.text[:200]}"
        total = response.json().get("totalResults")
        return None if total == 1 else f"totalResults {total}, expected 1"

    latencies, errors = measure_gets(
        http, f"{scim}/Users", params=params, check=check, warmup=EQ_WARMUP, requests=EQ_REQUESTS
    )
    p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
    elapsed_s = sum(latencies) / 1000
    return Result(
        name=f"GET /Users eq filter ({users} users)",
        figure=f"{len(latencies)} req, {len(latencies) / elapsed_s:.0f} req/s" if elapsed_s else "-",
        target="p50 < 5 ms, p99 < 20 ms",
        passed=not errors and p50 is not None and p99 is not None and p50 < 5 and p99 < 20,
        p50_ms=p50,
        p99_ms=p99,
        requests=len(latencies),
        errors=len(errors),
        note=first_errors(errors),
    )


def bench_co_filter(http: httpx.Client, scim: str, users: int, needle: str = CO_NEEDLE) -> Result:
    """Fetch the first page of 100 users whose userName contains ``needle``.

    Two needles are measured: a 2-character one (3.7 % of the users match, so the total counts
    thousands of rows) and a 6-character one, as a person's name fragment would be. The bigram GIN
    index on ``username`` (migration 0003) serves both.
    """
    matching = sum(needle in user_name(i) for i in range(users))
    expected_page = min(CO_PAGE, matching)

    def params() -> dict[str, str]:
        return {"filter": f'userName co "{needle}"', "count": str(CO_PAGE)}

    def check(response: httpx.Response) -> str | None:
        if response.status_code != 200:
            return f"answered {response.status_code}: {response.text[:200]}"
        body = response.json()
        if body.get("itemsPerPage") != expected_page or len(body.get("Resources", [])) != expected_page:
            return f"itemsPerPage {body.get('itemsPerPage')}, expected {expected_page}"
        if body.get("totalResults") != matching:
            return f"totalResults {body.get('totalResults')}, expected {matching}"
        return None

    latencies, errors = measure_gets(
        http, f"{scim}/Users", params=params, check=check, warmup=CO_WARMUP, requests=CO_REQUESTS
    )
    p50 = percentile(latencies, 50)
    return Result(
        name=f'GET /Users co "{needle}" count={CO_PAGE}',
        figure=f"{len(latencies)} req, {expected_page}/page of {matching}",
        target="p50 < 50 ms",
        passed=not errors and p50 is not None and p50 < 50,
        p50_ms=p50,
        p99_ms=percentile(latencies, 99),
        requests=len(latencies),
        errors=len(errors),
        note=first_errors(errors),
        values={"matching": matching},
    )


# --- 4. deactivation --------------------------------------------------------------------------------
def sign_in_for_code(http: httpx.Client, authorization_endpoint: str, client_id: str, username: str) -> tuple[str, str]:
    """Sign in through the real login page as ``run.sign_in_once`` does; return the code and the PKCE verifier.

    ``run.sign_in_once`` drops both (it only counts sign-ins), so the flow is followed here, synchronously,
    with its login form parser.
    """
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    query = urlencode(
        {
            "response_type": "code",
            "client_id": client_id,
            "redirect_uri": base.REDIRECT_URI,
            "scope": "openid",
            "state": secrets.token_urlsafe(8),
            "nonce": secrets.token_urlsafe(8),
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        }
    )
    response = http.get(f"{authorization_endpoint}?{query}")
    posted = False
    for _ in range(10):
        if response.status_code in (302, 303):
            location = urljoin(str(response.url), response.headers["location"])
            if location.startswith(base.REDIRECT_URI):
                codes = parse_qs(urlsplit(location).query).get("code")
                if not codes or not posted:
                    raise RuntimeError(f"redirected to the client without signing in or a code: {location}")
                return codes[0], verifier
            response = http.get(location)
        elif response.status_code == 200 and not posted:
            action, inputs = base.login_form(response.text)
            inputs.update(username=username, password=base.PASSWORD)
            response = http.post(urljoin(str(response.url), action), data=inputs)
            posted = True
        else:
            raise RuntimeError(f"unexpected {response.status_code} at {response.url}: {response.text[:200]}")
    raise RuntimeError("too many steps")


def bench_deactivation(env: dict[str, str], issuer: str, scim: str, scim_http: httpx.Client) -> Result:
    """Deactivate a signed-in user through SCIM PATCH; its access token must be inactive on the next request."""
    web = base.idhub_cli(
        env,
        "client",
        "create",
        "--tenant",
        base.TENANT,
        "--name",
        "web",
        "--redirect-uri",
        base.REDIRECT_URI,
        "--grant-type",
        "authorization_code",
        "--grant-type",
        "refresh_token",
        "--scope",
        "openid",
        "--first-party",
        "--json",
    )
    leaver = base.idhub_cli(
        env,
        "user",
        "create",
        "--tenant",
        base.TENANT,
        "--username",
        "leaver",
        "--password-stdin",
        "--json",
        stdin=base.PASSWORD + "\n",
    )
    auth = {"Authorization": base.basic_auth(web["client_id"], web["client_secret"])}
    with httpx.Client(timeout=30, follow_redirects=False) as browser:
        meta = browser.get(f"{issuer}/.well-known/openid-configuration").json()
        code, verifier = sign_in_for_code(browser, meta["authorization_endpoint"], web["client_id"], "leaver")
        exchanged = browser.post(
            f"{issuer}/token",
            data={
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": base.REDIRECT_URI,
                "code_verifier": verifier,
            },
            headers=auth,
        )
        if exchanged.status_code != 200:
            raise RuntimeError(f"token endpoint answered {exchanged.status_code}: {exchanged.text[:200]}")
        access_token = exchanged.json()["access_token"]

        def introspect() -> Any:
            answer = browser.post(f"{issuer}/introspect", data={"token": access_token}, headers=auth)
            if answer.status_code != 200:
                raise RuntimeError(f"introspection answered {answer.status_code}: {answer.text[:200]}")
            return answer.json().get("active")

        before = introspect()
        if before is not True:
            raise RuntimeError(f"the fresh access token does not introspect as active: {before}")
        patch = json.dumps(
            {"schemas": [PATCH_OP], "Operations": [{"op": "replace", "path": "active", "value": False}]}
        ).encode()
        started = time.perf_counter()
        patched = scim_http.patch(f"{scim}/Users/{leaver['id']}", content=patch)
        patch_ms = (time.perf_counter() - started) * 1000
        after = introspect()
    problems = []
    if patched.status_code != 200:
        problems.append(f"PATCH answered {patched.status_code}: {patched.text[:200]}")
    elif patched.json().get("active") is not False:
        problems.append(f"PATCH answered active {patched.json().get('active')}")
    if after is not False:
        problems.append(f"introspection after the PATCH answered active {after}")
    return Result(
        name="deactivation: PATCH active=false",
        figure=f"PATCH {patch_ms:.2f} ms; active {before} -> {after}",
        target="active: false on the next request",
        passed=not problems,
        requests=1,
        errors=len(problems),
        note="; ".join(problems),
        values={"patch_ms": round(patch_ms, 3), "active_before": before, "active_after": after},
    )


# --- the run --------------------------------------------------------------------------------------
def bench_scim(args: argparse.Namespace, work: Path, report: Report, pinning: base.Pinning) -> None:
    """Set up one idhub server process on PostgreSQL and run the four scenarios against it."""
    port = base.free_port()
    base_url = f"http://127.0.0.1:{port}"
    env = base.server_env(args.database_url, base_url, work)
    print("  resetting database and migrating ...", flush=True)
    base.reset_database(args.database_url)
    report.settings.update(postgres_info(args.database_url))
    base.idhub_cli(env, "migrate")
    init = base.idhub_cli(env, "init", "--tenant", base.TENANT)
    token = base.idhub_cli(env, "provisioning-token", "create", "--tenant", base.TENANT, "--json")["token"]
    issuer = init["issuer"]
    scim = f"{issuer}/scim/v2"

    argv = [*base.IDHUB, "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    server = base.Server("idhub", argv, env=env, cwd=work, log_dir=work, pinning=pinning)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": SCIM_MEDIA_TYPE, "Accept": SCIM_MEDIA_TYPE}
    # The server starts first (on its own CPU), then this process, the load generator, moves to the client CPU.
    with (
        base.running(server, f"{base_url}/healthz"),
        pinning.load_generator(),
        httpx.Client(headers=headers, timeout=120) as http,
    ):
        probe = http.get(f"{scim}/Users", params={"count": "0"})
        if probe.status_code != 200:
            raise RuntimeError(f"GET /Users answered {probe.status_code}: {probe.text[:300]}")
        scenarios: list[tuple[str, Callable[[], Result | None]]] = [
            ("onboarding", lambda: bench_onboarding(http, scim, args.users)),
            *([("ANALYZE", lambda: analyze(args.database_url))] if args.analyze else []),
            ("eq filter", lambda: bench_eq_filter(http, scim, args.users)),
            ("co filter", lambda: bench_co_filter(http, scim, args.users)),
            ("co filter (name fragment)", lambda: bench_co_filter(http, scim, args.users, CO_NEEDLE_LONG)),
            ("deactivation", lambda: bench_deactivation(env, issuer, scim, http)),
        ]
        for name, scenario in scenarios:
            print(f"  {name} ...", flush=True)
            try:
                result = scenario()
            except Exception as exc:
                report.skipped[name] = f"{type(exc).__name__}: {exc}"[:2000]
                continue
            if result is None:
                continue
            report.results.append(result)
            print(f"    {result.figure}", flush=True)
        if server.process is not None and server.process.poll() is not None:
            raise RuntimeError(f"idhub exited during the run:\n{server.log_tail()}")


def main() -> int:
    """Run the benchmark and print the report."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=TARGET_USERS, help="users onboarded through /Bulk")
    parser.add_argument("--database-url", default=os.environ.get("IDHUB_BENCH_SCIM_DATABASE_URL", DEFAULT_DATABASE_URL))
    parser.add_argument(
        "--analyze",
        action="store_true",
        help="run ANALYZE after onboarding (fresh planner statistics, as autovacuum would eventually give)",
    )
    parser.add_argument("--json-out", type=Path, default=None, help="also write the figures as JSON")
    base.add_pinning_arguments(parser)
    args = parser.parse_args()
    if args.users < 1:
        parser.error("--users must be at least 1")
    pinning = base.pinning_from_args(parser, args)

    report = Report(
        machine={k: v for k, v in base.machine_info(pinning).items() if k != "wrk"},
        settings={
            "users": args.users,
            "bulk_ops_per_request": BULK_SIZE,
            "client": "one httpx keep-alive connection, sequential",
            "server": "idhub serve --workers 1",
            "database": urlsplit(args.database_url.replace("+asyncpg", "")).path.lstrip("/"),
            "analyze_after_onboarding": args.analyze,
        },
    )
    print("\n".join(base.pinning_header(report.machine["pinning"])), flush=True)
    with tempfile.TemporaryDirectory(prefix="idhub-bench-scim-") as tmp:
        print("idhub SCIM (one worker, PostgreSQL) ...", flush=True)
        try:
            bench_scim(args, Path(tmp), report, pinning)
        except Exception as exc:
            report.skipped["idhub"] = f"{type(exc).__name__}: {exc}"[:2000]
    print()
    print(report.render())
    if args.json_out is not None:
        args.json_out.write_text(
            json.dumps(
                {
                    "machine": report.machine,
                    "settings": report.settings,
                    "results": [asdict(r) for r in report.results],
                    "skipped": report.skipped,
                },
                indent=2,
            )
            + "\n"
        )
    return 1 if report.failed() else 0


if __name__ == "__main__":
    sys.exit(main())
