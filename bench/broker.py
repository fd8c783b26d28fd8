"""Brokered sign-ins per second: an app signs people in through idhub, which signs them in upstream.

Two idhub processes on PostgreSQL: the **broker** (``idhub serve --workers 1``, pinned to the server
CPU, database ``bench``) and the **upstream**, a second idhub whose tenant ``corp`` plays the company's
OpenID provider (database ``bench_upstream``; it runs on the load generator's CPU, since the figure is
the broker's). Each simulated browser signs in at the upstream once (a password, as a person would in
the morning); after that every measured sign-in is the full round trip with the upstream session
already there, so the figure is the broker's own work:

    app -> broker /authorize (idp_hint=corp, prompt=login: straight on to the upstream)
        -> upstream /authorize (session: straight back with a code)
        -> broker /broker/corp/callback (code redeemed upstream, ID token verified, UserInfo if needed,
           link found, SSO session started) -> app with its code

Figures: completed sign-ins per second, their p50/p99, and the **broker hop**: the time the broker took
to answer its own requests of a sign-in (authorize and callback; ``login`` too where a version of idhub
still passes there), as the browser saw them; the callback's own calls to the upstream (token, and
UserInfo where the ID token lacks claims) are part of it, the browser's visit to the upstream is not.
Two phases after a warm-up: one browser alone for ``--latency-duration`` seconds (the hop the broker
adds, with no other sign-in to queue behind), then ``--concurrency`` browsers at once for ``--duration``
seconds (the rate; its hop includes the queueing). Targets (#14): >= 100 sign-ins per second with every
browser; broker hop p50 < 20 ms with one.

Usage: ``python bench/broker.py [--duration 15] [--concurrency 8] [--latency-duration 10]``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit

import httpx

sys.path.insert(0, str(Path(__file__).parent))
import run as base
from lean_browser import LeanBrowser

APP_REDIRECT = "http://127.0.0.1:9/app-callback"
PASSWORD = "bench-password-0123456789"
UPSTREAM_DATABASE = "postgresql+asyncpg://postgres@127.0.0.1:5432/bench_upstream"


def cpu_seconds(pid: int) -> float:
    """Return the CPU time (user + system, seconds) process ``pid`` has used so far (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def postgres_cpu_seconds() -> dict[int, float]:
    """Return the CPU time (seconds) each PostgreSQL process on this machine has used so far, by pid.

    The server is shared, so this counts every database's work, which during a run is the broker's and
    the upstream's; compare two readings with :func:`postgres_cpu_used` (backends come and go).
    """
    used: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() in ("postgres", "postmaster"):
                used[int(entry.name)] = cpu_seconds(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
    return used


def postgres_cpu_used(before: dict[int, float], after: dict[int, float]) -> float:
    """Return the PostgreSQL CPU seconds used between two readings (a backend new since counts whole)."""
    return sum(seconds - before.get(pid, 0.0) for pid, seconds in after.items())


def percentile(values: list[float], p: float) -> float | None:
    """Return the ``p``-th percentile of sorted ``values``."""
    if not values:
        return None
    return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))]


async def upstream_login(http: httpx.AsyncClient, authorize_url: str, username: str) -> None:
    """Sign in once at the upstream through its login form (gives the browser its upstream session)."""
    response = await http.get(authorize_url)
    for _ in range(10):
        if response.status_code in (302, 303):
            location = urljoin(str(response.url), response.headers["location"])
            if "/broker/" in location:
                return  # on the way back to the broker: the upstream session exists now
            response = await http.get(location)
        elif response.status_code == 200:
            action, inputs = base.login_form(response.text)
            inputs.update(username=username, password=PASSWORD)
            response = await http.post(urljoin(str(response.url), action), data=inputs)
        else:
            raise RuntimeError(f"upstream login: {response.status_code} {response.text[:200]}")
    raise RuntimeError("upstream login: too many steps")


STEPS = ("authorize", "login", "upstream", "callback")


def _step_of(url: str, broker_issuer: str) -> str:
    """Name the step a request is: the broker's authorize, login or callback, or the upstream visit."""
    if not url.startswith(broker_issuer):
        return "upstream"
    path = urlsplit(url).path
    return "callback" if path.endswith("/callback") else "login" if path.endswith("/login") else "authorize"


