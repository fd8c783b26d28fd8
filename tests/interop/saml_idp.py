"""A SAML 2.0 identity provider (pysaml2) served over real HTTP on a loopback port, for browser tests.

It behaves like a small real IdP as a browser sees it: ``GET /sso`` takes an AuthnRequest on the
HTTP-Redirect binding (parsed by pysaml2 ``Server.parse_authn_request``) and shows a sign-in form;
``POST /sso`` checks the person's password, lets pysaml2 sign a Response (RSA-SHA256, SHA-256 digests:
idhub refuses SHA-1) and answers with a page whose script auto-posts ``SAMLResponse`` and ``RelayState``
to the ACS URL of the request (HTTP-POST binding), once that URL is one the SP's metadata names.

Every key and certificate here is a throwaway TEST FIXTURE made per instance.
"""

from __future__ import annotations

import asyncio
import base64
import html
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs

import uvicorn
from saml2 import BINDING_HTTP_POST, BINDING_HTTP_REDIRECT
from saml2.config import IdPConfig
from saml2.metadata import create_metadata_string
from saml2.saml import NAME_FORMAT_URI, NAMEID_FORMAT_PERSISTENT, NAMEID_FORMAT_TRANSIENT
from saml2.server import Server
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response
from starlette.routing import Route

from tests.broker.test_saml import PPT, RSA_SHA256, SHA256, XMLSEC1, make_keys
from tests.interop.conftest import free_port


