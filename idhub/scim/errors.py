"""SCIM errors (RFC 7644 §3.12): an HTTP status, an optional ``scimType`` and a human-readable detail.

One class per ``scimType`` so code says what went wrong; the router renders every one of them as the
``urn:ietf:params:scim:api:messages:2.0:Error`` body. Details never carry internal state.
"""

from __future__ import annotations

from typing import Any

from idhub import errors as domain

ERROR_SCHEMA = "urn:ietf:params:scim:api:messages:2.0:Error"


class ScimError(Exception):
    """Base of every SCIM error; ``status`` and ``scim_type`` are what the wire shows."""

    status: int = 400
    scim_type: str | None = None

    def __init__(self, detail: str = "", *, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        """Return the error response body (RFC 7644 §3.12; ``status`` is a string there)."""
        body: dict[str, Any] = {"schemas": [ERROR_SCHEMA], "status": str(self.status)}
        if self.scim_type:
            body["scimType"] = self.scim_type
        if self.detail:
            body["detail"] = self.detail
        return body


class InvalidFilter(ScimError):
    """The specified filter syntax was invalid or the attribute and comparison are not supported."""

    scim_type = "invalidFilter"


class TooMany(ScimError):
    """The filter yields more results than the server is willing to process."""

    scim_type = "tooMany"


class Uniqueness(ScimError):
    """One or more attribute values are already in use or reserved (409)."""

    status = 409
    scim_type = "uniqueness"


class Mutability(ScimError):
    """The modification is incompatible with the target attribute's mutability."""

    scim_type = "mutability"


class InvalidSyntax(ScimError):
    """The request body structure was invalid or did not conform to the schema."""

    scim_type = "invalidSyntax"


class InvalidPath(ScimError):
    """The ``path`` attribute was invalid or malformed."""

    scim_type = "invalidPath"


class NoTarget(ScimError):
    """The specified ``path`` did not yield an attribute or value that could be operated on."""

    scim_type = "noTarget"


class InvalidValue(ScimError):
    """A required value was missing or a value was not compatible with the attribute."""

    scim_type = "invalidValue"


class InvalidVersion(ScimError):
    """The specified SCIM protocol version is not supported."""

    scim_type = "invalidVers"


class Sensitive(ScimError):
    """The request cannot be completed because of sensitive information in the URI (use POST /.search)."""

    status = 403
    scim_type = "sensitive"


class Unauthorized(ScimError):
    """Authorization failure: the bearer token is missing, invalid, expired or not for SCIM."""

    status = 401


class Forbidden(ScimError):
    """The operation is not permitted for this client."""

    status = 403


class NotFound(ScimError):
    """The resource or endpoint does not exist."""

    status = 404


class PreconditionFailed(ScimError):
    """``If-Match`` named a version that is no longer current (RFC 7644 §3.14)."""

    status = 412


class PayloadTooLarge(ScimError):
    """The request exceeds the advertised ``maxPayloadSize`` or ``maxOperations`` (RFC 7644 §3.7.4)."""

    status = 413


class NotImplementedOperation(ScimError):
    """The service provider does not support the requested operation."""

    status = 501


class MethodNotAllowed(ScimError):
    """The endpoint exists but does not take this method (RFC 7644 §3.2, RFC 9110 §15.5.6)."""

    status = 405


class ServerError(ScimError):
    """Something unexpected went wrong; the detail is in the log under the request id, not here."""

    status = 500


class ServiceUnavailable(ScimError):
    """A dependency is down; retry after ``Retry-After`` seconds."""

    status = 503


def from_domain(exc: domain.DomainError) -> ScimError:
    """Translate a directory (domain) error into its SCIM error (RFC 7644 §3.12)."""
    detail = exc.detail
    if isinstance(exc, domain.PreconditionFailed):
        return PreconditionFailed(detail or "the resource has changed")
    if isinstance(exc, domain.Conflict):
        return Uniqueness(detail or "the value is already in use")
    if isinstance(exc, domain.NotFound):
        return NotFound(detail or "not found")
    if isinstance(exc, domain.Forbidden):
        return Forbidden(detail or "not permitted")
    if isinstance(exc, domain.Unavailable):
        return ServiceUnavailable(detail or "temporarily unavailable", headers={"retry-after": str(exc.retry_after)})
    return InvalidValue(detail)