async def brokered_sign_in(
    http: httpx.AsyncClient | LeanBrowser,
    *,
    broker_issuer: str,
    client_id: str,
    steps: dict[str, list[float]] | None = None,
) -> float:
    """Run one brokered sign-in; return the broker's own time (ms) across its requests.

    ``steps`` collects each request's time (ms) by step: the broker's ``authorize``, ``login`` and
    ``callback``, and the browser's visit to the ``upstream``.
    """
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    query = urlencode(
        {
            "response_type": "code",
            "client_id": client_id,
            "redirect_uri": APP_REDIRECT,
            "scope": "openid",
            "state": secrets.token_urlsafe(8),
            "nonce": secrets.token_urlsafe(8),
            "code_challenge": challenge,
            "code_challenge_method": "S256",
            "idp_hint": "corp",
            "prompt": "login",
        }
    )
    url = f"{broker_issuer}/authorize?{query}"
    broker_ms = 0.0
    for _ in range(8):
        started = time.perf_counter()
        response = await http.get(url)
        took = (time.perf_counter() - started) * 1000
        if url.startswith(broker_issuer):
            broker_ms += took
        if steps is not None:
            steps[_step_of(url, broker_issuer)].append(took)
        if response.status_code not in (302, 303):
            raise RuntimeError(f"{response.status_code} at {url[:80]}: {response.text[:200]}")
        url = urljoin(url, response.headers["location"])
        if url.startswith(APP_REDIRECT):
            if "code" not in parse_qs(urlsplit(url).query):
                raise RuntimeError(f"back at the app without a code: {url}")
            return broker_ms
    raise RuntimeError("too many steps")


async def drive(args: argparse.Namespace, *, broker_issuer: str, upstream_issuer: str, client_id: str,
                broker_client: str, users: list[str],
                pids: dict[str, int]) -> dict[str, dict[str, Any] | None]:  # fmt: skip
    """Sign every browser in upstream once, warm up, then measure one browser alone and all of them at once."""
    limits = httpx.Limits(max_connections=4, max_keepalive_connections=4)
    browsers = [httpx.AsyncClient(timeout=30, limits=limits, follow_redirects=False) for _ in users]
    measured: list[httpx.AsyncClient | LeanBrowser] = []
    try:
        for http, username in zip(browsers, users, strict=True):
            # The first brokered sign-in of each browser goes through the upstream's login form.
            verifier = secrets.token_urlsafe(48)
            challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
            query = urlencode({"response_type": "code", "client_id": client_id, "redirect_uri": APP_REDIRECT,
                               "scope": "openid", "code_challenge": challenge, "code_challenge_method": "S256",
                               "idp_hint": "corp", "nonce": "n"})  # fmt: skip
            first = await http.get(f"{broker_issuer}/authorize?{query}")
            upstream_start = await http.get(urljoin(broker_issuer, first.headers["location"]))
            await upstream_login(http, upstream_start.headers["location"], username)

        # The measured loop: the lean browser (unless --httpx-browsers), carrying the cookies set so far.
        measured = list(browsers)
        if not args.httpx_browsers:
            measured = []
            for http in browsers:
                lean = LeanBrowser(timeout=30)
                for cookie in http.cookies.jar:
                    lean.add_cookie(cookie.name, cookie.value or "", cookie.path)
                measured.append(lean)

        async def browser(http: httpx.AsyncClient | LeanBrowser, until: float, run: _Run | None) -> None:
            while time.monotonic() < until:
                started = time.perf_counter()
                try:
                    hop = await brokered_sign_in(
                        http, broker_issuer=broker_issuer, client_id=client_id, steps=run.steps if run else None
                    )
                except Exception as exc:
                    if run is not None:
                        run.errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                if run is not None:
                    run.totals.append((time.perf_counter() - started) * 1000)
                    run.hops.append(hop)

        async def measure(browsers: list[httpx.AsyncClient | LeanBrowser], duration: float) -> dict[str, Any]:
            run = _Run()
            cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
            postgres_before = postgres_cpu_seconds()
            started = time.monotonic()
            await asyncio.gather(*(browser(http, started + duration, run) for http in browsers))
            elapsed = time.monotonic() - started
            cpu_used = {name: cpu_seconds(pid) - cpu_before[name] for name, pid in pids.items()}
            cpu_used["postgres"] = postgres_cpu_used(postgres_before, postgres_cpu_seconds())
            return run.figures(elapsed, cpu_used)

        until = time.monotonic() + args.warmup
        await asyncio.gather(*(browser(http, until, None) for http in measured))
        # The hop the broker adds is measured with one browser (no queueing behind other sign-ins); the rate
        # with every browser at once.
        alone = await measure(measured[:1], args.latency_duration) if args.latency_duration > 0 else None
        figures = await measure(measured, args.duration)
    finally:
        for http in [*browsers, *measured]:
            await http.aclose()
    return {"alone": alone, "loaded": figures}


