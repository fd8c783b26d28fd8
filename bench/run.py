#!/usr/bin/env python3
"""Benchmark idhub against the bare stack it runs on, in one run on one machine, and print the figures.

1. A bare FastAPI/uvicorn echo endpoint (``bench/echo_app.py``; one worker, uvloop + httptools, no
   access log) measured with wrk: the ceiling of the stack here.
2. One idhub server process (``idhub serve --workers 1``) on PostgreSQL (the ``bench`` database is
   reset first), set up through the CLI (``idhub migrate``, ``idhub init``, ``idhub client create``),
   measured with wrk + Lua: client_credentials with an ES256 access token (client_secret_basic), the same
   with RS256, and introspection of one live access token.
3. Password sign-ins through the real login form (authorize -> login page -> POST username/password ->
   redirect back to the client with a code), driven by an asyncio httpx client.
4. A table: requests/s, ratio to echo, p50/p99 latency, target and PASS/FAIL, plus machine information.

The server under test runs on one CPU core and the load generator on another (``--server-cpu``, default 0;
``--client-cpu``, default 1): servers are started under ``taskset -c <server-cpu>``, wrk under ``taskset -c
<client-cpu>``, and this process pins itself to the client CPU while it drives the sign-ins. With fewer than
two usable CPUs, or ``--no-pin``, everything runs unpinned and the report says so. PostgreSQL is a separate
system service and is not pinned.

This is not a test: it prints figures. Usage: ``python bench/run.py [--duration 10] [--json-out FILE]``.
Every server it starts is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
import os
import platform
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlencode, urljoin, urlsplit

import httpx

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
DEFAULT_DATABASE_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/bench"
IDHUB = [sys.executable, "-c", "import sys; from idhub.cli import main; sys.exit(main())"]
TENANT = "bench"
REDIRECT_URI = "http://127.0.0.1:9/callback"
PASSWORD = "bench-password-0123456789"


# --- CPU pinning ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Pinning:
    """Where the server under test and the load generator run: one CPU each, or unpinned (both None)."""

    server_cpu: int | None = None
    client_cpu: int | None = None
    method: str = ""  # "taskset" or "sched_setaffinity" (taskset not installed)
    warning: str = ""  # why the run is not pinned

    @property
    def pinned(self) -> bool:
        """Tell whether the server and the load generator are pinned."""
        return self.server_cpu is not None and self.client_cpu is not None

    def command(self, argv: list[str], cpu: int | None) -> tuple[list[str], Callable[[], None] | None]:
        """Return ``argv`` pinned to ``cpu`` (``taskset -c`` prefix, or a ``preexec_fn`` setting the affinity)."""
        if cpu is None:
            return argv, None
        if self.method == "taskset":
            return ["taskset", "-c", str(cpu), *argv], None
        return argv, lambda: os.sched_setaffinity(0, {cpu})

    def server_command(self, argv: list[str]) -> tuple[list[str], Callable[[], None] | None]:
        """Return a server's ``argv`` (and ``preexec_fn``) pinned to the server CPU."""
        return self.command(argv, self.server_cpu)

    def client_command(self, argv: list[str]) -> tuple[list[str], Callable[[], None] | None]:
        """Return a load generator's ``argv`` (and ``preexec_fn``) pinned to the client CPU."""
        return self.command(argv, self.client_cpu)

    @contextlib.contextmanager
    def load_generator(self) -> Iterator[None]:
        """Pin this process to the client CPU for the block (an in-process load generator); restore after."""
        if self.client_cpu is None:
            yield
            return
        previous = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {self.client_cpu})
        try:
            yield
        finally:
            os.sched_setaffinity(0, previous)

    def as_dict(self) -> dict[str, Any]:
        """Describe the pinning for the JSON output."""
        return {
            "pinned": self.pinned,
            "server_cpu": self.server_cpu,
            "client_cpu": self.client_cpu,
            "method": self.method or None,
            "warning": self.warning or None,
            "postgresql": "not pinned (system service)",
        }


