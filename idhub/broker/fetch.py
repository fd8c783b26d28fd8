"""Outbound HTTP to upstream identity providers: discovery, JWKS, metadata, token and UserInfo calls.

Every fetch has a deadline for the whole exchange, a cap on the answer's size, no redirect to another
host, and (unless the upstream was created ``--internal``) no connection to a loopback, private,
link-local or otherwise non-global address: an operator's typo or a hostile discovery document must
not turn idhub into a proxy into its own network (SSRF, OWASP ASVS V12.6). The address is checked
where the connection is made, on the very address connected to, so a name that resolves to a public
address when checked and to 127.0.0.1 when used (DNS rebinding) gets nowhere.

Hand-written on httpx/httpcore: httpx has no hook between name resolution and connect, but httpcore
lets a connection pool take its own network backend, which is where the check lives.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpcore
import httpx
import orjson

from idhub.broker.errors import UpstreamConfigError, UpstreamRefused, UpstreamUnavailable

log = logging.getLogger(__name__)

MAX_REDIRECTS = 3
USER_AGENT = "idhub"


@dataclass(frozen=True, slots=True)
class FetchPolicy:
    """How far an outbound fetch may go."""

    internal: bool = False  # allow loopback/private/link-local addresses and plain http (test peers)
    timeout: float = 5.0  # seconds for the whole request, connect to last byte
    max_bytes: int = 1_048_576  # answer body cap


class AddressRefused(Exception):
    """A host name resolved to an address outbound fetches may not reach."""


def address_allowed(address: str) -> bool:
    """Tell whether ``address`` is a global unicast address (IPv4-mapped and 6to4 forms are unwrapped)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.teredo is not None:
            return False  # a tunnel to an address we cannot judge
        ip = ip.ipv4_mapped or ip.sixtofour or ip
    return bool(ip.is_global) and not ip.is_multicast


