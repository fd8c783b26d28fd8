"""The audit stream: committed entries reach a real syslog (UDP, TCP) or HTTP server on 127.0.0.1.

Each test starts a tiny asyncio server on the app's event loop, points a sink at it, makes an audited
change through the directory, and reads what arrived. A sink that is down or hangs neither blocks nor
fails the change; what it could not take is dropped and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import Iterator
from typing import Any

from idhub.audit.sink import BOM, AuditSink, Transport, transport_for
from idhub.directory.profile import UserProfile
from idhub.metrics import Metrics
from tests.conftest import Env


@contextlib.contextmanager
def _sink(env: Env, transport: Transport, **options: Any) -> Iterator[AuditSink]:
    """Stream the app's committed entries to ``transport`` for the ``with`` block."""
    metrics = Metrics()
    sink = AuditSink(transport, counter=metrics, **options)
    sink.metrics = metrics  # type: ignore[attr-defined]
    audit = env.ctx.audit

    async def start() -> None:
        sink.start()

    env.run(start)
    audit.sink = audit.writer.sink = sink
    try:
        yield sink
    finally:
        audit.sink = audit.writer.sink = None
        env.run(sink.stop)


def _wait_for(env: Env, condition: Any, timeout: float = 5.0) -> None:
    async def wait() -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, "timed out"
            await asyncio.sleep(0.02)

    env.run(wait)


def _json(message: bytes) -> dict[str, Any]:
    text = message.decode()
    return json.loads(text[text.index(BOM) + 1 :])


def test_udp_sink_gets_one_rfc5424_message_per_committed_entry(env: Env) -> None:
    tenant = env.tenant()
    received: list[bytes] = []

    class Collector(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: Any) -> None:
            received.append(data)

    async def serve() -> Any:
        transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(Collector, local_addr=("127.0.0.1", 0))
        return transport

    server = env.run(serve)
    port = server.get_extra_info("sockname")[1]
    try:
        with _sink(env, transport_for(f"syslog+udp://127.0.0.1:{port}", timeout=1.0)):
            user_id = env.user(tenant, "streamed", password=None)
            _wait_for(env, lambda: len(received) >= 1)
    finally:
        _close_on_loop(env, server)
    message = received[0]
    assert message.startswith(b"<110>1 ")  # facility 13 (log audit) * 8 + severity 6 (informational)
    parts = message.split(b" ", 7)
    assert parts[3] == b"idhub" and parts[5] == b"user.create" and parts[6] == b"-"
    entry = _json(message)
    assert entry["target_id"] == user_id and entry["outcome"] == "success" and entry["actor_type"] == "test"
    assert {"source_address", "request_id", "seq", "prev_hash", "hash"} <= set(entry)
    assert entry["seq"] == 2 and len(entry["hash"]) == 64


def test_tcp_sink_frames_messages_by_octet_counting(env: Env) -> None:
    tenant = env.tenant()
    buffer = bytearray()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while chunk := await reader.read(65536):
            buffer.extend(chunk)
        writer.close()

    async def serve() -> asyncio.Server:
        return await asyncio.start_server(handle, "127.0.0.1", 0)

    server = env.run(serve)
    port = server.sockets[0].getsockname()[1]
    try:
        with _sink(env, transport_for(f"syslog+tcp://127.0.0.1:{port}", timeout=1.0)) as sink:
            for index in range(3):
                env.user(tenant, f"framed{index}", password=None)
            _wait_for(env, lambda: sink.sent >= 3)
            _wait_for(env, lambda: buffer.count(b"user.create") >= 3)
    finally:
        _close_on_loop(env, server)
    messages, data = [], bytes(buffer)
    while data:  # RFC 6587 §3.4.1: MSG-LEN SP SYSLOG-MSG
        length, _, rest = data.partition(b" ")
        messages.append(rest[: int(length)])
        data = rest[int(length) :]
    entries = [_json(message) for message in messages]
    assert [entry["action"] for entry in entries] == ["user.create"] * 3
    assert [entry["seq"] for entry in entries] == [2, 3, 4]