class _Run:
    """What one measured phase collected."""

    def __init__(self) -> None:
        self.totals: list[float] = []
        self.hops: list[float] = []
        self.steps: dict[str, list[float]] = {name: [] for name in STEPS}
        self.errors: list[str] = []

    def figures(self, elapsed: float, cpu_used: dict[str, float]) -> dict[str, Any]:
        totals, hops = sorted(self.totals), sorted(self.hops)
        if self.errors:
            print(f"  {len(self.errors)} failed sign-ins, first: {self.errors[0]}")
        return {
            "sign_ins_per_second": len(totals) / elapsed,
            "sign_ins": len(totals),
            "errors": len(self.errors),
            "p50_ms": percentile(totals, 50),
            "p99_ms": percentile(totals, 99),
            "broker_hop_p50_ms": percentile(hops, 50),
            "broker_hop_p99_ms": percentile(hops, 99),
            **{f"{name}_p50_ms": percentile(sorted(values), 50) for name, values in self.steps.items()},
            **{f"{name}_cpu_ms_per_sign_in": 1000 * used / max(1, len(totals)) for name, used in cpu_used.items()},
            **{f"{name}_cpu_busy": used / elapsed for name, used in cpu_used.items()},
        }


def _pid(server: base.Server) -> int:
    assert server.process is not None
    return server.process.pid


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument(
        "--latency-duration", type=float, default=10.0, help="seconds of one browser alone first (the hop); 0 skips"
    )
    parser.add_argument("--concurrency", type=int, default=8, help="simulated browsers")
    parser.add_argument(
        "--httpx-browsers",
        action="store_true",
        help="measure with httpx clients as browsers (heavier on the upstream's CPU) instead of the lean browser",
    )
    parser.add_argument("--database-url", default=os.environ.get("IDHUB_BENCH_DATABASE_URL", base.DEFAULT_DATABASE_URL))
    parser.add_argument("--upstream-database-url", default=UPSTREAM_DATABASE)
    base.add_pinning_arguments(parser)
    args = parser.parse_args()
    pinning = base.pinning_from_args(parser, args)
    print("\n".join(base.pinning_header(pinning.as_dict())), flush=True)
    work = Path(tempfile.mkdtemp(prefix="idhub-bench-broker-"))
    broker_port, upstream_port = base.free_port(), base.free_port()
    broker_url, upstream_url = f"http://127.0.0.1:{broker_port}", f"http://127.0.0.1:{upstream_port}"

    def env_for(database: str, public_url: str, name: str) -> dict[str, str]:
        env = {
            **os.environ,
            "IDHUB_DATABASE_URL": database,
            "IDHUB_PUBLIC_URL": public_url,
            "IDHUB_MASTER_KEY": base64.urlsafe_b64encode(secrets.token_bytes(32)).decode(),
            "IDHUB_DATA_DIR": str(work / name),
            "IDHUB_LOG_LEVEL": "WARNING",
        }
        for key in [k for k in env if k.startswith("IDHUB_REDIS")]:
            env.pop(key)
        return env

    broker_env = env_for(args.database_url, broker_url, "broker")
    upstream_env = env_for(args.upstream_database_url, upstream_url, "upstream")
    for database, env in ((args.database_url, broker_env), (args.upstream_database_url, upstream_env)):
        base.reset_database(database)
        base.idhub_cli(env, "migrate")
    apps = base.idhub_cli(broker_env, "init", "--tenant", "apps")
    corp = base.idhub_cli(upstream_env, "init", "--tenant", "corp")
    callback = f"{apps['issuer']}/broker/corp/callback"
    upstream_client = base.idhub_cli(
        upstream_env, "client", "create", "--tenant", "corp", "--name", "broker", "--redirect-uri", callback,
        "--grant-type", "authorization_code", "--scope", "openid profile email", "--first-party", "--json",
    )  # fmt: skip
    app = base.idhub_cli(
        broker_env, "client", "create", "--tenant", "apps", "--name", "app", "--redirect-uri", APP_REDIRECT,
        "--grant-type", "authorization_code", "--scope", "openid", "--first-party", "--json",
    )  # fmt: skip
    users = [f"person{i}" for i in range(args.concurrency)]
    for username in users:
        base.idhub_cli(
            upstream_env, "user", "create", "--tenant", "corp", "--username", username,
            "--email", f"{username}@corp.example", "--password-stdin", "--json", stdin=PASSWORD + "\n",
        )  # fmt: skip

    upstream_pinning = base.Pinning(server_cpu=pinning.client_cpu, client_cpu=None, method=pinning.method)
    upstream = base.Server(
        "upstream", [*base.IDHUB, "serve", "--host", "127.0.0.1", "--port", str(upstream_port), "--workers", "1"],
        env=upstream_env, cwd=work, log_dir=work, pinning=upstream_pinning,
    )  # fmt: skip
    broker = base.Server(
        "broker", [*base.IDHUB, "serve", "--host", "127.0.0.1", "--port", str(broker_port), "--workers", "1"],
        env=broker_env, cwd=work, log_dir=work, pinning=pinning,
    )  # fmt: skip
    with base.running(upstream, f"{upstream_url}/healthz"):
        base.idhub_cli(
            broker_env, "idp", "create", "--tenant", "apps", "--alias", "corp", "--type", "oidc",
            "--issuer", corp["issuer"], "--client-id", upstream_client["client_id"], "--client-secret-stdin",
            "--internal", "--json", stdin=upstream_client["client_secret"] + "\n",
        )  # fmt: skip
        with base.running(broker, f"{broker_url}/healthz"), pinning.load_generator():
            results = asyncio.run(
                drive(
                    args,
                    broker_issuer=apps["issuer"],
                    upstream_issuer=corp["issuer"],
                    client_id=app["client_id"],
                    broker_client=upstream_client["client_id"],
                    users=users,
                    pids={"broker": _pid(broker), "upstream": _pid(upstream), "load_generator": os.getpid()},
                )
            )
    info = base.machine_info(pinning)
    print()
    alone, figures = results["alone"], results["loaded"]
    assert figures is not None
    if alone is not None:
        print(f"one browser ({args.latency_duration:g} s): {alone['sign_ins_per_second']:.1f} sign-ins/s; "
              f"broker hop p50 {alone['broker_hop_p50_ms']:.1f} ms, p99 {alone['broker_hop_p99_ms']:.1f} ms; "
              f"sign-in p50 {alone['p50_ms']:.1f} ms; broker CPU {alone['broker_cpu_ms_per_sign_in']:.1f} ms "
              "per sign-in")  # fmt: skip
    print(f"{args.concurrency} browsers: {figures['sign_ins_per_second']:.1f} brokered sign-ins/s "
          f"({figures['sign_ins']} in {args.duration:g} s, {figures['errors']} failed)")  # fmt: skip
    print(f"  sign-in p50 {figures['p50_ms']:.1f} ms, p99 {figures['p99_ms']:.1f} ms")
    print(f"  broker hop p50 {figures['broker_hop_p50_ms']:.1f} ms, p99 {figures['broker_hop_p99_ms']:.1f} ms "
          "(queueing included)")  # fmt: skip
    taken = [name for name in STEPS if figures[f"{name}_p50_ms"] is not None]
    print("  step p50: " + ", ".join(f"{name} {figures[f'{name}_p50_ms']:.1f} ms" for name in taken))
    print("  CPU per sign-in: " + ", ".join(
        f"{name} {figures[f'{name}_cpu_ms_per_sign_in']:.1f} ms ({100 * (figures[f'{name}_cpu_busy'] or 0):.0f}% busy)"
        for name in ("broker", "upstream", "load_generator", "postgres")))  # fmt: skip
    total_cpu = sum(
        figures[f"{name}_cpu_ms_per_sign_in"] or 0 for name in ("broker", "upstream", "load_generator", "postgres")
    )
    cores = len(os.sched_getaffinity(0))
    print(f"  all processes: {total_cpu:.1f} ms of CPU per sign-in; on {cores} cores at most "
          f"{1000 * cores / total_cpu:.0f} sign-ins/s even with every core busy; the broker alone on its core: "
          f"{1000 / (figures['broker_cpu_ms_per_sign_in'] or 1):.0f}/s")  # fmt: skip
    rate_ok = figures["sign_ins_per_second"] >= 100 and figures["errors"] == 0
    hop_ok = alone is not None and (alone["broker_hop_p50_ms"] or 1e9) < 20
    ok = rate_ok and hop_ok
    print(f"  target >= 100 sign-ins/s with {args.concurrency} browsers: {'PASS' if rate_ok else 'FAIL'}; "
          f"broker hop p50 < 20 ms with one browser: {'PASS' if hop_ok else 'FAIL'}")  # fmt: skip
    print(f"machine: {', '.join(f'{k}={v}' for k, v in info.items() if k != 'pinning')}")
    print(f"settings: concurrency={args.concurrency}, duration_s={args.duration:g}, broker=idhub serve --workers 1 "
          f"(CPU {pinning.server_cpu}), upstream=idhub serve --workers 1 (CPU {pinning.client_cpu}, with the load "
          "generator), PostgreSQL not pinned")  # fmt: skip
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
