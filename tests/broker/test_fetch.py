"""The outbound HTTP guard against real loopback servers: addresses, schemes, redirects, deadline, size cap.

The servers are plain ``http.server`` threads on 127.0.0.1 with canned answers, so every behaviour
(a slow drip, an endless body, a redirect to another port) happens over a real socket.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from idhub.broker.errors import UpstreamConfigError, UpstreamRefused, UpstreamUnavailable
from idhub.broker.fetch import Fetcher, FetchPolicy, address_allowed, check_url

INTERNAL = FetchPolicy(internal=True, timeout=2.0)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    other_port = 0  # the port of the other server (another host:port for redirects)
    paths: list[str]

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.paths = []

    @property
    def port(self) -> int:
        return int(self.server_address[1])


class _Handler(BaseHTTPRequestHandler):
    """Canned answers by path; each is one behaviour a hostile or broken upstream may show."""

    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._route()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        self._route()

    def _send(self, status: int, body: bytes, content_type: str = "application/json", **headers: str) -> None:
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.end_headers()
        self.wfile.write(body)

    def _redirect(self, location: str, status: int = 302) -> None:
        self._send(status, b"", "text/plain", location=location)

    def _route(self) -> None:
        path = self.path.split("?", 1)[0]
        self.server.paths.append(path)
        port, other = self.server.port, self.server.other_port
        if path == "/json":
            self._send(200, b'{"ok": true}')
        elif path == "/echo":
            seen = {name.lower(): value for name, value in self.headers.items()}
            self._send(200, json.dumps({"method": self.command, "headers": seen}).encode())
        elif path == "/slow":
            self._drip()
        elif path == "/huge-declared":
            self._send(200, b"x" * 4096)
        elif path == "/huge-streamed":
            self._stream_without_length(b"x" * 1024, 64)
        elif path == "/gzip":
            self._send(200, gzip.compress(b'{"zipped": true}'), content_encoding="gzip")
        elif path == "/same-host-relative":
            self._redirect("/json")
        elif path == "/same-host-absolute":
            self._redirect(f"http://127.0.0.1:{port}/json", 307)
        elif path == "/other-port":
            self._redirect(f"http://127.0.0.1:{other}/json")
        elif path == "/other-host-name":
            self._redirect(f"http://localhost:{port}/json")
        elif path == "/userinfo":
            self._redirect(f"http://user@127.0.0.1:{port}/json")
        elif path == "/loop":
            self._redirect("/loop")
        elif path.startswith("/hops/"):
            left = int(path.rsplit("/", 1)[1])
            self._redirect(f"/hops/{left - 1}") if left else self._send(200, b'{"arrived": true}')
        elif path == "/see-other":
            self._redirect("/echo", 303)
        elif path == "/500":
            self._send(500, b'{"error": "server_error"}')
        elif path == "/token-error":
            self._send(400, b'{"error": "invalid_grant", "error_description": "code used"}')
        elif path == "/401-error":
            self._send(401, b'{"error": "invalid_client"}')
        elif path == "/400-html":
            self._send(400, b"<html>bad request</html>", "text/html")
        elif path == "/400-no-error":
            self._send(400, b'{"message": "nope"}')
        elif path == "/404":
            self._send(404, b'{"error": "not_found"}')
        elif path == "/not-json":
            self._send(200, b"<html>hello</html>", "text/html")
        elif path == "/array":
            self._send(200, b"[1, 2]")
        elif path == "/nan":
            self._send(200, b'{"x": NaN}')
        elif path == "/bytes":
            self._send(200, b"\x00\x01raw", "application/octet-stream")
        else:
            self._send(404, b"{}")

    def _drip(self) -> None:
        """Declare a small body, then send it a byte every 0.1 s: each read is quick, the whole is not."""
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", "100")
        self.end_headers()
        try:
            for _ in range(100):
                self.wfile.write(b" ")
                self.wfile.flush()
                time.sleep(0.1)
        except OSError:
            pass  # the client gave up, as it should

    def _stream_without_length(self, chunk: bytes, count: int) -> None:
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("connection", "close")
        self.end_headers()
        self.close_connection = True
        try:
            for _ in range(count):
                self.wfile.write(chunk)
        except OSError:
            pass


def _start(server: _Server) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    return thread


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[_Server, _Server]]:
    """Two loopback servers: the upstream, and another host:port it may try to redirect to."""
    main, other = _Server(), _Server()
    main.other_port, other.other_port = other.port, main.port
    threads = [_start(main), _start(other)]
    try:
        yield main, other
    finally:
        for server in (main, other):
            server.shutdown()
            server.server_close()
        for thread in threads:
            thread.join(timeout=1)


@pytest.fixture
def upstream(servers: tuple[_Server, _Server]) -> _Server:
    servers[0].paths.clear()
    servers[1].paths.clear()
    return servers[0]


@pytest.fixture
async def fetcher() -> Any:
    fetcher = Fetcher()
    try:
        yield fetcher
    finally:
        await fetcher.aclose()


def url(server: _Server, path: str) -> str:
    return f"http://127.0.0.1:{server.port}{path}"


# --- addresses ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.0.0.1",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",  # cloud metadata
        "100.64.0.1",  # shared address space (RFC 6598)
        "0.0.0.0",
        "224.0.0.1",
        "240.0.0.1",
        "255.255.255.255",
        "::1",
        "::",
        "::ffff:127.0.0.1",
        "::ffff:169.254.169.254",
        "::127.0.0.1",  # IPv4-compatible
        "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
        "2002:7f00:1::1",  # 6to4 of 127.0.0.1
        "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo
        "fc00::1",
        "fd12:3456::1",
        "fe80::1",
        "fe80::1%eth0",
        "fec0::1",  # site-local
        "ff02::1",
        "2001:db8::1",  # documentation
        "not-an-address",
    ],
)
def test_address_allowed_non_global_refused(address: str) -> None:
    assert not address_allowed(address)


@pytest.mark.parametrize(
    "address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808", "2002:808:808::1"]
)
def test_address_allowed_global_allowed(address: str) -> None:
    assert address_allowed(address)


@pytest.mark.parametrize(
    "bad",
    [
        "http://idp.example/",  # plain http
        "ftp://idp.example/",
        "https:///path",  # no host
        "https://user:pw@idp.example/",
        "https://user@idp.example/",
        "https://@idp.example/",
        "https://idp.example/#frag",
        "https://idp.example/#",
        "https://idp.example:99999/",
        "https://idp.example:0/",
        "https://127.0.0.1/",
        "https://[::1]/",
        "https://[::ffff:10.0.0.1]/",
        "https://169.254.169.254/latest/meta-data/",
        "not a url",
    ],
)
def test_check_url_bad_url_refused(bad: str) -> None:
    with pytest.raises(UpstreamConfigError):
        check_url(bad, internal=False)


def test_check_url_internal_allows_http_and_loopback() -> None:
    check_url("http://127.0.0.1:8080/x", internal=True)
    check_url("https://idp.example/.well-known/openid-configuration?x=1", internal=False)
    with pytest.raises(UpstreamConfigError):
        check_url("http://user@127.0.0.1/", internal=True)  # userinfo never, even internal


async def test_fetch_loopback_without_internal_refused(upstream: _Server, fetcher: Fetcher) -> None:
    with pytest.raises(UpstreamConfigError):
        await fetcher.get_json(f"https://127.0.0.1:{upstream.port}/json", policy=FetchPolicy())
    assert upstream.paths == []


async def test_fetch_loopback_with_internal_allowed(upstream: _Server, fetcher: Fetcher) -> None:
    assert await fetcher.get_json(url(upstream, "/json"), policy=INTERNAL) == {"ok": True}


async def test_fetch_http_without_internal_refused(upstream: _Server, fetcher: Fetcher) -> None:
    with pytest.raises(UpstreamConfigError):
        await fetcher.get_json(url(upstream, "/json"), policy=FetchPolicy())
    with pytest.raises(UpstreamConfigError):
        await fetcher.get_json("http://idp.example/json", policy=FetchPolicy())
    assert upstream.paths == []


async def test_fetch_hostname_resolving_to_loopback_refused(upstream: _Server, fetcher: Fetcher) -> None:
    # https and a name pass the URL check; the address check at connect time refuses what it resolves to.
    with pytest.raises(UpstreamConfigError) as caught:
        await fetcher.get_json(f"https://localhost:{upstream.port}/json", policy=FetchPolicy(timeout=2.0))
    assert "not allowed" in caught.value.detail
    assert upstream.paths == []


def _fake_resolver(monkeypatch: pytest.MonkeyPatch, answers: dict[str, list[str]], calls: list[str]) -> None:
    loop = asyncio.get_running_loop()

    async def getaddrinfo(host: str, port: int, **kwargs: Any) -> list[Any]:
        calls.append(host)
        return [
            (socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port))
            for a in answers[host]
        ]

    monkeypatch.setattr(loop, "getaddrinfo", getaddrinfo)


async def test_fetch_name_with_one_private_address_refused(
    upstream: _Server, fetcher: Fetcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    _fake_resolver(monkeypatch, {"mixed.example": ["93.184.216.34", "127.0.0.1"]}, calls)
    with pytest.raises(UpstreamConfigError):
        await fetcher.get_json(f"https://mixed.example:{upstream.port}/json", policy=FetchPolicy(timeout=2.0))
    assert calls == ["mixed.example"]
    assert upstream.paths == []


async def test_fetch_connects_to_the_address_resolved_once(
    upstream: _Server, fetcher: Fetcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One lookup, and the connection goes to what it answered (the name itself resolves nowhere).
    calls: list[str] = []
    _fake_resolver(monkeypatch, {"upstream.invalid": ["127.0.0.1"]}, calls)
    answer = await fetcher.get_json(f"http://upstream.invalid:{upstream.port}/echo", policy=INTERNAL)
    assert calls == ["upstream.invalid"]
    assert answer["headers"]["host"] == f"upstream.invalid:{upstream.port}"


# --- what is sent ---------------------------------------------------------------------------------------


async def test_fetch_get_json_sends_accept_and_user_agent(upstream: _Server, fetcher: Fetcher) -> None:
    answer = await fetcher.get_json(url(upstream, "/echo"), policy=INTERNAL, headers={"authorization": "Bearer t"})
    assert answer["method"] == "GET"
    assert answer["headers"]["accept"] == "application/json"
    assert answer["headers"]["user-agent"] == "idhub"
    assert answer["headers"]["authorization"] == "Bearer t"


async def test_fetch_gzip_answer_decoded(upstream: _Server, fetcher: Fetcher) -> None:
    assert await fetcher.get_json(url(upstream, "/gzip"), policy=INTERNAL) == {"zipped": True}


async def test_fetch_get_bytes_returns_body(upstream: _Server, fetcher: Fetcher) -> None:
    assert await fetcher.get_bytes(url(upstream, "/bytes"), policy=INTERNAL) == b"\x00\x01raw"


async def test_fetch_after_aclose_opens_a_new_client(upstream: _Server, fetcher: Fetcher) -> None:
    await fetcher.get_json(url(upstream, "/json"), policy=INTERNAL)
    await fetcher.aclose()
    assert await fetcher.get_json(url(upstream, "/json"), policy=INTERNAL) == {"ok": True}


# --- deadline and size ----------------------------------------------------------------------------------


async def test_fetch_slow_drip_stopped_at_deadline(upstream: _Server, fetcher: Fetcher) -> None:
    policy = FetchPolicy(internal=True, timeout=0.5)
    started = time.monotonic()
    with pytest.raises(UpstreamUnavailable):
        await fetcher.get_json(url(upstream, "/slow"), policy=policy)
    elapsed = time.monotonic() - started
    assert 0.4 < elapsed < policy.timeout + 1


async def test_fetch_unreachable_port_unavailable(fetcher: Fetcher) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound, not listening: the connection is refused
        with pytest.raises(UpstreamUnavailable):
            await fetcher.get_json(f"http://127.0.0.1:{port}/json", policy=INTERNAL)


async def test_fetch_declared_oversize_refused(upstream: _Server, fetcher: Fetcher) -> None:
    with pytest.raises(UpstreamUnavailable) as caught:
        await fetcher.get_bytes(url(upstream, "/huge-declared"), policy=FetchPolicy(internal=True, max_bytes=1000))
    assert "cap" in str(caught.value.internal)


async def test_fetch_streamed_oversize_refused(upstream: _Server, fetcher: Fetcher) -> None:
    with pytest.raises(UpstreamUnavailable) as caught:
        await fetcher.get_bytes(url(upstream, "/huge-streamed"), policy=FetchPolicy(internal=True, max_bytes=10_000))
    assert "more than 10000 bytes" in str(caught.value.internal)


async def test_fetch_body_at_cap_accepted(upstream: _Server, fetcher: Fetcher) -> None:
    body = await fetcher.get_bytes(url(upstream, "/huge-declared"), policy=FetchPolicy(internal=True, max_bytes=4096))
    assert len(body) == 4096


# --- redirects ------------------------------------------------------------------------------------------


async def test_fetch_same_host_redirect_followed(upstream: _Server, fetcher: Fetcher) -> None:
    assert await fetcher.get_json(url(upstream, "/same-host-relative"), policy=INTERNAL) == {"ok": True}
    assert await fetcher.get_json(url(upstream, "/same-host-absolute"), policy=INTERNAL) == {"ok": True}


async def test_fetch_three_redirects_followed_fourth_refused(upstream: _Server, fetcher: Fetcher) -> None:
    assert await fetcher.get_json(url(upstream, "/hops/3"), policy=INTERNAL) == {"arrived": True}
    with pytest.raises(UpstreamRefused) as caught:
        await fetcher.get_json(url(upstream, "/hops/4"), policy=INTERNAL)
    assert caught.value.reason == "redirect_refused"


async def test_fetch_redirect_loop_refused(upstream: _Server, fetcher: Fetcher) -> None:
    with pytest.raises(UpstreamRefused) as caught:
        await fetcher.get_json(url(upstream, "/loop"), policy=INTERNAL)
    assert caught.value.reason == "redirect_refused"
    assert upstream.paths == ["/loop"] * 4


@pytest.mark.parametrize("path", ["/other-port", "/other-host-name", "/userinfo"])
async def test_fetch_cross_origin_redirect_refused(
    servers: tuple[_Server, _Server], upstream: _Server, fetcher: Fetcher, path: str
) -> None:
    with pytest.raises(UpstreamRefused) as caught:
        await fetcher.get_json(url(upstream, path), policy=INTERNAL)
    assert caught.value.reason == "redirect_refused"
    assert servers[1].paths == []
    assert upstream.paths == [path]


async def test_fetch_post_303_redirect_becomes_get(upstream: _Server, fetcher: Fetcher) -> None:
    answer = await fetcher.post_form(url(upstream, "/see-other"), {"code": "c"}, policy=INTERNAL)
    assert answer["method"] == "GET"


# --- status and body ------------------------------------------------------------------------------------


async def test_fetch_server_error_unavailable(upstream: _Server, fetcher: Fetcher) -> None:
    with pytest.raises(UpstreamUnavailable):
        await fetcher.get_json(url(upstream, "/500"), policy=INTERNAL)
    with pytest.raises(UpstreamUnavailable):
        await fetcher.post_form(url(upstream, "/500"), {"a": "b"}, policy=INTERNAL)


async def test_fetch_client_error_refused(upstream: _Server, fetcher: Fetcher) -> None:
    for path in ("/404", "/token-error"):  # a GET's 4xx is never an answer, even with an error member
        with pytest.raises(UpstreamRefused) as caught:
            await fetcher.get_json(url(upstream, path), policy=INTERNAL)
        assert caught.value.reason == "upstream_error"


async def test_fetch_post_form_token_error_returned(upstream: _Server, fetcher: Fetcher) -> None:
    form = {"grant_type": "authorization_code", "code": "c", "client_secret": "s"}
    answer = await fetcher.post_form(url(upstream, "/token-error"), form, policy=INTERNAL)
    assert answer == {"error": "invalid_grant", "error_description": "code used"}
    assert await fetcher.post_form(url(upstream, "/401-error"), form, policy=INTERNAL) == {"error": "invalid_client"}


@pytest.mark.parametrize("path", ["/400-html", "/400-no-error", "/404"])
async def test_fetch_post_form_other_client_error_refused(upstream: _Server, fetcher: Fetcher, path: str) -> None:
    with pytest.raises(UpstreamRefused) as caught:
        await fetcher.post_form(url(upstream, path), {"a": "b"}, policy=INTERNAL)
    assert caught.value.reason == "upstream_error"


async def test_fetch_post_form_sends_form(upstream: _Server, fetcher: Fetcher) -> None:
    answer = await fetcher.post_form(url(upstream, "/echo"), {"a": "b"}, policy=INTERNAL)
    assert answer["method"] == "POST"
    assert answer["headers"]["content-type"] == "application/x-www-form-urlencoded"
    assert answer["headers"]["accept"] == "application/json"


@pytest.mark.parametrize("path", ["/not-json", "/array", "/nan"])
async def test_fetch_json_not_an_object_refused(upstream: _Server, fetcher: Fetcher, path: str) -> None:
    with pytest.raises(UpstreamRefused) as caught:
        await fetcher.get_json(url(upstream, path), policy=INTERNAL)
    assert caught.value.reason == "bad_json"