def add_pinning_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--server-cpu``, ``--client-cpu`` and ``--no-pin``."""
    parser.add_argument("--server-cpu", type=int, default=0, help="CPU the server under test is pinned to")
    parser.add_argument("--client-cpu", type=int, default=1, help="CPU the load generator is pinned to")
    parser.add_argument("--no-pin", action="store_true", help="run the server and the load generator unpinned")


def pinning_from_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Pinning:
    """Decide the pinning: the two CPUs asked for, or unpinned (with a warning) when that is not possible."""
    if args.no_pin:
        return Pinning(warning="--no-pin given: server and load generator run unpinned; figures are noisier")
    if not hasattr(os, "sched_setaffinity"):
        return Pinning(warning="CPU affinity is not supported on this platform: running unpinned")
    usable = sorted(os.sched_getaffinity(0))
    if len(usable) < 2:
        return Pinning(
            warning=f"only {len(usable)} usable CPU ({usable}): server and load generator run unpinned on it"
        )
    if args.server_cpu == args.client_cpu:
        parser.error("--server-cpu and --client-cpu must differ")
    for option, cpu in (("--server-cpu", args.server_cpu), ("--client-cpu", args.client_cpu)):
        if cpu not in usable:
            parser.error(f"{option} {cpu} is not a usable CPU here (usable: {usable}); or pass --no-pin")
    method = "taskset" if shutil.which("taskset") else "sched_setaffinity"
    return Pinning(server_cpu=args.server_cpu, client_cpu=args.client_cpu, method=method)


def pinning_header(info: dict[str, Any] | None) -> list[str]:
    """Return the report's pinning line, and a warning line when unpinned, from ``Pinning.as_dict()``."""
    info = info or {}
    if not info.get("pinned"):
        return [
            "pinning: none (server and load generator share every CPU)",
            f"WARNING: not pinned: {info.get('warning') or 'unknown reason'}",
        ]
    return [
        f"pinning: server on CPU {info['server_cpu']}, load generator on CPU {info['client_cpu']} "
        f"({info['method']}; PostgreSQL not pinned)"
    ]


# --- wrk ------------------------------------------------------------------------------------------
@dataclass
class Figure:
    """One measured scenario."""

    name: str
    requests_per_second: float
    p50_ms: float | None
    p99_ms: float | None
    requests: int = 0
    errors: int = 0
    note: str = ""


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def parse_wrk(output: str, name: str) -> Figure:
    """Parse wrk's ``--latency`` report; raise ValueError when it is not one."""
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.MULTILINE)
    if rps is None:
        raise ValueError(f"no Requests/sec in wrk output:\n{output}")
    percentiles: dict[str, float] = {}
    distribution = output.split("Latency Distribution", 1)
    if len(distribution) == 2:
        for match in re.finditer(r"^\s*(\d+(?:\.\d+)?)%\s+([\d.]+)(us|ms|s|m)\b", distribution[1], re.MULTILINE):
            percent = str(float(match.group(1)))
            percentiles.setdefault(percent, float(match.group(2)) * _UNITS[match.group(3)])
    total = re.search(r"^\s*(\d+) requests in", output, re.MULTILINE)
    errors = 0
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", output)
    if non_2xx:
        errors += int(non_2xx.group(1))
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    if socket_errors:
        errors += sum(int(value) for value in socket_errors.groups())
    return Figure(
        name=name,
        requests_per_second=float(rps.group(1)),
        p50_ms=percentiles.get("50.0"),
        p99_ms=percentiles.get("99.0"),
        requests=int(total.group(1)) if total else 0,
        errors=errors,
    )


def lua_post(path: Path, *, body: str, headers: dict[str, str]) -> Path:
    """Write a wrk script that POSTs ``body`` with ``headers`` on every request."""
    lines = ['wrk.method = "POST"', f"wrk.body = {json.dumps(body)}"]
    for name, value in headers.items():
        lines.append(f"wrk.headers[{json.dumps(name)}] = {json.dumps(value)}")
    path.write_text("\n".join(lines) + "\n")
    return path


