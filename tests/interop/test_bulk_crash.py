"""``kill -9`` of the server in the middle of a 1,000-operation SCIM ``/Bulk`` (RFC 7644 §3.7) on PostgreSQL.

A Bulk request runs in one transaction: when the process dies, each operation is either committed with
everything that belongs to it (the user row, its multi-valued attributes, its audit entry) or absent, and
sending the same request again answers ``409 uniqueness`` for those that were committed and ``201`` for the
rest (RFC 7644 §3.3, §3.12).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.interop.live_servers import ServerProcess, idhub_cli, private_database, server_env

OPERATIONS = 1000
TENANT = "bulkcrash"
SCIM_MEDIA_TYPE = "application/scim+json"
BULK_REQUEST = "urn:ietf:params:scim:api:messages:2.0:BulkRequest"
USER_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:User"
ENTERPRISE_SCHEMA = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
# When the server is killed, as fractions of the time an undisturbed Bulk of the same size takes.
KILL_POINTS = (0.15, 0.5, 0.85, 0.97)


@dataclass
class Deployment:
    """One server process on a private database, with a provisioning token for its SCIM endpoint."""

    server: ServerProcess
    database_url: str
    headers: dict[str, str]

    @property
    def bulk_url(self) -> str:
        """Return the tenant's SCIM Bulk endpoint."""
        return f"{self.server.base_url}/tenants/{TENANT}/scim/v2/Bulk"


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """Set up a tenant and a provisioning token through the CLI; run one server."""
    root: Path = tmp_path_factory.mktemp("idhub-bulk-crash")
    with private_database("bulkcrash") as database_url:
        server = ServerProcess({}, root, "server")
        server.env = server_env(database_url, root / "data", server.base_url)
        idhub_cli(server.env, "migrate")
        idhub_cli(server.env, "init", "--tenant", TENANT)
        token = idhub_cli(server.env, "provisioning-token", "create", "--tenant", TENANT, "--json")["token"]
        headers = {"Authorization": f"Bearer {token}", "Content-Type": SCIM_MEDIA_TYPE, "Accept": SCIM_MEDIA_TYPE}
        try:
            server.start()
            yield Deployment(server, database_url, headers)
        finally:
            server.stop()


def _user_name(prefix: str, i: int) -> str:
    return f"{prefix}-{i}@acme.example"


def _bulk_body(prefix: str) -> bytes:
    """Return a BulkRequest of ``OPERATIONS`` user creations (as an HR system onboards people)."""
    operations = [
        {
            "method": "POST",
            "path": "/Users",
            "bulkId": f"b{i}",
            "data": {
                "schemas": [USER_SCHEMA, ENTERPRISE_SCHEMA],
                "userName": _user_name(prefix, i),
                "externalId": f"{prefix}-hr-{i}",
                "name": {"givenName": "Ada", "familyName": f"Lovelace {i}"},
                "displayName": f"Ada Lovelace {i}",
                "emails": [{"value": _user_name(prefix, i), "type": "work", "primary": True}],
                "phoneNumbers": [{"value": f"+1 555 {i:07d}", "type": "work"}],
                "active": True,
                ENTERPRISE_SCHEMA: {"employeeNumber": str(i), "department": f"Dept {i % 50}"},
            },
        }
        for i in range(OPERATIONS)
    ]
    return json.dumps({"schemas": [BULK_REQUEST], "Operations": operations}).encode()