def test_http_sink_posts_ndjson_batches_with_the_bearer_token(env: Env) -> None:
    tenant = env.tenant()
    requests: list[tuple[bytes, bytes]] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.lower().split(b"\r\n")
                    if line.startswith(b"content-length:")
                )
                body = await reader.readexactly(length)
                requests.append((head, body))
                writer.write(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n")
                await writer.drain()
        writer.close()

    async def serve() -> asyncio.Server:
        return await asyncio.start_server(handle, "127.0.0.1", 0)

    server = env.run(serve)
    port = server.sockets[0].getsockname()[1]
    try:
        url = f"http://127.0.0.1:{port}/ingest"
        with _sink(env, transport_for(url, timeout=1.0, token="sink-secret")) as sink:
            env.user(tenant, "posted", password=None)
            _wait_for(env, lambda: sink.sent >= 1)
    finally:
        _close_on_loop(env, server)
    head, body = requests[0]
    assert head.startswith(b"POST /ingest HTTP/1.1")
    assert b"content-type: application/x-ndjson" in head.lower()
    assert b"authorization: bearer sink-secret" in head.lower()
    entry = json.loads(body.decode().splitlines()[0])
    assert entry["action"] == "user.create" and entry["tenant_id"] == str(tenant.id)


def test_rolled_back_changes_are_not_streamed(env: Env) -> None:
    tenant = env.tenant()
    offered: list[Any] = []

    class Recorder:
        async def send(self, rows: Any) -> None:
            offered.extend(rows)

        async def close(self) -> None:
            return None

    async def fail_after_change() -> None:
        with contextlib.suppress(RuntimeError):
            async with env.uow() as uow:
                await env.ctx.directory(uow).users.create(tenant.id, UserProfile(user_name="never"))
                raise RuntimeError("the request failed after the change")

    with _sink(env, Recorder()) as sink:
        env.run(fail_after_change)
        env.user(tenant, "kept", password=None)
        _wait_for(env, lambda: sink.sent >= 1)
    assert [row["action"] for row in offered] == ["user.create"]
    assert offered[0]["seq"] == 2  # the rolled-back change never took a number


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_a_down_sink_neither_blocks_nor_fails_changes_and_drops_are_counted(env: Env) -> None:
    tenant = env.tenant()
    transport = transport_for(f"syslog+tcp://127.0.0.1:{_closed_port()}", timeout=0.5)
    with _sink(env, transport, limit=2) as sink:
        started = time.monotonic()
        for index in range(4):
            env.user(tenant, f"unheard{index}", password=None)
        assert time.monotonic() - started < 3.0
        _wait_for(env, lambda: sink.dropped >= 2, timeout=10)
    assert sink.metrics.audit_sink("dropped") == sink.dropped  # type: ignore[attr-defined]
    assert b'idhub_audit_sink_entries_total{outcome="dropped"}' in sink.metrics.render()  # type: ignore[attr-defined]


def test_a_hanging_sink_does_not_hold_up_requests(env: Env) -> None:
    tenant = env.tenant()
    held: list[asyncio.StreamWriter] = []

    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # accepts, reads nothing, answers nothing

    async def serve() -> asyncio.Server:
        return await asyncio.start_server(never_answer, "127.0.0.1", 0)

    server = env.run(serve)
    port = server.sockets[0].getsockname()[1]
    try:
        with _sink(env, transport_for(f"http://127.0.0.1:{port}/", timeout=0.3)) as sink:
            started = time.monotonic()
            env.user(tenant, "busy", password=None)
            assert time.monotonic() - started < 1.0
            _wait_for(env, lambda: sink.dropped >= 1, timeout=10)
    finally:
        _close_on_loop(env, server, *held)


def test_a_full_queue_drops_new_entries_without_waiting() -> None:
    class Never:
        async def send(self, rows: Any) -> None:
            raise AssertionError("not started")

        async def close(self) -> None:
            return None

    async def offer() -> AuditSink:
        sink = AuditSink(Never(), limit=2)
        sink.offer([{"action": "a"}, {"action": "b"}, {"action": "c"}])
        sink.offer([{"action": "d"}])
        return sink

    sink = asyncio.run(offer())
    assert sink.dropped == 2 and [row["action"] for row in sink._queue] == ["a", "b"]


def _close_on_loop(env: Env, *closables: Any) -> None:
    """Close servers, transports and writers on the app's event loop (asyncio objects are not thread-safe)."""

    async def close() -> None:
        for closable in closables:
            closable.close()

    env.run(close)
