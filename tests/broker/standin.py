"""A stand-in OpenID provider on a loopback port, speaking the real protocol, programmable per test.

It serves discovery, a JWKS, a token endpoint and UserInfo over real HTTP (uvicorn in a thread), so the
broker's connector, fetcher and JWKS cache run exactly as against a real upstream. Each test says what
the token endpoint answers (``provider.id_token_claims``, ``provider.header``, ``provider.sign_with``...),
which is how the attacks (a wrong issuer, ``alg: none``, HS256 keyed with the public key...) are made.
Throwaway test keys only.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import uvicorn
from joserfc import jws
from joserfc.jwk import ECKey, RSAKey
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.interop.conftest import free_port


def b64(data: bytes) -> str:
    """Return unpadded base64url."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class StandInProvider:
    """What the stand-in answers; tests change these fields between requests."""

    issuer: str = ""
    client_id: str = "broker-client"
    client_secret: str = "broker-secret-0123456789"
    rsa: RSAKey = field(default_factory=lambda: RSAKey.generate_key(2048, parameters={"kid": "rsa-1", "use": "sig"}))
    ec: ECKey = field(default_factory=lambda: ECKey.generate_key("P-256", parameters={"kid": "ec-1", "use": "sig"}))
    subject: str = "upstream-user-1"
    email: str | None = "alice@corp.example"
    email_verified: bool = True
    extra_claims: dict[str, Any] = field(default_factory=dict)
    userinfo_sub: str | None = None  # None: the ID token's sub
    alg: str = "RS256"
    header_extra: dict[str, Any] = field(default_factory=dict)
    raw_id_token: Callable[[dict[str, Any]], str] | None = None  # build the token by hand (attacks)
    token_error: dict[str, Any] | None = None
    token_delay: float = 0.0  # seconds the token endpoint stalls before answering (an upstream in trouble)
    iss_supported: bool = True
    codes: dict[str, dict[str, Any]] = field(default_factory=dict)
    token_requests: list[dict[str, str]] = field(default_factory=list)
    userinfo_requests: int = 0

    def claims_for(self, nonce: str | None) -> dict[str, Any]:
        """Return the ID token claims the stand-in would issue now."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": self.subject,
            "aud": self.client_id,
            "iat": now,
            "exp": now + 300,
            "nonce": nonce,
            "amr": ["pwd", "mfa"],
        }
        if self.email is not None:
            claims["email"] = self.email
            claims["email_verified"] = self.email_verified
        claims.update(self.extra_claims)
        return {name: value for name, value in claims.items() if value is not None}

    def sign(self, claims: dict[str, Any]) -> str:
        """Sign ``claims`` the normal way (RS256 or ES256 with the published keys)."""
        key = self.ec if self.alg.startswith("ES") else self.rsa
        header = {"alg": self.alg, "kid": key.kid, **self.header_extra}
        return jws.serialize_compact(header, json.dumps(claims).encode(), key, algorithms=[self.alg])

    def hs256_with_public_key(self, claims: dict[str, Any]) -> str:
        """Return a token "signed" with HMAC keyed by the RSA public key (the algorithm-confusion attack)."""
        secret = self.rsa.as_pem(private=False)
        signing_input = (
            f"{b64(json.dumps({'alg': 'HS256', 'kid': self.rsa.kid}).encode())}.{b64(json.dumps(claims).encode())}"
        )
        signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
        return f"{signing_input}.{b64(signature)}"

    @staticmethod
    def unsigned(claims: dict[str, Any]) -> str:
        """Return an ``alg: none`` token."""
        return f"{b64(json.dumps({'alg': 'none'}).encode())}.{b64(json.dumps(claims).encode())}."

    def app(self) -> Starlette:
        """Return the stand-in's ASGI app."""

        async def discovery(_request: Request) -> Response:
            return JSONResponse(
                {
                    "issuer": self.issuer,
                    "authorization_endpoint": f"{self.issuer}/authorize",
                    "token_endpoint": f"{self.issuer}/token",
                    "jwks_uri": f"{self.issuer}/jwks",
                    "userinfo_endpoint": f"{self.issuer}/userinfo",
                    "token_endpoint_auth_methods_supported": ["client_secret_basic"],
                    "authorization_response_iss_parameter_supported": self.iss_supported,
                    "id_token_signing_alg_values_supported": ["RS256", "ES256"],
                }
            )

        async def jwks(_request: Request) -> Response:
            keys = [self.rsa.as_dict(private=False), self.ec.as_dict(private=False)]
            return JSONResponse({"keys": keys})

        async def token(request: Request) -> Response:
            form = dict(parse_qsl((await request.body()).decode()))
            self.token_requests.append({k: str(v) for k, v in form.items()})
            if self.token_delay:
                await asyncio.sleep(self.token_delay)
            if self.token_error is not None:
                return JSONResponse(self.token_error, status_code=400)
            code = self.codes.pop(str(form.get("code")), None)
            if code is None:
                return JSONResponse({"error": "invalid_grant"}, status_code=400)
            claims = self.claims_for(code.get("nonce"))
            id_token = self.raw_id_token(claims) if self.raw_id_token else self.sign(claims)
            return JSONResponse(
                {"access_token": "at-" + str(form.get("code")), "token_type": "Bearer", "id_token": id_token}
            )

        async def userinfo(_request: Request) -> Response:
            self.userinfo_requests += 1
            info: dict[str, Any] = {"sub": self.userinfo_sub or self.subject, "name": "Alice Corp"}
            if self.email is not None:
                info["email"] = self.email
            return JSONResponse(info)

        return Starlette(
            routes=[
                Route("/.well-known/openid-configuration", discovery),
                Route("/jwks", jwks),
                Route("/token", token, methods=["POST"]),
                Route("/userinfo", userinfo),
            ]
        )

    def issue_code(self, nonce: str) -> str:
        """Return a code the token endpoint will redeem once, for a sign-in with ``nonce``."""
        code = f"code-{len(self.codes)}-{time.monotonic_ns()}"
        self.codes[code] = {"nonce": nonce}
        return code


@contextlib.contextmanager
def serve_app(app: Any, what: str) -> Iterator[str]:
    """Serve an ASGI ``app`` on a loopback port in a thread; yield its base URL (``what`` names it in errors)."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_until_complete, args=(server.serve(),), daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=5)


def serve(provider: StandInProvider) -> Iterator[StandInProvider]:
    """Serve ``provider`` on a loopback port for the duration of the generator."""
    with serve_app(provider.app(), "stand-in provider") as url:
        provider.issuer = url  # the app reads it per request
        yield provider