def run_wrk(
    url: str,
    script: Path,
    *,
    name: str,
    duration: float,
    connections: int,
    warmup: float,
    pinning: Pinning | None = None,
) -> Figure:
    """Warm up, then measure ``url`` with wrk (1 thread, ``connections`` keep-alive connections).

    wrk runs on the client CPU of ``pinning`` (``taskset -c``) when there is one.
    """
    pinning = pinning or Pinning()
    base = ["wrk", "-t1", f"-c{connections}", "--timeout", "5s", "-s", str(script)]
    if warmup > 0:
        argv, preexec = pinning.client_command([*base, f"-d{max(1, round(warmup))}s", url])
        subprocess.run(argv, preexec_fn=preexec, capture_output=True, text=True, check=False)
    argv, preexec = pinning.client_command([*base, f"-d{max(1, round(duration))}s", "--latency", url])
    completed = subprocess.run(argv, preexec_fn=preexec, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise RuntimeError(f"wrk failed ({completed.returncode}): {completed.stderr or completed.stdout}")
    return parse_wrk(completed.stdout, name)


def ensure_wrk() -> None:
    """Install Debian's wrk when missing (as root), or explain how."""
    if shutil.which("wrk"):
        return
    if hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get"):
        print("wrk not found: installing Debian's wrk package ...", flush=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=False, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=False, env=env)
    if not shutil.which("wrk"):
        sys.exit("wrk is required: apt-get install wrk")


# --- processes ------------------------------------------------------------------------------------
def free_port() -> int:
    """Return a free loopback TCP port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """A server process started by this script (and only stopped by it, by its pid).

    With a ``pinning``, the process runs on its server CPU (``taskset -c <cpu> argv...``).
    """

    def __init__(
        self,
        name: str,
        argv: list[str],
        *,
        env: dict[str, str],
        cwd: Path,
        log_dir: Path,
        pinning: Pinning | None = None,
    ) -> None:
        self.name = name
        self.pinning = pinning or Pinning()
        self.argv, self.preexec_fn = self.pinning.server_command(argv)
        self.env = env
        self.cwd = cwd
        self.log_path = log_dir / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, health_url: str, timeout: float = 60.0) -> None:
        """Start the process, wait until ``health_url`` answers 200 and check that it runs on its CPU."""
        log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            self.argv,
            env=self.env,
            cwd=self.cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=self.preexec_fn,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(health_url, timeout=1).status_code == 200:
                    self.check_affinity()
                    return
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not become healthy:\n{self.log_tail()}")

    def check_affinity(self) -> None:
        """Raise when the (pinned) server process may run on another CPU than its server CPU."""
        cpu = self.pinning.server_cpu
        if cpu is None or self.process is None:
            return
        allowed = os.sched_getaffinity(self.process.pid)
        if allowed != {cpu}:
            raise RuntimeError(f"{self.name} (pid {self.process.pid}) may run on CPUs {sorted(allowed)}, not {cpu}")

    def stop(self) -> None:
        """Stop the process (SIGTERM, then SIGKILL after 10 s)."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)

    def log_tail(self, lines: int = 30) -> str:
        """Return the end of the process's log."""
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


@contextlib.contextmanager
def running(server: Server, health_url: str) -> Iterator[Server]:
    """Run ``server`` for the duration of the block."""
    try:
        server.start(health_url)
        yield server
    finally:
        server.stop()


def server_env(database_url: str, base_url: str, work: Path) -> dict[str, str]:
    """Return the environment of a benchmarked idhub: its database, address, a fresh master key, no Redis."""
    env = {
        **os.environ,
        "IDHUB_DATABASE_URL": database_url,
        "IDHUB_PUBLIC_URL": base_url,
        "IDHUB_MASTER_KEY": base64.urlsafe_b64encode(secrets.token_bytes(32)).decode(),
        "IDHUB_DATA_DIR": str(work / "data"),
        "IDHUB_LOG_LEVEL": "WARNING",
    }
    for name in [k for k in env if k.startswith("IDHUB_REDIS")]:
        env.pop(name)
    return env


def idhub_cli(env: dict[str, str], *args: str, stdin: str | None = None) -> dict[str, Any]:
    """Run an ``idhub`` subcommand and return its JSON output."""
    completed = subprocess.run(
        [*IDHUB, *args], env=env, cwd=REPO_DIR, input=stdin, capture_output=True, text=True, check=False
    )
    if completed.returncode != 0:
        raise RuntimeError(f"idhub {' '.join(args)} failed: {completed.stderr.strip() or completed.stdout.strip()}")
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    assert isinstance(result, dict)
    return result


def reset_database(database_url: str) -> None:
    """Create the benchmark database if missing and empty its public schema."""
    import asyncpg

    dsn = database_url.replace("postgresql+asyncpg://", "postgresql://")
    parts = urlsplit(dsn)
    name = parts.path.lstrip("/")
    admin_dsn = parts._replace(path="/postgres").geturl()

    async def work() -> None:
        admin = await asyncpg.connect(admin_dsn, timeout=5)
        try:
            if not await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
                await admin.execute(f'CREATE DATABASE "{name}"')
        finally:
            await admin.close()
        conn = await asyncpg.connect(dsn, timeout=5)
        try:
            await conn.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public;")
        finally:
            await conn.close()

    asyncio.run(work())


def basic_auth(client_id: str, secret: str) -> str:
    """Return a client_secret_basic header value (RFC 6749 §2.3.1: form-urlencode, then Basic)."""
    raw = f"{quote(client_id, safe='')}:{quote(secret, safe='')}".encode()
    return "Basic " + base64.b64encode(raw).decode()


def jwt_alg(token: str) -> str:
    """Return the ``alg`` of a compact JWS header (unverified; for a sanity check only)."""
    header = token.split(".", 1)[0]
    return str(json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))["alg"])


