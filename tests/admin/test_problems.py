"""The admin surface renders every error as RFC 9457 problem JSON, the unexpected ones included."""

from __future__ import annotations

import json

from fastapi import Request

from idhub.admin.problems import PROBLEM_MEDIA_TYPE, render_problem
from idhub.errors import Conflict, Invalid, NotFound, PreconditionFailed, Unavailable
from idhub.request_context import RequestInfo


def _request() -> Request:
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/admin/v1/tenants/acme/users",
        "headers": [],
        "query_string": b"",
        "idhub.request": RequestInfo("abcdef0123456789", "127.0.0.1"),
    }
    return Request(scope)


def test_problem_unexpected_error_is_a_bare_500_with_the_request_id() -> None:
    answer = render_problem(_request(), RuntimeError("database password is hunter2"))
    body = json.loads(bytes(answer.body))
    assert answer.status_code == 500 and answer.media_type == PROBLEM_MEDIA_TYPE
    assert body["status"] == 500 and body["request_id"] == "abcdef0123456789"
    assert "hunter2" not in answer.body.decode()
    assert body["instance"] == "/admin/v1/tenants/acme/users"


def test_problem_domain_errors_map_to_their_statuses() -> None:
    cases = [(NotFound("x"), 404), (Conflict("x"), 409), (PreconditionFailed("x"), 412), (Invalid("x"), 422)]
    for error, status in cases:
        answer = render_problem(_request(), error)
        assert answer.status_code == status and json.loads(bytes(answer.body))["detail"] == "x"
    unavailable = render_problem(_request(), Unavailable("down", retry_after=7))
    assert unavailable.status_code == 503 and unavailable.headers["retry-after"] == "7"