def _db(deployment: Deployment, query: str, *args: Any) -> list[Any]:
    import asyncpg

    async def work() -> list[Any]:
        conn = await asyncpg.connect(deployment.database_url.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            return list(await conn.fetch(query, *args))
        finally:
            await conn.close()

    return asyncio.run(work())


def _state(deployment: Deployment, prefix: str) -> dict[str, tuple[int, int, int, bool]]:
    """Return, per committed user of ``prefix``: its email rows, phone rows, audit entries, and profile check."""
    rows = _db(
        deployment,
        """
        SELECT u.user_name,
               (SELECT count(*) FROM user_value v WHERE v.user_id = u.id AND v.attribute = 'emails'),
               (SELECT count(*) FROM user_value v WHERE v.user_id = u.id AND v.attribute = 'phoneNumbers'),
               (SELECT count(*) FROM audit_event a WHERE a.target_id = u.id::text AND a.action = 'user.create'),
               (u.given_name = 'Ada' AND u.family_name IS NOT NULL AND u.department IS NOT NULL
                AND u.employee_number IS NOT NULL AND u.external_id IS NOT NULL)
        FROM "user" u
        WHERE u.user_name LIKE $1
        """,
        f"{prefix}-%",
    )
    return {row[0]: (row[1], row[2], row[3], row[4]) for row in rows}


def _assert_whole(state: dict[str, tuple[int, int, int, bool]]) -> None:
    broken = {name: parts for name, parts in state.items() if parts != (1, 1, 1, True)}
    assert not broken, f"{len(broken)} users committed in part: {list(broken.items())[:5]}"


def _wait_for_orphans(deployment: Deployment, timeout: float = 30.0) -> None:
    """Wait until PostgreSQL has ended every session of the killed process (each rolls back or committed)."""
    name = deployment.database_url.rsplit("/", 1)[1]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = _db(
            deployment,
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
            name,
        )[0][0]
        if left == 0:
            return
        time.sleep(0.05)
    raise AssertionError("sessions of the killed server are still open")


def _post_in_thread(deployment: Deployment, body: bytes) -> tuple[threading.Thread, dict[str, Any]]:
    outcome: dict[str, Any] = {}

    def post() -> None:
        try:
            with httpx.Client(headers=deployment.headers, timeout=120) as http:
                outcome["response"] = http.post(deployment.bulk_url, content=body)
        except httpx.TransportError as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=post, daemon=True)
    thread.start()
    return thread, outcome


def _statuses(response: httpx.Response) -> dict[str, str]:
    assert response.status_code == 200, response.text[:500]
    return {op["bulkId"]: op["status"] for op in response.json()["Operations"]}


def test_bulk_crash_kill9_mid_bulk_each_operation_whole_or_absent_and_resend_completes(
    deployment: Deployment,
) -> None:
    """SIGKILL mid-Bulk: no partial user; the same request again gives 409 for committed, 201 for the rest."""
    with httpx.Client(headers=deployment.headers, timeout=120) as http:
        started = time.perf_counter()
        warm = _statuses(http.post(deployment.bulk_url, content=_bulk_body("warm")))
        duration = time.perf_counter() - started
    assert set(warm.values()) == {"201"}

    interrupted = 0
    for fraction in KILL_POINTS:
        prefix = f"crash-{uuid.uuid4().hex[:8]}"
        body = _bulk_body(prefix)
        thread, outcome = _post_in_thread(deployment, body)
        time.sleep(duration * fraction)
        deployment.server.kill()
        thread.join(timeout=30)
        interrupted += "error" in outcome
        _wait_for_orphans(deployment)

        before = _state(deployment, prefix)
        _assert_whole(before)
        deployment.server.start()
        with httpx.Client(headers=deployment.headers, timeout=120) as http:
            statuses = _statuses(http.post(deployment.bulk_url, content=body))
        expected = {f"b{i}": "409" if _user_name(prefix, i) in before else "201" for i in range(OPERATIONS)}
        assert statuses == expected
        after = _state(deployment, prefix)
        assert len(after) == OPERATIONS
        _assert_whole(after)
        how = "in flight" if "error" in outcome else "after the answer"
        print(f"\nkill at {fraction:.0%} of {duration:.2f} s ({how}): {len(before)} committed before the re-send")
    assert interrupted, "the server was never killed while the Bulk request was in flight"