# --- sign-ins -------------------------------------------------------------------------------------
class _LoginFormParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.forms: list[tuple[str, dict[str, str]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        if tag == "form":
            self.forms.append((values.get("action", ""), {}))
        elif tag == "input" and self.forms and values.get("name"):
            self.forms[-1][1][values["name"]] = values.get("value", "")


def login_form(html: str) -> tuple[str, dict[str, str]]:
    """Return the action and inputs of the page's form with a password field."""
    parser = _LoginFormParser()
    parser.feed(html)
    for action, inputs in parser.forms:
        if "password" in inputs and "csrf_token" in inputs:
            return action, inputs
    raise RuntimeError("no login form with username/password/csrf_token on the page")


@dataclass
class SignInSetup:
    """What a sign-in needs: the authorization endpoint, a client and some users."""

    authorization_endpoint: str
    issuer: str
    client_id: str
    usernames: list[str]


async def sign_in_once(http: httpx.AsyncClient, setup: SignInSetup, username: str) -> None:
    """Sign in once through the real pages, from a fresh browser, until the client gets a code."""
    http.cookies.clear()
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    query = urlencode(
        {
            "response_type": "code",
            "client_id": setup.client_id,
            "redirect_uri": REDIRECT_URI,
            "scope": "openid",
            "state": secrets.token_urlsafe(8),
            "nonce": secrets.token_urlsafe(8),
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        }
    )
    response = await http.get(f"{setup.authorization_endpoint}?{query}")
    posted = False
    for _ in range(10):
        if response.status_code in (302, 303):
            location = urljoin(str(response.url), response.headers["location"])
            if location.startswith(REDIRECT_URI):
                params = parse_qs(urlsplit(location).query)
                if "code" not in params:
                    raise RuntimeError(f"redirected to the client without a code: {location}")
                if not posted:
                    raise RuntimeError("got a code without signing in")
                return
            response = await http.get(location)
        elif response.status_code == 200 and not posted:
            action, inputs = login_form(response.text)
            inputs.update(username=username, password=PASSWORD)
            response = await http.post(urljoin(str(response.url), action), data=inputs)
            posted = True
        else:
            raise RuntimeError(f"unexpected {response.status_code} at {response.url}: {response.text[:200]}")
    raise RuntimeError("too many steps")


async def run_sign_ins(setup: SignInSetup, *, duration: float, concurrency: int, warmup: float) -> Figure:
    """Drive sign-ins for ``duration`` seconds with ``concurrency`` browsers; count completed ones."""
    latencies: list[float] = []
    errors: list[str] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def browser(index: int, until: float, record: bool) -> None:
        async with httpx.AsyncClient(timeout=30, limits=limits, follow_redirects=False) as http:
            n = index
            while time.monotonic() < until:
                username = setup.usernames[n % len(setup.usernames)]
                n += concurrency
                started = time.perf_counter()
                try:
                    await sign_in_once(http, setup, username)
                except Exception as exc:
                    if record:
                        errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                if record:
                    latencies.append((time.perf_counter() - started) * 1000)

    # One sign-in first: fail fast (and clearly) when the pages do not work.
    async with httpx.AsyncClient(timeout=30, follow_redirects=False) as http:
        await sign_in_once(http, setup, setup.usernames[0])
    if warmup > 0:
        until = time.monotonic() + warmup
        await asyncio.gather(*(browser(i, until, False) for i in range(concurrency)))
    started = time.monotonic()
    until = started + duration
    await asyncio.gather(*(browser(i, until, True) for i in range(concurrency)))
    elapsed = time.monotonic() - started
    latencies.sort()

    def percentile(p: float) -> float | None:
        if not latencies:
            return None
        return latencies[min(len(latencies) - 1, round(p / 100 * (len(latencies) - 1)))]

    note = f"{len(errors)} failed: {errors[0]}" if errors else ""
    return Figure(
        name="password sign-ins (login form)",
        requests_per_second=len(latencies) / elapsed,
        p50_ms=percentile(50),
        p99_ms=percentile(99),
        requests=len(latencies),
        errors=len(errors),
        note=note,
    )


# --- targets and report ---------------------------------------------------------------------------
@dataclass
class Target:
    """A goal for one figure: a minimum ratio to echo, a minimum rate, a p99 ceiling."""

    min_ratio: float | None = None
    min_rate: float | None = None
    max_p99_ms: float | None = None

    def describe(self) -> str:
        """Render the target for the table."""
        parts = []
        if self.min_ratio is not None:
            parts.append(f">= {self.min_ratio:g}x echo")
        if self.min_rate is not None:
            parts.append(f">= {self.min_rate:g}/s")
        if self.max_p99_ms is not None:
            parts.append(f"p99 < {self.max_p99_ms:g} ms")
        return ", ".join(parts)

    def met(self, figure: Figure, echo_rps: float | None) -> bool:
        """Tell whether ``figure`` meets the target (errors always fail)."""
        if figure.errors:
            return False
        if self.min_ratio is not None and (not echo_rps or figure.requests_per_second / echo_rps < self.min_ratio):
            return False
        if self.min_rate is not None and figure.requests_per_second < self.min_rate:
            return False
        return not (self.max_p99_ms is not None and (figure.p99_ms is None or figure.p99_ms >= self.max_p99_ms))


TARGETS = {
    "client_credentials ES256": Target(min_ratio=0.6, max_p99_ms=20),
    "introspection": Target(min_ratio=0.75),
    "client_credentials RS256": Target(min_ratio=0.2),
    "password sign-ins (login form)": Target(min_rate=30),
}


def machine_info(pinning: Pinning | None = None) -> dict[str, Any]:
    """Describe the machine the figures come from, and where the server and the load generator run."""
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    wrk_version = ""
    with contextlib.suppress(OSError):
        probe = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)
        wrk_version = (probe.stdout or probe.stderr).splitlines()[0] if (probe.stdout or probe.stderr) else ""
    return {
        "nproc": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_model": model,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "platform": platform.platform(),
        "wrk": wrk_version,
        "pinning": (pinning or Pinning(warning="no pinning asked for")).as_dict(),
    }


@dataclass
class Report:
    """Everything the run measured."""

    machine: dict[str, Any]
    settings: dict[str, Any]
    figures: list[Figure] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    def echo_rps(self) -> float | None:
        """Return the echo figure."""
        for figure in self.figures:
            if figure.name == "echo (bare FastAPI)":
                return figure.requests_per_second
        return None

    def render(self) -> str:
        """Render the table and machine information."""
        echo = self.echo_rps()
        header = f"{'scenario':<32} {'req/s':>9} {'x echo':>7} {'p50 ms':>8} {'p99 ms':>8}  {'target':<28} result"
        lines = [*pinning_header(self.machine.get("pinning")), "", header, "-" * len(header)]
        for figure in self.figures:
            target = TARGETS.get(figure.name)
            shows_ratio = target is None or target.min_ratio is not None
            ratio = f"{figure.requests_per_second / echo:.2f}" if echo and shows_ratio else "-"
            p50 = f"{figure.p50_ms:.2f}" if figure.p50_ms is not None else "-"
            p99 = f"{figure.p99_ms:.2f}" if figure.p99_ms is not None else "-"
            verdict = ("PASS" if target.met(figure, echo) else "FAIL") if target else ""
            described = target.describe() if target else "(ceiling)"
            lines.append(
                f"{figure.name:<32} {figure.requests_per_second:>9.1f} {ratio:>7} {p50:>8} {p99:>8}  "
                f"{described:<28} {verdict}"
            )
            if figure.errors or figure.note:
                lines.append(f"{'':<4}errors: {figure.errors} {figure.note}".rstrip())
        for name, reason in self.skipped.items():
            lines.append(f"{name:<32} skipped: {reason}")
        lines.append("")
        lines.append("machine: " + ", ".join(f"{k}={v}" for k, v in self.machine.items() if k != "pinning"))
        lines.append("settings: " + ", ".join(f"{k}={v}" for k, v in self.settings.items()))
        return "\n".join(lines)


# --- the run --------------------------------------------------------------------------------------
def bench_echo(args: argparse.Namespace, work: Path, report: Report, pinning: Pinning) -> None:
    """Measure the bare echo app."""
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "uvicorn",
        "--factory",
        "echo_app:create_app",
        "--app-dir",
        str(BENCH_DIR),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--loop",
        "uvloop",
        "--http",
        "httptools",
        "--no-access-log",
        "--no-server-header",
        "--log-level",
        "warning",
    ]
    server = Server("echo", argv, env=dict(os.environ), cwd=BENCH_DIR, log_dir=work, pinning=pinning)
    with running(server, f"http://127.0.0.1:{port}/healthz"):
        script = lua_post(
            work / "echo.lua",
            body="grant_type=client_credentials&scope=api",
            headers={"Content-Type": "application/x-www-form-urlencoded", "Authorization": basic_auth("a", "b")},
        )
        figure = run_wrk(
            f"http://127.0.0.1:{port}/echo",
            script,
            name="echo (bare FastAPI)",
            duration=args.duration,
            connections=args.connections,
            warmup=args.warmup,
            pinning=pinning,
        )
    report.figures.append(figure)
    print(f"  echo: {figure.requests_per_second:.0f} req/s", flush=True)


