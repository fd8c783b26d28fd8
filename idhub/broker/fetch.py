"""Outbound HTTP to upstream identity providers: discovery, JWKS, metadata, token and UserInfo calls.

Every fetch has a deadline for the whole exchange, a cap on the answer's size, no redirect to another
origin, and (unless the upstream was created ``--internal``) no connection to a loopback, private,
link-local or otherwise non-global address: an operator's typo or a hostile discovery document must
not turn idhub into a proxy into its own network (SSRF, OWASP ASVS V12.6). The address is checked
where the connection is made, on the very address connected to, so a name that resolves to a public
address when checked and to 127.0.0.1 when used (DNS rebinding) gets nowhere.

Hand-written on httpx/httpcore: httpx has no hook between name resolution and connect, but httpcore
lets a connection pool take its own network backend, which is where the check lives. The transport
below uses only public httpx/httpcore API (no private attribute to patch), so an httpx upgrade cannot
silently route around the check; TLS still verifies the certificate against the URL's host name, since
httpcore takes ``server_hostname`` from the request's origin, not from the address connected to.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import SplitResult, urljoin, urlsplit

import httpcore
import httpx
import orjson

from idhub.broker.errors import UpstreamConfigError, UpstreamRefused, UpstreamUnavailable

MAX_REDIRECTS = 3
USER_AGENT = "idhub"
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052 §2.1 well-known prefix
_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True, slots=True)
class FetchPolicy:
    """How far an outbound fetch may go."""

    internal: bool = False  # allow loopback/private/link-local addresses and plain http (test peers)
    timeout: float = 5.0  # seconds for the whole request, connect to last byte
    max_bytes: int = 1_048_576  # answer body cap


class AddressRefused(Exception):
    """A host name resolved to an address outbound fetches may not reach."""


def address_allowed(address: str) -> bool:
    """Tell whether an outbound fetch may connect to ``address``: a global unicast address and nothing else.

    IPv6 forms that carry an IPv4 address (IPv4-mapped, 6to4, NAT64's well-known prefix) are judged by the
    IPv4 address inside, so ``::ffff:127.0.0.1`` is loopback. Teredo is refused outright: the client address
    it embeds is obfuscated and the relay it names says nothing about the peer. ``is_global`` alone is not
    enough: it lets through multicast, IPv6 site-local (``fec0::/10``) and the deprecated IPv4-compatible
    form ``::a.b.c.d``, which the extra checks catch.
    """
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.teredo is not None:
            return False
        # RFC 6052 §2.2: NAT64's well-known prefix carries the IPv4 address in its last 32 bits.
        ip = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF) if ip in _NAT64 else ip.ipv4_mapped or ip.sixtofour or ip
        if isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local:
            return False
    return ip.is_global and not (
        ip.is_multicast or ip.is_reserved or ip.is_loopback or ip.is_link_local or ip.is_private or ip.is_unspecified
    )


def check_url(url: str, *, internal: bool) -> None:
    """Refuse a URL an upstream fetch may not use: https only (http for internal upstreams), a host, no userinfo.

    A literal IP address is judged here already (outside ``internal``), so a bad configuration fails when
    it is saved; host names are judged when connecting (:class:`GuardedTransport`).
    """
    _checked(url, internal=internal)


def _checked(url: str, *, internal: bool) -> SplitResult:
    short = url[:200]
    try:
        parts = urlsplit(url)
        port = parts.port  # raises on a port that is not a number or out of range
    except ValueError as exc:
        raise UpstreamConfigError(f"not a URL: {short!r}") from exc
    # Plain http only to an internal test peer: upstream answers carry codes, tokens and signing keys.
    allowed = ("https", "http") if internal else ("https",)
    if parts.scheme not in allowed:
        raise UpstreamConfigError(f"an upstream URL must use https: {short!r}")
    # RFC 3986 §3.2.1 userinfo in a URL is credentials in logs and a classic host-confusion trick.
    if not parts.hostname or "@" in parts.netloc:
        raise UpstreamConfigError(f"an upstream URL needs a host and no user name: {short!r}")
    if "#" in url:
        raise UpstreamConfigError(f"an upstream URL has no fragment: {short!r}")
    if port == 0:
        raise UpstreamConfigError(f"bad port in {short!r}")
    if not internal:
        try:
            literal = ipaddress.ip_address(parts.hostname)
        except ValueError:
            return parts
        if not address_allowed(str(literal)):
            raise UpstreamConfigError(f"an upstream URL may not name a private address: {short!r}")
    return parts


# Every request's own headers: compressed answers would make the size cap count compressed bytes, so
# none are asked for (a server that compresses anyway is decoded, and the decoded size is capped).
_DEFAULT_HEADERS = {"user-agent": USER_AGENT, "accept-encoding": "identity"}
_Origin = tuple[str, str | None, int | None]


@functools.lru_cache(maxsize=16)
def _timeouts(seconds: float) -> dict[str, float | None]:
    """Return httpcore's per-phase timeouts (connect, read, write, pool) for one deadline; shared, never mutated."""
    return httpx.Timeout(seconds).as_dict()


def _origin(parts: SplitResult) -> _Origin:
    return parts.scheme, parts.hostname, parts.port or _DEFAULT_PORTS.get(parts.scheme)


def _request_origin(url: httpx.URL) -> _Origin:
    return url.scheme, url.host, url.port or _DEFAULT_PORTS.get(url.scheme)


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
        """Connect to ``host`` only if every address it resolves to is allowed (SSRF, DNS rebinding)."""
        loop = asyncio.get_running_loop()
        infos = await asyncio.wait_for(loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), timeout)
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        if not self.internal:
            # ANY bad address refuses the host: a name with one public and one private address would
            # otherwise reach the private one whenever the public one is down.
            refused = [address for address in addresses if not address_allowed(address)]
            if refused or not addresses:
                raise AddressRefused(f"{host} resolves to {', '.join(refused) or 'nothing'}")
        error: Exception | None = None
        for address in addresses:
            try:
                # The address just checked, not ``host``: a second lookup could answer differently.
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
        """Refuse: an upstream is never a local socket."""
        raise AddressRefused("unix sockets are not upstreams")

    async def sleep(self, seconds: float) -> None:
        """Sleep as the inner backend does (httpcore's retry back-off)."""
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
    """An httpx transport whose connections only reach allowed addresses (all of them when ``internal``).

    httpcore exceptions are not mapped to httpx ones here; :class:`Fetcher` handles both families.
    """

    def __init__(self, *, internal: bool) -> None:
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(),  # verifies the chain and the host name
            max_connections=50,
            keepalive_expiry=30.0,
            network_backend=_GuardedBackend(internal=internal),
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` through the guarded pool."""
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
        """Close the pooled connections."""
        await self._pool.aclose()


class Fetcher:
    """Make upstream calls under a :class:`FetchPolicy`.

    Pooled (keep-alive) connections are kept per ``internal`` flag (at most two transports, each created
    on first use): the address check runs when a connection is opened, so a connection opened for an
    internal upstream must never be reused by a non-internal fetch of the same origin. ``transport``
    replaces the guarded transport (and with it the address check; the URL checks remain): for tests only.

    Requests go to the transport as they are, without an ``httpx.AsyncClient`` around it: redirects are
    followed by hand anyway, and a client would only add a cookie jar shared by every person's calls to
    the upstream (an upstream's ``Set-Cookie`` must not ride along on someone else's token request) and
    a third of the cost of a call. Nor is there a proxy from the environment: the address check must see
    the upstream itself.
    """

    def __init__(self, *, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._transport = transport
        self._transports: dict[bool, httpx.AsyncBaseTransport] = {}

    def _transport_for(self, internal: bool) -> httpx.AsyncBaseTransport:
        transport = self._transports.get(internal)
        if transport is None:
            transport = self._transports[internal] = self._transport or GuardedTransport(internal=internal)
        return transport

    async def get_json(
        self, url: str, *, policy: FetchPolicy, headers: Mapping[str, str] | None = None
    ) -> dict[str, Any]:
        """GET a JSON object (discovery, JWKS, UserInfo)."""
        status, body = await self._exchange("GET", url, policy=policy, headers=_json_headers(headers))
        _check_status(status, url)
        return _json_object(body, url)

    async def post_form(
        self, url: str, data: Mapping[str, str], *, policy: FetchPolicy, headers: Mapping[str, str] | None = None
    ) -> dict[str, Any]:
        """POST a form and return the JSON object answered, an OAuth error object too (RFC 6749 §5.2).

        A 400 or 401 whose body is a JSON object with an ``error`` member is returned as it is: callers
        check ``"error" in answer``. The form is never logged (it carries client secrets and codes).
        """
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
            # One deadline for resolution, connect, every redirect hop and the last byte: httpx's own
            # timeouts are per read, so a server dripping a byte a second would never trip them.
            async with asyncio.timeout(policy.timeout):
                return await self._follow(method, url, policy=policy, headers=headers, data=data)
        except TimeoutError as exc:
            raise UpstreamUnavailable(f"{_where(url)} did not answer within {policy.timeout:g} s") from exc
        except AddressRefused as exc:
            raise UpstreamConfigError(f"the upstream address is not allowed ({exc})") from exc
        except httpx.InvalidURL as exc:
            raise UpstreamConfigError(f"not a usable URL: {_where(url)!r}") from exc
        except (
            httpx.HTTPError,
            httpx.StreamError,
            httpcore.NetworkError,
            httpcore.TimeoutException,
            httpcore.ProtocolError,
            httpcore.UnsupportedProtocol,
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
        _checked(url, internal=policy.internal)
        transport = self._transport_for(policy.internal)
        extensions = {"timeout": _timeouts(policy.timeout)}
        origin: _Origin | None = None
        for _hop in range(MAX_REDIRECTS + 1):
            request = httpx.Request(
                method, url, headers={**_DEFAULT_HEADERS, **headers}, data=data, extensions=extensions
            )
            # The origin as httpx parsed it (what it will connect to), so a URL that urlsplit and httpx
            # read differently cannot slip a redirect to another host past the check.
            here = _request_origin(request.url)
            if origin is None:
                origin = here
            elif here != origin:
                raise UpstreamRefused("redirect_refused", f"{_where(url)} is another origin than the first hop")
            response = await transport.handle_async_request(request)
            response.request = request
            try:
                if response.is_redirect:
                    url = _redirect_target(url, response.headers["location"], internal=policy.internal)
                    if response.status_code == 303:  # RFC 9110 §15.4.4: the answer is fetched with GET
                        method, data = "GET", None
                    continue
                return response.status_code, await _read_capped(response, policy.max_bytes, url)
            finally:
                await response.aclose()
        raise UpstreamRefused("redirect_refused", f"{_where(url)} redirects more than {MAX_REDIRECTS} times")

    async def aclose(self) -> None:
        """Close the pooled connections."""
        transports, self._transports = self._transports, {}
        for transport in transports.values():
            await transport.aclose()


def _redirect_target(url: str, location: str, *, internal: bool) -> str:
    """Return where a redirect leads if it stays on the same scheme, host and port, else refuse it.

    Another host could be anything the upstream (or whoever controls its answers) likes, including an
    address inside our network; a same-origin hop is connected through the same address check.
    """
    target = urljoin(url, location.strip()).split("#", 1)[0]  # a fragment is never sent (RFC 9110 §10.2.2)
    try:
        same = _origin(_checked(target, internal=internal)) == _origin(urlsplit(url))
    except UpstreamConfigError as exc:
        raise UpstreamRefused("redirect_refused", f"{_where(url)} redirects to an unusable URL") from exc
    if not same:
        raise UpstreamRefused("redirect_refused", f"{_where(url)} redirects to another origin: {_where(target)}")
    return target


async def _read_capped(response: httpx.Response, limit: int, url: str) -> bytes:
    """Read the body, refusing more than ``limit`` bytes (declared up front or counted while streaming)."""
    declared = response.headers.get("content-length", "").strip()
    if declared.isdigit() and int(declared) > limit:
        raise UpstreamUnavailable(f"{_where(url)} answered {declared} bytes, over the {limit}-byte cap")
    body = bytearray()
    # Decoded when the upstream compressed anyway, so the cap bounds what ends up in memory; an answer
    # that is not encoded (the usual case: identity is asked for) is read off the stream as it comes.
    encoded = response.headers.get("content-encoding", "identity").strip().lower() not in ("", "identity")
    parts = response.aiter_bytes() if encoded else response.stream
    assert isinstance(parts, AsyncIterable)
    async for part in parts:
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
    """Parse ``body`` as a JSON object (RFC 8259; orjson refuses NaN, bad UTF-8 and trailing data)."""
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise UpstreamRefused("bad_json", f"{_where(url)} answered something that is not JSON") from exc
    if not isinstance(value, dict):
        raise UpstreamRefused("bad_json", f"{_where(url)} answered JSON that is not an object")
    return value


def _where(url: str) -> str:
    """Return scheme://host/path of ``url`` (no query: it may carry codes or tokens; no userinfo)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "(unparsable URL)"
    host = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{host}{port}{parts.path}"[:300]
