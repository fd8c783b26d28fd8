"""A light simulated browser for the measured loops: HTTP/1.1 keep-alive per origin, cookies by path, no redirects.

The load generator shares its CPU with the process it drives (``bench/broker.py``: the upstream idhub), so
its own cost is taken from what it measures. httpx spends about a millisecond of CPU per request on
things a benchmark browser does not need (its cookie jar's policy machinery, redirect and auth hooks,
URL normalisation, event hooks); this browser does what a browser must for these flows and nothing more:

* one keep-alive connection per origin (a new one when the server closes it);
* cookies kept as a browser keeps them for one host name: by path (RFC 6265 §5.1.4 path-match) and
  name, whatever the port (§8.5: cookies do not isolate by port), replaced or removed (``Max-Age=0``, an
  ``Expires`` in the past) by ``Set-Cookie``;
* answers read by ``Content-Length`` or chunked transfer coding; redirects are the caller's to follow.

Plain ``http`` to the loopback only: it is a benchmark tool, not a client for the open network.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit

MAX_HEADER = 65536


class LeanResponse:
    """One answer: status, headers (lower-case names, the last value of a repeated one) and body."""

    __slots__ = ("body", "headers", "status_code")

    def __init__(self, status_code: int, headers: dict[str, str], body: bytes) -> None:
        self.status_code = status_code
        self.headers = headers
        self.body = body

    @property
    def text(self) -> str:
        """Return the body decoded as UTF-8 (replacing what does not decode)."""
        return self.body.decode("utf-8", "replace")


class LeanBrowser:
    """A browser on one host name: keep-alive connections by port, a cookie jar by (path, name)."""

    def __init__(self, *, timeout: float = 30.0) -> None:
        self.timeout = timeout
        self._connections: dict[tuple[str, int], tuple[asyncio.StreamReader, asyncio.StreamWriter]] = {}
        self.cookies: dict[tuple[str, str], str] = {}  # (path, name) -> value

    def add_cookie(self, name: str, value: str, path: str = "/") -> None:
        """Keep a cookie as if the server had set it (cookies carried over from another client)."""
        self.cookies[(path or "/", name)] = value

    async def get(self, url: str) -> LeanResponse:
        """GET ``url`` (absolute ``http://`` URL); a server that closed a kept-alive connection is retried once."""
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"the lean browser speaks plain http only: {url[:80]}")
        origin = (parts.hostname, parts.port or 80)
        target = parts.path or "/"
        if parts.query:
            target = f"{target}?{parts.query}"
        head = [f"GET {target} HTTP/1.1", f"Host: {parts.netloc}", "Accept: */*", "User-Agent: idhub-bench"]
        cookie = self._cookie_header(parts.path or "/")
        if cookie:
            head.append(f"Cookie: {cookie}")
        request = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1")
        for attempt in (0, 1):
            reused = origin in self._connections
            reader, writer = await self._connection(origin)
            try:
                writer.write(request)
                response = await asyncio.wait_for(self._read_response(reader), self.timeout)
            except (ConnectionError, asyncio.IncompleteReadError, EOFError):
                self._drop(origin)
                if reused and attempt == 0:
                    continue  # the server closed the idle connection: once more on a new one
                raise
            if response.headers.get("connection", "").lower() == "close":
                self._drop(origin)
            return response
        raise ConnectionError("unreachable")  # pragma: no cover

    async def aclose(self) -> None:
        """Close every connection."""
        for origin in list(self._connections):
            self._drop(origin)

    async def _connection(self, origin: tuple[str, int]) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        found = self._connections.get(origin)
        if found is None:
            found = await asyncio.wait_for(asyncio.open_connection(*origin, limit=MAX_HEADER), self.timeout)
            self._connections[origin] = found
        return found

    def _drop(self, origin: tuple[str, int]) -> None:
        found = self._connections.pop(origin, None)
        if found is not None:
            found[1].close()

    def _cookie_header(self, path: str) -> str:
        pairs = [f"{name}={value}" for (prefix, name), value in self.cookies.items() if _path_match(path, prefix)]
        return "; ".join(pairs)

    async def _read_response(self, reader: asyncio.StreamReader) -> LeanResponse:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if not line:
                continue
            name, _, value = line.partition(":")
            name, value = name.strip().lower(), value.strip()
            if name == "set-cookie":
                self._set_cookie(value)
            headers[name] = value
        if headers.get("transfer-encoding", "").lower() == "chunked":
            body = bytearray()
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";", 1)[0], 16)
                if size == 0:
                    await reader.readuntil(b"\r\n")  # no trailers from these servers: the closing CRLF
                    break
                body += await reader.readexactly(size)
                await reader.readexactly(2)
            return LeanResponse(status, headers, bytes(body))
        length = int(headers.get("content-length", "0"))
        return LeanResponse(status, headers, await reader.readexactly(length) if length else b"")

    def _set_cookie(self, value: str) -> None:
        pair, *attributes = value.split(";")
        name, _, cookie_value = pair.strip().partition("=")
        path, remove = "/", False
        for attribute in attributes:
            key, _, argument = attribute.strip().partition("=")
            key = key.lower()
            if key == "path" and argument.startswith("/"):
                path = argument
            elif key == "max-age":
                remove = remove or int(argument) <= 0
            elif key == "expires":
                with contextlib.suppress(TypeError, ValueError):
                    remove = remove or parsedate_to_datetime(argument) <= datetime.now(UTC)
        if remove:
            self.cookies.pop((path, name), None)
        else:
            self.cookies[(path, name)] = cookie_value


def _path_match(path: str, prefix: str) -> bool:
    """RFC 6265 §5.1.4: ``prefix`` path-matches ``path``."""
    return path == prefix or (path.startswith(prefix) and (prefix.endswith("/") or path[len(prefix)] == "/"))
