"""OAuth 2.0 errors, one class per wire code (RFC 6749 §4.1.2.1, §5.2; RFC 6750 §3.1; OIDC Core §3.1.2.6).

Each class carries its HTTP status and wire ``error`` code. ``description`` is what the client may
read (what it can fix); ``internal`` is what the operator reads in the log, with the request id. Anything
not meant for clients becomes ``server_error`` with the detail only in logs.
"""

from __future__ import annotations

from typing import ClassVar


class OAuthError(Exception):
    """Base of every error that is rendered as an OAuth error response."""

    error: ClassVar[str] = "invalid_request"
    status_code: ClassVar[int] = 400

    def __init__(
        self, description: str | None = None, *, state: str | None = None, internal: str | None = None
    ) -> None:
        super().__init__(description or self.error)
        self.description = description
        self.state = state
        self.internal = internal

    def to_dict(self) -> dict[str, str]:
        """Return the JSON body of RFC 6749 §5.2."""
        body = {"error": self.error}
        if self.description:
            body["error_description"] = self.description
        return body


class InvalidRequest(OAuthError):
    """The request is missing a required parameter, includes an invalid or repeated parameter, or is malformed."""

    error = "invalid_request"


class RequestTooLarge(InvalidRequest):
    """The request body is larger than the endpoint accepts (RFC 9110 §15.5.14: 413 Content Too Large).

    RFC 6749 §5.2 has no code for this; the body says ``invalid_request`` and the status says why.
    """

    status_code = 413


class InvalidClient(OAuthError):
    """Client authentication failed (unknown client, no client authentication included, or unsupported method)."""

    error = "invalid_client"
    status_code = 401


class InvalidGrant(OAuthError):
    """The grant or refresh token is invalid, expired, revoked, or was issued to another client or redirect URI."""

    error = "invalid_grant"


class UnauthorizedClient(OAuthError):
    """The authenticated client is not authorized to use this authorization grant type."""

    error = "unauthorized_client"


class UnsupportedGrantType(OAuthError):
    """The authorization grant type is not supported by the authorization server."""

    error = "unsupported_grant_type"


class InvalidScope(OAuthError):
    """The requested scope is invalid, unknown, malformed, or exceeds the scope granted."""

    error = "invalid_scope"


class AccessDenied(OAuthError):
    """The resource owner or authorization server denied the request."""

    error = "access_denied"
    status_code = 403


class UnsupportedResponseType(OAuthError):
    """The authorization server does not support obtaining an authorization code using this method."""

    error = "unsupported_response_type"


class InvalidTarget(OAuthError):
    """The requested resource is invalid, missing, unknown, or malformed (RFC 8707 §2)."""

    error = "invalid_target"


class LoginRequired(OAuthError):
    """The authorization server requires end-user authentication (OIDC Core §3.1.2.6)."""

    error = "login_required"


class ConsentRequired(OAuthError):
    """The authorization server requires end-user consent (OIDC Core §3.1.2.6)."""

    error = "consent_required"


class InteractionRequired(OAuthError):
    """The authorization server requires end-user interaction of some form (OIDC Core §3.1.2.6)."""

    error = "interaction_required"


class RequestNotSupported(OAuthError):
    """The OP does not support use of the request parameter (OIDC Core §3.1.2.6)."""

    error = "request_not_supported"


class RequestUriNotSupported(OAuthError):
    """The OP does not support use of the request_uri parameter (OIDC Core §3.1.2.6)."""

    error = "request_uri_not_supported"


class InvalidToken(OAuthError):
    """The access token is expired, revoked, malformed, or invalid (RFC 6750 §3.1)."""

    error = "invalid_token"
    status_code = 401


class MissingToken(InvalidToken):
    """The request carries no access token at all (RFC 6750 §3.1: answer without an error code)."""


class InsufficientScope(OAuthError):
    """The request requires higher privileges than provided by the access token (RFC 6750 §3.1)."""

    error = "insufficient_scope"
    status_code = 403


class UnsupportedTokenType(OAuthError):
    """The authorization server does not support the revocation of the presented token type (RFC 7009 §2.2.1)."""

    error = "unsupported_token_type"


class ServerError(OAuthError):
    """The authorization server encountered an unexpected condition."""

    error = "server_error"
    status_code = 500


class TemporarilyUnavailable(OAuthError):
    """The authorization server is temporarily unable to handle the request."""

    error = "temporarily_unavailable"
    status_code = 503