def bench_idhub(args: argparse.Namespace, work: Path, report: Report, pinning: Pinning) -> None:
    """Set up and measure one idhub server process on PostgreSQL."""
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    env = server_env(args.database_url, base_url, work)
    print("  resetting database and migrating ...", flush=True)
    reset_database(args.database_url)
    idhub_cli(env, "migrate")
    init = idhub_cli(env, "init", "--tenant", TENANT)
    clients: dict[str, tuple[str, str]] = {}
    for alg in ("ES256", "RS256"):
        created = idhub_cli(
            env,
            "client",
            "create",
            "--tenant",
            TENANT,
            "--name",
            f"bench {alg}",
            "--grant-type",
            "client_credentials",
            "--scope",
            "api",
            "--access-token-alg",
            alg,
            "--json",
        )
        clients[alg] = (created["client_id"], created["client_secret"])
    web = idhub_cli(
        env,
        "client",
        "create",
        "--tenant",
        TENANT,
        "--name",
        "bench web",
        "--redirect-uri",
        REDIRECT_URI,
        "--grant-type",
        "authorization_code",
        "--scope",
        "openid",
        "--first-party",
        "--json",
    )
    usernames = [f"user{i}" for i in range(args.users)]
    print(f"  creating {len(usernames)} users ...", flush=True)
    pending = [
        subprocess.Popen(
            [*IDHUB, "user", "create", "--tenant", TENANT, "--username", name, "--password-stdin", "--json"],
            env=env,
            cwd=REPO_DIR,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in usernames
    ]
    for process in pending:
        _out, err = process.communicate(PASSWORD + "\n", timeout=120)
        if process.returncode != 0:
            raise RuntimeError(f"idhub user create failed: {err.strip()}")

    argv = [*IDHUB, "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    server = Server("idhub", argv, env=env, cwd=work, log_dir=work, pinning=pinning)
    with running(server, f"{base_url}/healthz"):
        meta = httpx.get(f"{init['issuer']}/.well-known/openid-configuration", timeout=10).json()
        token_endpoint = meta["token_endpoint"]
        form = {"Content-Type": "application/x-www-form-urlencoded"}
        body = "grant_type=client_credentials&scope=api"

        token_ready = True
        for alg, (client_id, secret) in clients.items():
            probe = httpx.post(
                token_endpoint, content=body, headers={**form, "Authorization": basic_auth(client_id, secret)}
            )
            if probe.status_code != 200:
                token_ready = False
                reason = f"token endpoint answered {probe.status_code}: {probe.text[:200]}"
                report.skipped[f"client_credentials {alg}"] = reason
                continue
            got = jwt_alg(probe.json()["access_token"])
            if got != alg:
                raise RuntimeError(f"asked for an {alg} access token, got {got}")
            script = lua_post(
                work / f"cc_{alg}.lua", body=body, headers={**form, "Authorization": basic_auth(client_id, secret)}
            )
            print(f"  client_credentials {alg} ...", flush=True)
            figure = run_wrk(
                token_endpoint,
                script,
                name=f"client_credentials {alg}",
                duration=args.duration,
                connections=args.connections,
                warmup=args.warmup,
                pinning=pinning,
            )
            report.figures.append(figure)

        if token_ready and meta.get("introspection_endpoint"):
            client_id, secret = clients["ES256"]
            auth = {**form, "Authorization": basic_auth(client_id, secret)}
            token = httpx.post(token_endpoint, content=body, headers=auth).json()["access_token"]
            introspect_body = urlencode({"token": token, "token_type_hint": "access_token"})
            endpoint = meta["introspection_endpoint"]
            probe = httpx.post(endpoint, content=introspect_body, headers=auth)
            if probe.status_code == 200 and probe.json().get("active") is True:
                print("  introspection ...", flush=True)
                figure = run_wrk(
                    endpoint,
                    lua_post(work / "introspect.lua", body=introspect_body, headers=auth),
                    name="introspection",
                    duration=args.duration,
                    connections=args.connections,
                    warmup=args.warmup,
                    pinning=pinning,
                )
                after = httpx.post(endpoint, content=introspect_body, headers=auth)
                if after.status_code != 200 or after.json().get("active") is not True:
                    figure.note = "token no longer active after the run"
                    figure.errors += 1
                report.figures.append(figure)
            else:
                report.skipped["introspection"] = f"answered {probe.status_code}: {probe.text[:200]}"
        elif not meta.get("introspection_endpoint"):
            report.skipped["introspection"] = "no introspection_endpoint in discovery"
        else:
            report.skipped["introspection"] = "needs a token from the token endpoint"

        print("  password sign-ins ...", flush=True)
        setup = SignInSetup(meta["authorization_endpoint"], init["issuer"], web["client_id"], usernames)
        try:
            with pinning.load_generator():  # this process is the load generator: on the client CPU
                figure = asyncio.run(
                    run_sign_ins(setup, duration=args.signin_duration, concurrency=args.signin_concurrency, warmup=2)
                )
            report.figures.append(figure)
        except Exception as exc:
            report.skipped["password sign-ins (login form)"] = f"{type(exc).__name__}: {exc}"[:300]
        if server.process is not None and server.process.poll() is not None:
            raise RuntimeError(f"idhub exited during the run:\n{server.log_tail()}")


def main() -> int:
    """Run the benchmark and print the report."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10, help="seconds per wrk measurement")
    parser.add_argument("--warmup", type=float, default=2, help="seconds of warm-up before each measurement")
    parser.add_argument("--connections", type=int, default=32, help="wrk keep-alive connections")
    parser.add_argument("--database-url", default=os.environ.get("IDHUB_BENCH_DATABASE_URL", DEFAULT_DATABASE_URL))
    parser.add_argument("--signin-duration", type=float, default=15)
    parser.add_argument("--signin-concurrency", type=int, default=8)
    parser.add_argument("--users", type=int, default=8, help="users created for the sign-in run")
    parser.add_argument("--echo-only", action="store_true", help="measure only the echo ceiling")
    parser.add_argument("--json-out", type=Path, default=None, help="also write the figures as JSON")
    add_pinning_arguments(parser)
    args = parser.parse_args()
    pinning = pinning_from_args(parser, args)

    ensure_wrk()
    report = Report(
        machine=machine_info(pinning),
        settings={
            "connections": args.connections,
            "wrk_threads": 1,
            "duration_s": args.duration,
            "signin_concurrency": args.signin_concurrency,
            "signin_duration_s": args.signin_duration,
            "database": urlsplit(args.database_url.replace("+asyncpg", "")).path.lstrip("/"),
        },
    )
    print("\n".join(pinning_header(report.machine["pinning"])), flush=True)
    with tempfile.TemporaryDirectory(prefix="idhub-bench-") as tmp:
        work = Path(tmp)
        print("echo ceiling ...", flush=True)
        bench_echo(args, work, report, pinning)
        if not args.echo_only:
            print("idhub (one worker, PostgreSQL) ...", flush=True)
            try:
                bench_idhub(args, work, report, pinning)
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
                    "figures": [asdict(f) for f in report.figures],
                    "skipped": report.skipped,
                },
                indent=2,
            )
            + "\n"
        )
    echo = report.echo_rps()
    failed = any(t.met(f, echo) is False for f in report.figures if (t := TARGETS.get(f.name)) is not None)
    return 1 if failed or report.skipped else 0


if __name__ == "__main__":
    sys.exit(main())
