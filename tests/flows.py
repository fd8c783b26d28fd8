"""Browser-flow helpers shared by tests: PKCE pairs and a full authorization-code login.

``http`` is either a Starlette ``TestClient`` or an ``httpx.Client`` (same API); redirects are
followed by hand so the final redirect to the client is captured instead of fetched.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

import httpx


def pkce_pair() -> tuple[str, str]:
    """Return ``(code_verifier, code_challenge)`` for S256 (RFC 7636 §4.1, §4.2)."""
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


@dataclass
class Form:
    """One HTML form: its action, hidden/text inputs and submit buttons."""

    action: str
    method: str
    inputs: dict[str, str] = field(default_factory=dict)
    buttons: list[tuple[str, str]] = field(default_factory=list)


class _FormParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.forms: list[Form] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        if tag == "form":
            self.forms.append(Form(values.get("action", ""), values.get("method", "get").lower()))
        elif self.forms and tag == "input" and values.get("name"):
            self.forms[-1].inputs[values["name"]] = values.get("value", "")
        elif self.forms and tag == "button" and values.get("name"):
            self.forms[-1].buttons.append((values["name"], values.get("value", "")))


def parse_forms(html: str) -> list[Form]:
    """Return the forms of an HTML page."""
    parser = _FormParser()
    parser.feed(html)
    return parser.forms


def query_of(url: str) -> dict[str, str]:
    """Return the query parameters of ``url`` (first value of each)."""
    return {name: values[0] for name, values in parse_qs(urlsplit(url).query, keep_blank_values=True).items()}


def authorize_params(
    *,
    client_id: str,
    redirect_uri: str,
    code_challenge: str,
    scope: str = "openid profile",
    state: str | None = "xyz",
    nonce: str | None = "n-1",
    extra_params: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Return the query parameters of a code + PKCE authorization request."""
    params: dict[str, Any] = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": redirect_uri,
        "scope": scope,
        "code_challenge": code_challenge,
        "code_challenge_method": "S256",
    }
    if state is not None:
        params["state"] = state
    if nonce is not None:
        params["nonce"] = nonce
    params.update(extra_params or {})
    return {name: value for name, value in params.items() if value is not None}


def _base(http: Any) -> str:
    return str(http.base_url).rstrip("/")


def follow_to_client(
    http: Any,
    response: httpx.Response,
    *,
    tenant_slug: str,
    username: str | None = None,
    password: str | None = None,
    consent: str = "approve",
    max_steps: int = 12,
) -> dict[str, str]:
    """Drive login and consent pages until the server redirects out of the issuer; return that query.

    Raises ``AssertionError`` with the page text when the flow stops on a page it cannot handle
    (an error page, or a failed login).
    """
    issuer_prefix = f"/tenants/{tenant_slug}/"
    base = _base(http)
    logins = 0
    for _ in range(max_steps):
        if response.status_code in (301, 302, 303, 307, 308):
            location = urljoin(str(response.url), response.headers["location"])
            parts = urlsplit(location)
            ours = f"{parts.scheme}://{parts.netloc}" == base and parts.path.startswith(issuer_prefix)
            if not ours:
                return query_of(location)
            if parts.query and query_of(location).get("error") == "login":
                raise AssertionError("login failed (wrong credentials or throttled)")
            response = http.get(location, follow_redirects=False)
            continue
        if response.status_code != 200:
            raise AssertionError(f"unexpected {response.status_code}: {response.text[:500]}")
        forms = parse_forms(response.text)
        if not forms:
            raise AssertionError(f"page without form: {response.text[:500]}")
        form = forms[0]
        data = dict(form.inputs)
        if "username" in data and "password" in form.inputs:
            if username is None or password is None or logins:
                raise AssertionError("login page shown but no (further) credentials to use")
            logins += 1
            data.update(username=username, password=password)
        elif any(name == "action" for name, _ in form.buttons):
            data["action"] = consent
        response = http.post(urljoin(str(response.url), form.action), data=data, follow_redirects=False)
    raise AssertionError("too many steps in the login flow")


def login_and_get_code(
    http: Any,
    *,
    tenant_slug: str,
    client_id: str,
    redirect_uri: str,
    username: str,
    password: str,
    code_challenge: str,
    scope: str = "openid profile",
    state: str | None = "xyz",
    nonce: str | None = "n-1",
    extra_params: dict[str, Any] | None = None,
) -> dict[str, str]:
    """Run the authorization request, sign in, approve consent if asked; return the final redirect's query.

    The result holds ``code``, ``state`` and ``iss`` on success (or ``error`` ... when the server
    redirected an error back to the client).
    """
    params = authorize_params(
        client_id=client_id,
        redirect_uri=redirect_uri,
        code_challenge=code_challenge,
        scope=scope,
        state=state,
        nonce=nonce,
        extra_params=extra_params,
    )
    response = http.get(f"/tenants/{tenant_slug}/authorize", params=params, follow_redirects=False)
    return follow_to_client(http, response, tenant_slug=tenant_slug, username=username, password=password)


def submit_first_form(http: Any, page: httpx.Response, **fields: str) -> httpx.Response:
    """Post the page's first form with its hidden fields plus ``fields`` (no redirect following)."""
    form = parse_forms(page.text)[0]
    data = {**form.inputs, **fields}
    return http.post(urljoin(str(page.url), form.action), data=data, follow_redirects=False)
