"""scim2-tester, the public SCIM 2.0 conformance checker, against a live idhub server.

It discovers ``/ServiceProviderConfig``, ``/ResourceTypes`` and ``/Schemas``, then for every resource type
creates, reads, lists, searches, replaces, patches (add, replace and remove, on every attribute of every
schema including the enterprise extension) and deletes resources with generated values, and checks that
what it wrote reads back the same and that refused operations are refused the standard way (405 on the
read-only discovery endpoints). Every check must succeed: a skipped check is fine (a feature idhub does
not advertise), an error or a failure is not.
"""

from __future__ import annotations

from collections import Counter

import pytest

from tests.conftest import Env
from tests.scim.conftest import provisioning_token

try:
    import httpx2
    from scim2_client.engines.httpx2 import SyncSCIMClient
    from scim2_tester import Status, check_server
except ImportError as exc:  # pragma: no cover - depends on the environment
    pytest.skip(f"scim2-tester is not installed ({exc})", allow_module_level=True)

pytestmark = pytest.mark.interop


def test_scim2_tester_passes_every_check(live: Env) -> None:
    tenant = live.tenant()
    token = provisioning_token(live, tenant)
    with httpx2.Client(
        base_url=f"{tenant.issuer}/scim/v2", headers={"Authorization": f"Bearer {token}"}, timeout=30
    ) as http:
        client = SyncSCIMClient(http)
        client.discover()
        results = check_server(client)

    statuses = Counter(result.status for result in results)
    problems = [
        f"{result.status.name} [{result.resource_type}] {result.title}: {result.reason} {result.data!r:.400}"
        for result in results
        if result.status not in (Status.SUCCESS, Status.SKIPPED)
    ]
    assert not problems, f"{len(problems)} of {len(results)} checks did not pass:\n" + "\n".join(problems)
    # The checker ran its full battery, not a discovery failure that short-circuits it.
    assert statuses[Status.SUCCESS] >= 100, statuses
