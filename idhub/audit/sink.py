"""Stream committed audit entries to a syslog server or an HTTP collector (``IDHUB_AUDIT__SINK``).

The database's chain is the record; the stream is a copy for a SIEM, delivered at most once and
possibly not at all. Entries are offered only after their transaction committed (the unit of work's
after-commit callbacks, and the background writer after its own commits), into a bounded in-memory
queue that one background task drains; offering is a ``deque.extend``, so a request never waits on the
sink. A full queue drops the new entries, a batch the sink refused three times is dropped; both are
counted (``idhub_audit_sink_entries{outcome="dropped"}``) and warned about at most once a minute.

Transports:

* ``syslog+udp://host:port``: one RFC 5424 message per datagram (RFC 5426).
* ``syslog+tcp://host:port``: RFC 5424 messages with octet-counting framing (RFC 6587 §3.4.1:
  ``MSG-LEN SP SYSLOG-MSG``), over one kept-open connection.
* ``http(s)://...``: batches POSTed as JSON lines (``application/x-ndjson``), with
  ``Authorization: Bearer`` when ``IDHUB_AUDIT__SINK_TOKEN`` is set; a 2xx answer is delivery.

Every message is the entry's export line (every column: actor, target, outcome, source address,
request id, ``seq``, ``prev_hash``, ``hash``...). In syslog it is the MSG part, UTF-8 with a BOM
(RFC 5424 §6.4), after the header: facility 13 "log audit" (§6.2.1), severity informational for a
success and warning for a refusal, APP-NAME ``idhub``, MSGID the action. No structured data: an SD-ID
of our own would need a private enterprise number (§7.2.2), and the JSON already carries every field.
Hand-written: the standard library's ``SysLogHandler`` speaks RFC 3164 only, without octet counting.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
import uuid
from collections import deque
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx

from idhub.storage.tasks import cancel

log = logging.getLogger(__name__)

FACILITY_LOG_AUDIT = 13  # RFC 5424 §6.2.1 table 1
SEVERITY = {"success": 6, "failure": 4, "blocked": 4}  # informational; warning
BOM = "\ufeff"
ATTEMPTS = 3
WARN_EVERY = 60.0  # seconds between two warnings about dropped entries


class SinkCounter(Protocol):
    """Where the sink counts what it sent and what it dropped (the app's metrics)."""

    def count_audit_sink(self, outcome: str, entries: int) -> None:
        """Count ``entries`` that were ``sent`` or ``dropped``."""


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


def entry_line(row: dict[str, Any]) -> str:
    """Return an entry as one JSON line (the same fields as ``idhub audit export``)."""
    return json.dumps({name: _json_value(value) for name, value in row.items()}, separators=(",", ":"))


def _printable(value: str, limit: int) -> str:
    """Return ``value`` as RFC 5424 PRINTUSASCII (no spaces), or the NILVALUE ``-``."""
    cleaned = "".join(ch for ch in value if 33 <= ord(ch) <= 126)[:limit]
    return cleaned or "-"


def syslog_message(row: dict[str, Any], *, hostname: str, procid: str) -> bytes:
    """Return one RFC 5424 message (§6) carrying the entry as its MSG."""
    priority = FACILITY_LOG_AUDIT * 8 + SEVERITY.get(str(row.get("outcome")), 5)
    at = row.get("occurred_at")
    timestamp = at.astimezone(UTC).isoformat() if isinstance(at, datetime) else "-"  # RFC 3339, microseconds
    msgid = _printable(str(row.get("action") or ""), 32)
    header = f"<{priority}>1 {timestamp} {hostname} idhub {procid} {msgid} -"
    return f"{header} {BOM}{entry_line(row)}".encode()


class Transport(Protocol):
    """Delivers one batch of entries, or raises."""

    async def send(self, rows: Sequence[dict[str, Any]]) -> None:
        """Deliver the entries (raise on any failure)."""

    async def close(self) -> None:
        """Release the connection."""


class _Syslog:
    """Shared header fields of the syslog transports."""

    def __init__(self, host: str, port: int, timeout: float) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self.hostname = _printable(socket.gethostname(), 255)
        self.procid = str(os.getpid())

    def messages(self, rows: Sequence[dict[str, Any]]) -> list[bytes]:
        return [syslog_message(row, hostname=self.hostname, procid=self.procid) for row in rows]


class SyslogUdp(_Syslog):
    """RFC 5426: one message per datagram."""

    def __init__(self, host: str, port: int, timeout: float) -> None:
        super().__init__(host, port, timeout)
        self._transport: asyncio.DatagramTransport | None = None

    async def send(self, rows: Sequence[dict[str, Any]]) -> None:
        """Send each entry as one datagram."""
        transport = self._transport
        if transport is None or transport.is_closing():
            loop = asyncio.get_running_loop()
            opened, _ = await asyncio.wait_for(
                loop.create_datagram_endpoint(asyncio.DatagramProtocol, remote_addr=(self.host, self.port)),
                self.timeout,
            )
            self._transport = transport = opened
        for message in self.messages(rows):
            transport.sendto(message)

    async def close(self) -> None:
        """Close the socket."""
        if self._transport is not None:
            self._transport.close()
            self._transport = None


class SyslogTcp(_Syslog):
    """RFC 6587 §3.4.1 octet counting over one kept-open connection (reopened after a failure)."""

    def __init__(self, host: str, port: int, timeout: float) -> None:
        super().__init__(host, port, timeout)
        self._writer: asyncio.StreamWriter | None = None

    async def send(self, rows: Sequence[dict[str, Any]]) -> None:
        """Send the framed messages and wait until the socket took them."""
        try:
            writer = self._writer
            if writer is None or writer.is_closing():
                _, opened = await asyncio.wait_for(asyncio.open_connection(self.host, self.port), self.timeout)
                self._writer = writer = opened
            writer.write(b"".join(b"%d %s" % (len(message), message) for message in self.messages(rows)))
            await asyncio.wait_for(writer.drain(), self.timeout)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Close the connection."""
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), self.timeout)


class Http:
    """POST batches as JSON lines; any 2xx answer is delivery."""

    def __init__(self, url: str, timeout: float, token: str | None) -> None:
        self.url = url
        headers = {"content-type": "application/x-ndjson"}
        if token:
            headers["authorization"] = f"Bearer {token}"
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(timeout), headers=headers, follow_redirects=False)

    async def send(self, rows: Sequence[dict[str, Any]]) -> None:
        """POST the batch."""
        body = "".join(entry_line(row) + "\n" for row in rows).encode()
        response = await self._client.post(self.url, content=body)
        if not 200 <= response.status_code < 300:
            raise RuntimeError(f"the audit sink answered {response.status_code}")

    async def close(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()


def transport_for(url: str, *, timeout: float, token: str | None = None) -> Transport:
    """Return the transport a sink URL names (the setting was checked when it was read)."""
    parts = urlsplit(url)
    if parts.scheme in ("http", "https"):
        return Http(url, timeout, token)
    if not parts.hostname or parts.port is None:
        raise ValueError("a syslog sink needs host and port: syslog+udp://host:port")
    if parts.scheme == "syslog+udp":
        return SyslogUdp(parts.hostname, parts.port, timeout)
    if parts.scheme == "syslog+tcp":
        return SyslogTcp(parts.hostname, parts.port, timeout)
    raise ValueError(f"unknown audit sink scheme {parts.scheme!r}")


class AuditSink:
    """A bounded queue of committed entries and the background task that delivers them."""

    def __init__(
        self,
        transport: Transport,
        *,
        limit: int = 10_000,
        batch: int = 500,
        timeout: float = 2.0,
        counter: SinkCounter | None = None,
    ) -> None:
        self.transport = transport
        self._limit = limit
        self._batch = batch
        self._timeout = timeout
        self._counter = counter
        self._queue: deque[dict[str, Any]] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.sent = 0
        self.dropped = 0
        self._unreported = 0
        self._warned_at = -WARN_EVERY

    def offer(self, rows: Sequence[dict[str, Any]]) -> None:
        """Queue committed entries for delivery; never waits (a full queue drops and counts them)."""
        room = self._limit - len(self._queue)
        if room >= len(rows):
            self._queue.extend(rows)
        else:
            if room > 0:
                self._queue.extend(rows[:room])
            self._drop(len(rows) - max(room, 0), "the queue is full")
        self._wake.set()

    def _drop(self, count: int, why: str) -> None:
        self.dropped += count
        self._unreported += count
        if self._counter is not None:
            self._counter.count_audit_sink("dropped", count)
        now = time.monotonic()
        if now - self._warned_at >= WARN_EVERY:  # a sink that is down must not flood the log
            log.warning("audit sink: %d entries dropped (%s); the database keeps them all", self._unreported, why)
            self._warned_at, self._unreported = now, 0

    def start(self) -> None:
        """Start the delivery task (the app's lifespan does)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="idhub-audit-sink")

    async def stop(self) -> None:
        """Stop the task, try once to deliver what is queued, and close the connection."""
        task, self._task = self._task, None
        await cancel(task)
        with contextlib.suppress(Exception):
            await self._deliver(attempts=1)
        await self.transport.close()

    async def _deliver(self, *, attempts: int = ATTEMPTS) -> None:
        """Send everything queued in batches; a batch that keeps failing is dropped after ``attempts``."""
        while self._queue:
            rows = [self._queue.popleft() for _ in range(min(self._batch, len(self._queue)))]
            for attempt in range(1, attempts + 1):
                try:
                    await asyncio.wait_for(self.transport.send(rows), self._timeout * 2)
                except Exception as exc:
                    if attempt == attempts:
                        self._drop(len(rows), f"the sink failed: {exc.__class__.__name__}")
                        raise
                    await asyncio.sleep(min(0.2 * 2**attempt, 5.0))
                else:
                    self.sent += len(rows)
                    if self._counter is not None:
                        self._counter.count_audit_sink("sent", len(rows))
                    break

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self._deliver()
            except Exception:
                await asyncio.sleep(1.0)  # the sink is down: let the queue fill (and drop) rather than spin