@dataclass(frozen=True)
class IdpUser:
    """A person known to the IdP: their password and the attributes it asserts about them."""

    password: str
    attributes: dict[str, list[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class Seen:
    """One request the IdP answered."""

    method: str
    path: str


def _page(title: str, body: str, *, script: str = "") -> HTMLResponse:
    tail = f"<script>{script}</script>" if script else ""
    document = f"<!doctype html><html><head><title>{title}</title></head><body>{body}{tail}</body></html>"
    return HTMLResponse(document, headers={"cache-control": "no-store"})


def _hidden(name: str, value: str) -> str:
    return f'<input type="hidden" name="{name}" value="{html.escape(value, quote=True)}">'


class SamlIdp:
    """pysaml2 as an IdP on ``http://{host}:{port}`` (``localhost`` by default: another site than 127.0.0.1).

    Use: ``metadata()`` for the upstream's configuration, then ``trust(sp_metadata)`` once idhub names its
    SP, then ``with idp.running(): ...``.
    """

    def __init__(self, folder: Path, users: dict[str, IdpUser], *, host: str = "localhost") -> None:
        assert XMLSEC1 is not None, "pysaml2 signs with the xmlsec1 binary"
        self.port = free_port()
        self.base_url = f"http://{host}:{self.port}"
        self.entity_id = f"{self.base_url}/metadata"
        self.sso_url = f"{self.base_url}/sso"
        self.users = users
        self.seen: list[Seen] = []
        self.issued: list[str] = []  # the user ids Responses were signed for
        self._folder = folder
        keys = make_keys("browser-test-idp")
        (folder / "idp.key").write_text(keys.key_pem)
        (folder / "idp.crt").write_text(keys.cert_pem)
        self._server: Server | None = None

    def _config(self, sp_metadata: str | None) -> IdPConfig:
        conf = IdPConfig()
        conf.load(
            {
                "entityid": self.entity_id,
                "service": {
                    "idp": {
                        "endpoints": {"single_sign_on_service": [(self.sso_url, BINDING_HTTP_REDIRECT)]},
                        "policy": {"default": {"lifetime": {"minutes": 15}, "name_form": NAME_FORMAT_URI}},
                        "name_id_format": [NAMEID_FORMAT_PERSISTENT, NAMEID_FORMAT_TRANSIENT],
                    }
                },
                "key_file": str(self._folder / "idp.key"),
                "cert_file": str(self._folder / "idp.crt"),
                "xmlsec_binary": XMLSEC1,
                "metadata": {"inline": [sp_metadata]} if sp_metadata else {},
            }
        )
        return conf

    def metadata(self) -> bytes:
        """Return the IdP's metadata (entity ID, SSO URL on HTTP-Redirect, signing certificate)."""
        return create_metadata_string(None, config=self._config(None), sign=False)  # type: ignore[no-any-return]

    def trust(self, sp_metadata: str) -> None:
        """Register the SP (idhub's metadata for this upstream): only its ACS URLs are answered to."""
        self._server = Server(config=self._config(sp_metadata))

    # -- HTTP ------------------------------------------------------------------------------------------

    def _record(self, request: Request) -> None:
        self.seen.append(Seen(request.method, request.url.path))

    async def _sso_get(self, request: Request) -> Response:
        self._record(request)
        saml_request = request.query_params.get("SAMLRequest", "")
        relay_state = request.query_params.get("RelayState", "")
        return await self._login_form(saml_request, relay_state, error="")

    async def _login_form(self, saml_request: str, relay_state: str, *, error: str) -> Response:
        try:
            await run_in_threadpool(self._parse, saml_request)
        except Exception as exc:  # a real IdP shows an error page for a request it cannot read
            return PlainTextResponse(f"bad AuthnRequest: {type(exc).__name__}", status_code=400)
        problem = f'<p id="idp-error">{html.escape(error)}</p>' if error else ""
        form = (
            f'<h1>Test IdP</h1>{problem}<form method="post" action="{self.sso_url}">'
            + _hidden("SAMLRequest", saml_request)
            + _hidden("RelayState", relay_state)
            + '<input id="idp-username" name="username"><input id="idp-password" name="password" type="password">'
            + '<button id="idp-sign-in" type="submit">Sign in</button></form>'
        )
        return _page("Test IdP sign-in", form)

    async def _sso_post(self, request: Request) -> Response:
        self._record(request)
        form = {name: values[0] for name, values in parse_qs((await request.body()).decode()).items()}
        saml_request, relay_state = form.get("SAMLRequest", ""), form.get("RelayState", "")
        user = self.users.get(form.get("username", ""))
        if user is None or user.password != form.get("password"):
            return await self._login_form(saml_request, relay_state, error="Wrong username or password.")
        try:
            acs, saml_response = await run_in_threadpool(self._respond, saml_request, form["username"], user)
        except Exception as exc:
            return PlainTextResponse(f"cannot answer: {type(exc).__name__}: {exc}", status_code=400)
        body = (
            f'<form method="post" action="{html.escape(acs, quote=True)}">'
            + _hidden("SAMLResponse", saml_response)
            + (_hidden("RelayState", relay_state) if relay_state else "")
            + "<noscript><button type=submit>Continue</button></noscript></form>"
        )
        return _page("Signing you in", body, script="document.forms[0].submit();")

    def _parse(self, saml_request: str) -> object:
        assert self._server is not None, "call trust(sp_metadata) first"
        return self._server.parse_authn_request(saml_request, BINDING_HTTP_REDIRECT)

    def _respond(self, saml_request: str, user_id: str, user: IdpUser) -> tuple[str, str]:
        """Return the ACS URL and the signed, base64-encoded Response for ``user``."""
        assert self._server is not None
        request = self._server.parse_authn_request(saml_request, BINDING_HTTP_REDIRECT).message
        sp = request.issuer.text
        acs = request.assertion_consumer_service_url
        known = [
            endpoint["location"]
            for endpoint in self._server.metadata.assertion_consumer_service(sp, binding=BINDING_HTTP_POST)
        ]
        if acs not in known:  # SAML Profiles §4.1.4.1: only to an ACS the SP's metadata names
            raise ValueError(f"ACS {acs!r} is not in the SP's metadata")
        xml = self._server.create_authn_response(
            dict(user.attributes),
            request.id,
            acs,
            sp,
            name_id_policy=request.name_id_policy,
            userid=user_id,
            authn={"class_ref": PPT, "authn_auth": self.entity_id},
            sign_assertion=True,
            sign_response=True,
            sign_alg=RSA_SHA256,
            digest_alg=SHA256,
        )
        self.issued.append(user_id)
        return acs, base64.b64encode(str(xml).encode()).decode()

    def app(self) -> Starlette:
        """Return the IdP's ASGI app."""
        return Starlette(
            routes=[
                Route("/sso", self._sso_get, methods=["GET"]),
                Route("/sso", self._sso_post, methods=["POST"]),
            ]
        )

    @contextmanager
    def running(self) -> Iterator[SamlIdp]:
        """Serve the IdP on 127.0.0.1 (its port) for the ``with`` block, in a thread of this process."""
        server = uvicorn.Server(
            uvicorn.Config(self.app(), host="127.0.0.1", port=self.port, log_level="warning", lifespan="off")
        )
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_until_complete, args=(server.serve(),), daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("the test SAML IdP did not start")
            time.sleep(0.02)
        try:
            yield self
        finally:
            server.should_exit = True
            thread.join(timeout=10)
            loop.close()
