"""SCIM Bulk (RFC 7644 §3.7): many operations in one request, ``bulkId`` references, ``failOnErrors``.

Each operation runs in its own savepoint, so a failing one leaves no trace while the others stand
(RFC 7644 §3.7: the server "MUST continue performing as many changes as possible" until
``failOnErrors`` is reached). Runs of user creations (how HR systems onboard people) go to the
directory's ``create_many`` (one multi-row INSERT) instead of one round trip per user; they go through
the same schema normalisation and the same directory rules as a single POST.
"""

from __future__ import annotations

import re
from typing import Any

from idhub.errors import DomainError
from idhub.scim import discovery, errors
from idhub.scim.service import ScimService

BULK_REQUEST = "urn:ietf:params:scim:api:messages:2.0:BulkRequest"
BULK_RESPONSE = "urn:ietf:params:scim:api:messages:2.0:BulkResponse"
BULK_ID_RE = re.compile(r"^bulkId:(.{1,200})$")
METHODS = ("POST", "PUT", "PATCH", "DELETE")


class UnresolvedBulkId(errors.ScimError):
    """An operation refers to a ``bulkId`` that no successful POST of this request defined (RFC 7644 §3.7.2)."""

    status = 409
    scim_type = "invalidValue"


class _Deferred(Exception):
    """The operation refers to a bulkId a later operation creates: run it after that one."""


def _check_request(body: dict[str, Any]) -> tuple[list[dict[str, Any]], int | None]:
    declared = body.get("schemas")
    if not isinstance(declared, list) or BULK_REQUEST not in declared:
        raise errors.InvalidSyntax(f"a bulk request must declare {BULK_REQUEST}")
    operations = body.get("Operations")
    if not isinstance(operations, list) or not operations:
        raise errors.InvalidSyntax("Operations must be a non-empty list")
    if len(operations) > discovery.BULK_MAX_OPERATIONS:
        # RFC 7644 §3.7.4: over maxOperations is 413 and nothing runs.
        raise errors.PayloadTooLarge(f"at most {discovery.BULK_MAX_OPERATIONS} operations per request")
    fail_on_errors = body.get("failOnErrors")
    if fail_on_errors is not None and (
        isinstance(fail_on_errors, bool) or not isinstance(fail_on_errors, int) or fail_on_errors < 1
    ):
        raise errors.InvalidValue("failOnErrors must be a positive integer")
    for op in operations:
        if not isinstance(op, dict):
            raise errors.InvalidSyntax("each operation must be an object")
    return operations, fail_on_errors


def _resolve(value: Any, ids: dict[str, str], pending: set[str]) -> Any:
    """Replace ``bulkId:x`` strings with the ids created by this request (RFC 7644 §3.7.2)."""
    if isinstance(value, str):
        match = BULK_ID_RE.match(value)
        if match is None:
            return value
        key = match.group(1)
        if key in ids:
            return ids[key]
        if key in pending:
            raise _Deferred(key)
        raise UnresolvedBulkId(f"bulkId {key!r} was not created by this request")
    if isinstance(value, list):
        return [_resolve(item, ids, pending) for item in value]
    if isinstance(value, dict):
        return {k: _resolve(v, ids, pending) for k, v in value.items()}
    return value


def _endpoint(path: Any) -> tuple[str, str | None]:
    if not isinstance(path, str) or not path.startswith("/"):
        raise errors.InvalidSyntax("each operation needs a path such as /Users or /Users/{id}")
    parts = path.split("/")
    if len(parts) == 2 and parts[1] in ("Users", "Groups"):
        return parts[1], None
    if len(parts) == 3 and parts[1] in ("Users", "Groups") and parts[2]:
        return parts[1], parts[2]
    raise errors.InvalidPath(f"no resource at {path[:200]}")


async def run_bulk(service: ScimService, body: dict[str, Any]) -> dict[str, Any]:
    """Run a BulkRequest and return the BulkResponse (RFC 7644 §3.7.3)."""
    operations, fail_on_errors = _check_request(body)
    results: list[dict[str, Any] | None] = [None] * len(operations)
    ids: dict[str, str] = {}
    pending = {
        str(op["bulkId"]) for op in operations if isinstance(op.get("bulkId"), str) and op.get("method") == "POST"
    }
    failures = 0
    queue = list(range(len(operations)))
    while queue:
        deferred: list[int] = []
        index = 0
        while index < len(queue):
            if fail_on_errors is not None and failures >= fail_on_errors:
                queue = []
                break
            # A run of plain user creations is written in one go.
            run = _user_creation_run(operations, queue, index, ids, pending)
            if len(run) > 1:
                for i, result in zip(run, await _create_users(service, [operations[i] for i in run]), strict=True):
                    results[i] = result
                    failures += _failed(result)
                    if result["status"] == "201" and operations[i].get("bulkId"):
                        ids[str(operations[i]["bulkId"])] = result["location"].rsplit("/", 1)[1]
                        pending.discard(str(operations[i]["bulkId"]))
                index += len(run)
                continue
            i = queue[index]
            index += 1
            try:
                results[i] = await _run_one(service, operations[i], ids, pending)
            except _Deferred:
                deferred.append(i)
                continue
            if _failed(results[i]):
                failures += 1
                bulk_id = operations[i].get("bulkId")
                if isinstance(bulk_id, str):
                    pending.discard(bulk_id)
            elif operations[i].get("method") == "POST" and isinstance(operations[i].get("bulkId"), str):
                ids[operations[i]["bulkId"]] = results[i]["location"].rsplit("/", 1)[1]  # type: ignore[index]
                pending.discard(operations[i]["bulkId"])
        if deferred and len(deferred) == len(queue):
            # No progress: the remaining operations refer to each other in a circle.
            for i in deferred:
                results[i] = _error_result(operations[i], UnresolvedBulkId("circular bulkId references"))
                failures += 1
            break
        queue = deferred
    return {"schemas": [BULK_RESPONSE], "Operations": [r for r in results if r is not None]}


