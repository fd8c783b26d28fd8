"""Stand-ins for GitHub and Facebook on a loopback port, speaking each network's documented wire format.

One uvicorn server (in a thread, like :mod:`tests.broker.standin`) serves both networks' paths:

- GitHub (docs "Authorizing OAuth apps", "Troubleshooting OAuth app access token request errors", REST
  "Users" and "Emails"): ``/login/oauth/authorize`` redirects back with ``code`` and ``state``;
  ``POST /login/oauth/access_token`` answers form-encoded unless the request's ``Accept`` asks for JSON,
  and reports its errors as a **200** whose body carries ``error``; ``GET /user`` (numeric ``id``,
  ``login``, public ``email``) and ``GET /user/emails`` (a JSON **array** of ``email``, ``primary``,
  ``verified``, ``visibility``) take ``Authorization: Bearer`` (or ``token``); a bad token is a 401
  ``{"message": "Bad credentials"}``.
- Facebook (docs "Manually Build a Login Flow", Graph API "User", "Handling errors", "Securing
  requests"): ``/v19.0/dialog/oauth`` redirects back (``error=access_denied&error_reason=user_denied``
  when the person declines); ``/v19.0/oauth/access_token`` (GET or POST) answers JSON, errors as a 400
  with an ``error`` **object** (``message``, ``type``, ``code``, ``fbtrace_id``); ``/v19.0/me``
  returns only the ``fields`` asked for and checks ``appsecret_proof`` when one is sent (or required).

Tests program the answers through the fields of :class:`SocialStandIn`. Throwaway values only.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from tests.broker.standin import serve_app

GITHUB_TOKEN = "/login/oauth/access_token"
FACEBOOK_GRAPH = "/v19.0"
GITHUB_ERRORS = "/apps/managing-oauth-apps/troubleshooting-oauth-app-access-token-request-errors/"


def s256(verifier: str) -> str:
    """Return the S256 code challenge of ``verifier`` (RFC 7636 §4.2)."""
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


@dataclass
class Grant:
    """A code the token endpoint will redeem once."""

    network: str
    client_id: str
    redirect_uri: str
    code_challenge: str | None


@dataclass
class SocialStandIn:
    """What the stand-in answers; tests change these fields between requests."""

    base_url: str = ""
    github_client_id: str = "gh-client"
    github_client_secret: str = "gh-secret-0123456789"
    facebook_client_id: str = "fb-app"
    facebook_client_secret: str = "fb-secret-0123456789"
    github_user: dict[str, Any] = field(
        default_factory=lambda: {
            "login": "octocat",
            "id": 583231,
            "node_id": "MDQ6VXNlcjU4MzIzMQ==",
            "name": "The Octocat",
            "email": "octocat@public.example",
            "type": "User",
        }
    )
    github_emails: list[dict[str, Any]] = field(
        default_factory=lambda: [
            {"email": "octo-old@corp.example", "primary": False, "verified": True, "visibility": None},
            {"email": "octocat@corp.example", "primary": True, "verified": True, "visibility": "private"},
        ]
    )
    facebook_user: dict[str, Any] = field(
        default_factory=lambda: {
            "id": "10158000000000001",
            "name": "Alice Example",
            "first_name": "Alice",
            "last_name": "Example",
            "email": "alice@social.example",
        }
    )
    token_error: str | None = None  # the next token answers are this error
    token_type: str = "bearer"
    ignore_accept: bool = False  # GitHub: answer form-encoded even when JSON was asked for
    deny: bool = False  # the person declines at the authorization page
    require_appsecret_proof: bool = False
    profile_status: int = 200  # GitHub /user and Facebook /me
    profile_raw: bytes | None = None  # GitHub /user and Facebook /me answer these bytes instead
    profile_error_ok: dict[str, Any] | None = None  # Facebook /me: a 200 whose body is this error
    emails_raw: bytes | None = None  # GitHub /user/emails answers these bytes instead
    grants: dict[str, Grant] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)  # access token -> network
    token_requests: list[dict[str, str]] = field(default_factory=list)
    api_requests: list[dict[str, str]] = field(default_factory=list)  # path, authorization, accept, query

    def reset(self) -> None:
        """Restore the default behaviour (the address and any outstanding codes are kept)."""
        fresh = SocialStandIn()
        for name in SocialStandIn.__dataclass_fields__:
            if name not in ("base_url", "grants", "tokens"):
                setattr(self, name, getattr(fresh, name))

    def endpoints(self, network: str) -> dict[str, str]:
        """Return the endpoint overrides that point ``network``'s preset at this stand-in."""
        base = self.base_url
        if network == "github":
            return {
                "authorization_endpoint": f"{base}/login/oauth/authorize",
                "token_endpoint": f"{base}{GITHUB_TOKEN}",
                "profile_endpoint": f"{base}/user",
                "emails_endpoint": f"{base}/user/emails",
            }
        return {
            "authorization_endpoint": f"{base}{FACEBOOK_GRAPH}/dialog/oauth",
            "token_endpoint": f"{base}{FACEBOOK_GRAPH}/oauth/access_token",
            "profile_endpoint": f"{base}{FACEBOOK_GRAPH}/me?fields=id,name,email,first_name,last_name",
        }

    def issue_code(self, network: str, redirect_uri: str, verifier: str | None) -> str:
        """Return a code for ``network`` as its authorization page would, bound to the PKCE verifier's challenge."""
        code = secrets.token_urlsafe(16)
        client = self.github_client_id if network == "github" else self.facebook_client_id
        self.grants[code] = Grant(network, client, redirect_uri, s256(verifier) if verifier else None)
        return code

    def app(self) -> Starlette:
        """Return the stand-in's ASGI app."""
        return Starlette(
            routes=[
                Route("/login/oauth/authorize", self._github_authorize),
                Route(GITHUB_TOKEN, self._github_token, methods=["POST"]),
                Route("/user", self._github_user),
                Route("/user/emails", self._github_emails),
                Route(f"{FACEBOOK_GRAPH}/dialog/oauth", self._facebook_dialog),
                Route(f"{FACEBOOK_GRAPH}/oauth/access_token", self._facebook_token, methods=["GET", "POST"]),
                Route(f"{FACEBOOK_GRAPH}/me", self._facebook_me),
            ]
        )

    # Authorization pages: the person signs in and consents at once (or declines, with ``deny``).

    def _authorize(self, request: Request, network: str, denial: dict[str, str]) -> Response:
        query = request.query_params
        redirect_uri = query["redirect_uri"]
        params: dict[str, str]
        if self.deny:
            params = {**denial, "state": query.get("state", "")}
        else:
            code = secrets.token_urlsafe(16)
            method = query.get("code_challenge_method")
            challenge = query.get("code_challenge") if method == "S256" else None
            self.grants[code] = Grant(network, query["client_id"], redirect_uri, challenge)
            params = {"code": code, "state": query.get("state", "")}
        return RedirectResponse(f"{redirect_uri}?{urlencode(params)}", status_code=302)

    async def _github_authorize(self, request: Request) -> Response:
        denial = {
            "error": "access_denied",
            "error_description": "The user has denied your application access.",
            "error_uri": "/apps/managing-oauth-apps/troubleshooting-authorization-request-errors/#access-denied",
        }
        return self._authorize(request, "github", denial)

    async def _facebook_dialog(self, request: Request) -> Response:
        denial = {
            "error": "access_denied",
            "error_code": "200",
            "error_description": "Permissions error",
            "error_reason": "user_denied",
        }
        return self._authorize(request, "facebook", denial)

    def _redeem(self, network: str, form: dict[str, str]) -> tuple[str | None, str | None]:
        """Return (access token, error code) for a token request of ``network``."""
        self.token_requests.append(form)
        client_id, client_secret = (
            (self.github_client_id, self.github_client_secret)
            if network == "github"
            else (self.facebook_client_id, self.facebook_client_secret)
        )
        if self.token_error is not None:
            return None, self.token_error
        if form.get("client_id") != client_id or form.get("client_secret") != client_secret:
            return None, "incorrect_client_credentials"
        grant = self.grants.pop(form.get("code", ""), None)
        if grant is None or grant.network != network or grant.client_id != client_id:
            return None, "bad_verification_code"
        if form.get("redirect_uri") != grant.redirect_uri:
            return None, "redirect_uri_mismatch"
        if grant.code_challenge is not None and s256(form.get("code_verifier", "")) != grant.code_challenge:
            return None, "bad_verification_code"
        token = secrets.token_urlsafe(24)
        self.tokens[token] = network
        return token, None

    # GitHub

    async def _github_token(self, request: Request) -> Response:
        form = dict(parse_qsl((await request.body()).decode()))
        token, error = self._redeem("github", form)
        if error is not None:
            body: dict[str, str] = {
                "error": error,
                "error_description": "The code passed is incorrect or expired.",
                "error_uri": f"{GITHUB_ERRORS}#{error}",
            }
        else:
            assert token is not None
            body = {"access_token": token, "scope": "read:user,user:email", "token_type": self.token_type}
        # The answer's format follows Accept; an error is still a 200 (GitHub's documented behaviour).
        if "application/json" in request.headers.get("accept", "") and not self.ignore_accept:
            return JSONResponse(body)
        return Response(urlencode(body), media_type="application/x-www-form-urlencoded")

    def _github_bearer(self, request: Request) -> bool:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        self.api_requests.append(
            {
                "path": request.url.path,
                "authorization": request.headers.get("authorization", ""),
                "accept": request.headers.get("accept", ""),
                "api_version": request.headers.get("x-github-api-version", ""),
                "query": request.url.query,
            }
        )
        return scheme.lower() in ("bearer", "token") and self.tokens.get(token) == "github"

    @staticmethod
    def _bad_credentials() -> Response:
        return JSONResponse(
            {"message": "Bad credentials", "documentation_url": "https://docs.github.com/rest"}, status_code=401
        )

    async def _github_user(self, request: Request) -> Response:
        if not self._github_bearer(request):
            return self._bad_credentials()
        if self.profile_raw is not None:
            return Response(self.profile_raw, status_code=self.profile_status, media_type="application/json")
        return JSONResponse(self.github_user, status_code=self.profile_status)

    async def _github_emails(self, request: Request) -> Response:
        if not self._github_bearer(request):
            return self._bad_credentials()
        if self.emails_raw is not None:
            return Response(self.emails_raw, media_type="application/json")
        return JSONResponse(self.github_emails)

    # Facebook

    @staticmethod
    def _graph_error(message: str, kind: str, code: int, status: int = 400) -> Response:
        error = {"message": message, "type": kind, "code": code, "fbtrace_id": "AbCdEf123"}
        return JSONResponse({"error": error}, status_code=status)

    async def _facebook_token(self, request: Request) -> Response:
        if request.method == "POST":
            form = dict(parse_qsl((await request.body()).decode()))
        else:
            form = dict(request.query_params)
        token, error = self._redeem("facebook", form)
        if error is not None:
            return self._graph_error(f"Error validating verification code ({error})", "OAuthException", 100)
        return JSONResponse({"access_token": token, "token_type": self.token_type, "expires_in": 5183944})

    async def _facebook_me(self, request: Request) -> Response:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        query = request.query_params
        self.api_requests.append(
            {"path": request.url.path, "authorization": request.headers.get("authorization", ""),
             "query": request.url.query}
        )  # fmt: skip
        if scheme.lower() not in ("bearer", "oauth"):
            token = query.get("access_token", "")
        if self.tokens.get(token) != "facebook":
            return self._graph_error("Invalid OAuth access token - Cannot parse access token", "OAuthException", 190)
        proof = query.get("appsecret_proof")
        expected = hmac.new(self.facebook_client_secret.encode(), token.encode(), hashlib.sha256).hexdigest()
        if (proof is not None or self.require_appsecret_proof) and not hmac.compare_digest(proof or "", expected):
            return self._graph_error(
                "Invalid appsecret_proof provided in the API argument", "GraphMethodException", 100
            )
        if self.profile_error_ok is not None:
            return JSONResponse({"error": self.profile_error_ok})
        if self.profile_raw is not None:
            return Response(self.profile_raw, status_code=self.profile_status, media_type="application/json")
        wanted = {"id", *query.get("fields", "id,name").split(",")}
        return JSONResponse(
            {k: v for k, v in self.facebook_user.items() if k in wanted}, status_code=self.profile_status
        )


def serve(standin: SocialStandIn) -> Iterator[SocialStandIn]:
    """Serve ``standin`` on a loopback port for the duration of the generator."""
    with serve_app(standin.app(), "social stand-in") as url:
        standin.base_url = url  # the app reads it per request
        yield standin