def check_url(url: str, *, internal: bool) -> None:
    """Refuse a URL an upstream fetch may not use: https only (http for internal upstreams), a host, no userinfo."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UpstreamConfigError(f"not a URL: {url[:200]!r}") from exc
    allowed = ("https", "http") if internal else ("https",)
    if parts.scheme not in allowed:
        raise UpstreamConfigError(f"an upstream URL must use https: {url[:200]!r}")
    if not parts.hostname or parts.username is not None or parts.password is not None:
        raise UpstreamConfigError(f"an upstream URL needs a host and no user name: {url[:200]!r}")
    if parts.fragment:
        raise UpstreamConfigError(f"an upstream URL has no fragment: {url[:200]!r}")
    if port is not None and not 0 < port < 65536:
        raise UpstreamConfigError(f"bad port in {url[:200]!r}")
    if not internal:
        try:
            literal = ipaddress.ip_address(parts.hostname)
        except ValueError:
            return
        if not address_allowed(str(literal)):
            raise UpstreamConfigError(f"an upstream URL may not name a private address: {url[:200]!r}")


class _GuardedBackend(httpcore.AsyncNetworkBackend):
    """Resolve, check every address, then connect to a checked one (never a second lookup)."""

    def __init__(self, *, internal: bool) -> None:
        self.internal = internal
        self.inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's backend interface)
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        infos = await asyncio.wait_for(loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), timeout)
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        if not self.internal:
            refused = [address for address in addresses if not address_allowed(address)]
            if refused or not addresses:
                raise AddressRefused(f"{host} resolves to {', '.join(refused) or 'nothing'}")
        error: Exception | None = None
        for address in addresses:
            try:
                return await self.inner.connect_tcp(
                    address, port, timeout=timeout, local_address=local_address, socket_options=socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout, OSError) as exc:
                error = exc
        raise httpcore.ConnectError(f"could not connect to {host}") from error

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise AddressRefused("unix sockets are not upstreams")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


class _Body(httpx.AsyncByteStream):
    def __init__(self, stream: Any) -> None:
        self._stream = stream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for part in self._stream:
            yield part

    async def aclose(self) -> None:
        if hasattr(self._stream, "aclose"):
            await self._stream.aclose()


class GuardedTransport(httpx.AsyncBaseTransport):
    """An httpx transport whose connections only reach allowed addresses."""

    def __init__(self, *, internal: bool) -> None:
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(),
            max_connections=50,
            keepalive_expiry=30.0,
            network_backend=_GuardedBackend(internal=internal),
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.AsyncByteStream)
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        answer = await self._pool.handle_async_request(core_request)
        return httpx.Response(
            status_code=answer.status, headers=answer.headers, stream=_Body(answer.stream), extensions=answer.extensions
        )

    async def aclose(self) -> None:
        await self._pool.aclose()


class Fetcher:
    """Make upstream calls under a :class:`FetchPolicy`; one pooled client per address policy."""

    def __init__(self, *, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._transport = transport
        self._clients: dict[bool, httpx.AsyncClient] = {}

    def _client(self, internal: bool) -> httpx.AsyncClient:
        client = self._clients.get(internal)
        if client is None:
            transport = self._transport or GuardedTransport(internal=internal)
            client = self._clients[internal] = httpx.AsyncClient(
                transport=transport, follow_redirects=False, headers={"user-agent": USER_AGENT}, trust_env=False
            )
        return client

    async def get_json(
        self, url: str, *, policy: FetchPolicy, headers: Mapping[str, str] | None = None
    ) -> dict[str, Any]:
        """GET a JSON object."""
        status, body = await self._exchange("GET", url, policy=policy, headers=_json_headers(headers))
        _check_status(status, url)
        return _json_object(body, url)

    async def post_form(
        self, url: str, data: Mapping[str, str], *, policy: FetchPolicy, headers: Mapping[str, str] | None = None
    ) -> dict[str, Any]:
        """POST a form and return the JSON object answered (an OAuth error object too, RFC 6749 §5.2)."""
        status, body = await self._exchange("POST", url, policy=policy, headers=_json_headers(headers), data=data)
        if status in (400, 401):
            try:
                answer = _json_object(body, url)
            except UpstreamRefused:
                answer = {}
            if "error" in answer:
                return answer
        _check_status(status, url)
        return _json_object(body, url)

    async def get_bytes(self, url: str, *, policy: FetchPolicy, headers: Mapping[str, str] | None = None) -> bytes:
        """GET raw bytes (SAML metadata)."""
        status, body = await self._exchange("GET", url, policy=policy, headers=dict(headers or {}))
        _check_status(status, url)
        return body

    async def _exchange(
        self,
        method: str,
        url: str,
        *,
        policy: FetchPolicy,
        headers: Mapping[str, str],
        data: Mapping[str, str] | None = None,
    ) -> tuple[int, bytes]:
        try:
            async with asyncio.timeout(policy.timeout):
                return await self._follow(method, url, policy=policy, headers=headers, data=data)
        except TimeoutError as exc:
            raise UpstreamUnavailable(f"{_where(url)} did not answer within {policy.timeout:g} s") from exc
        except AddressRefused as exc:
            raise UpstreamConfigError(f"the upstream address is not allowed ({exc})") from exc
        except (
            httpx.HTTPError,
            httpcore.NetworkError,
            httpcore.TimeoutException,
            httpcore.ProtocolError,
            OSError,
        ) as exc:
            raise UpstreamUnavailable(f"{_where(url)} unreachable: {type(exc).__name__}") from exc

    async def _follow(
        self,
        method: str,
        url: str,
        *,
        policy: FetchPolicy,
        headers: Mapping[str, str],
        data: Mapping[str, str] | None,
    ) -> tuple[int, bytes]:
        check_url(url, internal=policy.internal)
        origin = urlsplit(url)
        client = self._client(policy.internal)
        timeout = httpx.Timeout(policy.timeout)
        for _hop in range(MAX_REDIRECTS + 1):
            request = client.build_request(method, url, headers=dict(headers), data=data, timeout=timeout)
            response = await client.send(request, stream=True)
            try:
                if response.is_redirect and "location" in response.headers:
                    target = urljoin(url, response.headers["location"])
                    parts = urlsplit(target)
                    if (parts.scheme, parts.hostname, parts.port) != (origin.scheme, origin.hostname, origin.port):
                        raise UpstreamRefused("redirect_refused", f"{_where(url)} redirects to another host")
                    check_url(target, internal=policy.internal)
                    url = target
                    if response.status_code == 303:
                        method, data = "GET", None
                    continue
                return response.status_code, await _read_capped(response, policy.max_bytes, url)
            finally:
                await response.aclose()
        raise UpstreamRefused("redirect_refused", f"{_where(url)} redirects too often")

    async def aclose(self) -> None:
        """Close the pooled connections."""
        clients, self._clients = self._clients, {}
        for client in clients.values():
            await client.aclose()


async def _read_capped(response: httpx.Response, limit: int, url: str) -> bytes:
    declared = response.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise UpstreamUnavailable(f"{_where(url)} answered {declared} bytes, over the {limit}-byte cap")
    body = bytearray()
    async for part in response.aiter_raw():
        body += part
        if len(body) > limit:
            raise UpstreamUnavailable(f"{_where(url)} answered more than {limit} bytes")
    return bytes(body)


def _json_headers(headers: Mapping[str, str] | None) -> dict[str, str]:
    return {"accept": "application/json", **(headers or {})}


def _check_status(status: int, url: str) -> None:
    if status >= 500:
        raise UpstreamUnavailable(f"{_where(url)} answered {status}")
    if status >= 300:
        raise UpstreamRefused("upstream_error", f"{_where(url)} answered {status}")


def _json_object(body: bytes, url: str) -> dict[str, Any]:
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise UpstreamRefused("bad_json", f"{_where(url)} answered something that is not JSON") from exc
    if not isinstance(value, dict):
        raise UpstreamRefused("bad_json", f"{_where(url)} answered JSON that is not an object")
    return value


def _where(url: str) -> str:
    """Return scheme://host/path of ``url`` (no query: it may carry codes or tokens)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"