def _failed(result: dict[str, Any] | None) -> bool:
    """Whether an operation's result is an error (its ``status`` is the HTTP code as a string)."""
    return result is not None and int(result["status"]) >= 400


def _user_creation_run(
    operations: list[dict[str, Any]], queue: list[int], start: int, ids: dict[str, str], pending: set[str]
) -> list[int]:
    run: list[int] = []
    for i in queue[start:]:
        op = operations[i]
        if op.get("method") != "POST" or op.get("path") != "/Users" or not isinstance(op.get("data"), dict):
            break
        if "bulkId:" in repr(op["data"]) or "password" in {str(k).lower() for k in op["data"]}:
            break  # references and password hashing take the one-by-one path
        run.append(i)
    return run


def _error_result(op: dict[str, Any], exc: errors.ScimError | DomainError) -> dict[str, Any]:
    if isinstance(exc, DomainError):
        exc = errors.from_domain(exc)
    result: dict[str, Any] = {"method": op.get("method"), "status": str(exc.status), "response": exc.body()}
    if isinstance(op.get("bulkId"), str):
        result["bulkId"] = op["bulkId"]
    return result


def _ok_result(op: dict[str, Any], status: int, resource: dict[str, Any] | None, location: str) -> dict[str, Any]:
    result: dict[str, Any] = {"method": op["method"], "location": location, "status": str(status)}
    if isinstance(op.get("bulkId"), str):
        result["bulkId"] = op["bulkId"]
    if resource is not None:
        result["version"] = resource["meta"]["version"]
    return result


async def _run_one(service: ScimService, op: dict[str, Any], ids: dict[str, str], pending: set[str]) -> dict[str, Any]:
    """Run one operation in a savepoint: its failure undoes only itself."""
    try:
        method = op.get("method")
        if method not in METHODS:
            raise errors.InvalidSyntax("method must be POST, PUT, PATCH or DELETE")
        if method == "POST" and not isinstance(op.get("bulkId"), str):
            raise errors.InvalidSyntax("a POST operation needs a bulkId")  # RFC 7644 §3.7
        kind, target = _endpoint(_resolve(op.get("path"), ids, pending))
        data = _resolve(op.get("data"), ids, pending)
        version = op.get("version")
        if_match = version if isinstance(version, str) else None
        if method in ("POST", "PUT", "PATCH") and not isinstance(data, dict):
            raise errors.InvalidSyntax("data must be an object")
        if (method == "POST") != (target is None):
            raise errors.InvalidPath("POST goes to /Users or /Groups; other methods to /Users/{id} or /Groups/{id}")
        async with service.uow.session.begin_nested():
            resource: dict[str, Any] | None = None
            if kind == "Users":
                if method == "POST":
                    resource = await service.create_user(data)
                elif method == "PUT":
                    resource = await service.replace_user(str(target), data, if_match)
                elif method == "PATCH":
                    resource = await service.patch_user(str(target), data, if_match)
                else:
                    await service.delete_user(str(target), if_match)
            elif method == "POST":
                resource = await service.create_group(data)
            elif method == "PUT":
                resource = await service.replace_group(str(target), data, if_match)
            elif method == "PATCH":
                resource = await service.patch_group(str(target), data, if_match)
            else:
                await service.delete_group(str(target), if_match)
    except (errors.ScimError, DomainError) as exc:
        return _error_result(op, exc)
    if resource is None:
        return _ok_result(op, 204, None, f"{service.base_url}/{kind}/{target}")
    return _ok_result(op, 201 if method == "POST" else 200, resource, resource["meta"]["location"])


async def _create_users(service: ScimService, ops: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Create many users at once; same rules and answers as one POST each."""
    results = []
    for op, outcome in zip(ops, await service.create_users([op["data"] for op in ops]), strict=True):
        if isinstance(outcome, errors.ScimError | DomainError):
            results.append(_error_result(op, outcome))
            continue
        result = {"method": "POST", "location": outcome["meta"]["location"], "version": outcome["meta"]["version"],
                  "status": "201"}  # fmt: skip
        if isinstance(op.get("bulkId"), str):
            result["bulkId"] = op["bulkId"]
        results.append(result)
    return results
