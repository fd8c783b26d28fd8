"""Odd and hostile SCIM input gets a SCIM error, never a 500."""

from __future__ import annotations

from typing import Any

import pytest

from tests.scim.conftest import GROUP_URN, PATCH_URN, USER_URN, Scim

BULK = "urn:ietf:params:scim:api:messages:2.0:BulkRequest"


@pytest.mark.parametrize(
    "params",
    [
        {"startIndex": "99999999999999999999999"},
        {"startIndex": "-5", "count": "-1"},
        {"count": "99999999999999999999"},
        {"count": "abc"},
        {"sortBy": 'emails[type eq "work"]'},
        {"sortBy": "nope"},
        {"sortOrder": "sideways"},
        {"filter": 'meta.lastModified gt "not-a-date"'},
        {"filter": 'meta.lastModified gt "99999-01-01T00:00:00Z"'},
        {"filter": 'id eq "\\u0000"'},
        {"filter": 'userName eq "\\ud800"'},
        {"filter": 'emails[value co "a"].value eq "b"'},
        {"attributes": "a" * 5000},
        {"filter": "active gt true"},
    ],
)
def test_hostile_list_parameters_never_500(scim: Scim, params: dict[str, str]) -> None:
    scim.create_user("someone")
    response = scim.request("GET", "/Users", params=params)
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert response.json()["schemas"] == ["urn:ietf:params:scim:api:messages:2.0:Error"]


@pytest.mark.parametrize(
    "body",
    [
        {"schemas": [PATCH_URN], "Operations": [{"op": "replace", "path": "name", "value": 5}]},
        {"schemas": [PATCH_URN], "Operations": [{"op": "replace", "path": "meta.version", "value": "1"}]},
        {"schemas": [PATCH_URN], "Operations": [{"op": "replace", "path": "groups", "value": []}]},
        {"schemas": [PATCH_URN], "Operations": [{"op": "replace", "path": "userName", "value": "x" * 300}]},
        {"schemas": [PATCH_URN], "Operations": [{"op": "replace", "path": "userName", "value": "has space"}]},
        {"schemas": [PATCH_URN], "Operations": [{"op": "replace", "path": "active", "value": "maybe"}]},
        {"schemas": [PATCH_URN], "Operations": [{"op": "replace", "path": "emails[", "value": "x"}]},
        {"schemas": [PATCH_URN], "Operations": "nope"},
        {"schemas": [PATCH_URN], "Operations": [None]},
        {"schemas": [PATCH_URN], "Operations": [{"op": "replace", "value": {"password": "short"}}]},
        {
            "schemas": [PATCH_URN],
            "Operations": [
                {
                    "op": "add",
                    "path": "emails",
                    "value": [{"value": "a", "primary": True}, {"value": "b", "primary": True}],
                }
            ],
        },
        {
            "schemas": [PATCH_URN],
            "Operations": [
                {
                    "op": "replace",
                    "path": "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager",
                    "value": {"value": "x" * 5000},
                }
            ],
        },
    ],
)
def test_hostile_patch_bodies_400_and_resource_unchanged(scim: Scim, body: dict[str, Any]) -> None:
    user = scim.create_user("patched")
    response = scim.request("PATCH", f"/Users/{user['id']}", body)
    assert 400 <= response.status_code < 500, response.text
    assert scim.request("GET", f"/Users/{user['id']}").json()["meta"]["version"] == user["meta"]["version"]


@pytest.mark.parametrize(
    "body",
    [
        {"schemas": [BULK], "Operations": [{"method": "GET", "path": "/Users"}]},
        {"schemas": [BULK], "Operations": [{"method": "POST", "path": "/Users", "data": {}}]},
        {"schemas": [BULK], "Operations": [{"method": "POST", "path": "/Nope", "bulkId": "a", "data": {}}]},
        {"schemas": [BULK], "Operations": [{"method": "PATCH", "path": "/Users/bulkId:zzz", "data": {}}]},
        {"schemas": [BULK], "Operations": [{"method": "DELETE", "path": 5}]},
        {"schemas": [BULK], "failOnErrors": "x", "Operations": [{"method": "DELETE", "path": "/Users/x"}]},
        {
            "schemas": [BULK],
            "Operations": [
                {
                    "method": "POST",
                    "path": "/Groups",
                    "bulkId": "a",
                    "data": {"schemas": [GROUP_URN], "displayName": "A", "members": [{"value": "bulkId:b"}]},
                },
                {
                    "method": "POST",
                    "path": "/Groups",
                    "bulkId": "b",
                    "data": {"schemas": [GROUP_URN], "displayName": "B", "members": [{"value": "bulkId:a"}]},
                },
            ],
        },
        {
            "schemas": [BULK],
            "Operations": [
                {"method": "POST", "path": "/Users", "bulkId": "u", "data": {"schemas": [USER_URN], "userName": 5}},
                {"method": "POST", "path": "/Users", "bulkId": "v", "data": {"schemas": [USER_URN]}},
            ],
        },
    ],
)
def test_hostile_bulk_bodies_never_500(scim: Scim, body: dict[str, Any]) -> None:
    response = scim.request("POST", "/Bulk", body)
    assert response.status_code < 500, response.text
    if response.status_code == 200:
        assert all(op["status"] >= "400" for op in response.json()["Operations"])
