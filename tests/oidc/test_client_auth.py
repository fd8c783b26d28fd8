"""Client authentication at the token endpoint (RFC 6749 §2.3, RFC 7523, OIDC Core §9)."""

from __future__ import annotations

import base64
import time
import uuid
from typing import Any

import httpx
from joserfc import jwt as jose_jwt
from joserfc.jwk import ECKey, OctKey

from tests.conftest import PUBLIC_URL, Env
from tests.oidc.grants.helpers import FORM, basic, post, url

CC = {"grant_type": "client_credentials"}


def _pkjwt_client(env: Env) -> tuple[Any, str, ECKey]:
    tenant = env.tenant()
    key = ECKey.generate_key("P-256", private=True)
    public = key.as_dict(private=False)
    public.update(kid="k1", alg="ES256", use="sig")
    client_id, _ = env.oauth_client(
        tenant, token_endpoint_auth_method="private_key_jwt", jwks={"keys": [public]}, scope="api"
    )
    return tenant, client_id, key


def _assertion(tenant: Any, client_id: str, key: Any, *, alg: str = "ES256", **overrides: Any) -> str:
    now = int(time.time())
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": f"{tenant.issuer}/token",
        "exp": now + 60,
        "iat": now,
        "jti": uuid.uuid4().hex,
    }
    claims.update(overrides)
    return jose_jwt.encode({"alg": alg, "kid": "k1"}, claims, key)


def _assert_invalid_client(response: Any) -> None:
    assert response.status_code == 401, response.text
    assert response.json()["error"] == "invalid_client"
    assert response.headers["www-authenticate"].startswith("Basic")


def test_client_auth_basic_percent_encoded_secret_accepted(env: Env) -> None:
    tenant = env.tenant()
    client_id, secret = env.oauth_client(tenant, scope="api", client_id="app:1 +x")
    assert secret is not None
    # RFC 6749 §2.3.1: client_id and secret are form-urlencoded before Basic encoding.
    response = post(env, tenant, "token", CC, basic(client_id, secret))
    assert response.status_code == 200, response.text
    # A '+' in the raw (unencoded) header part decodes to a space, so the unencoded id fails.
    raw = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    _assert_invalid_client(post(env, tenant, "token", CC, {"authorization": f"Basic {raw}"}))


def test_client_auth_wrong_secret_invalid_client(env: Env) -> None:
    tenant = env.tenant()
    client_id, _ = env.oauth_client(tenant, scope="api")
    _assert_invalid_client(post(env, tenant, "token", CC, basic(client_id, "wrong")))
    _assert_invalid_client(post(env, tenant, "token", CC, basic("nobody", "wrong")))
    _assert_invalid_client(post(env, tenant, "token", CC, {"authorization": "Basic !!!"}))
    _assert_invalid_client(post(env, tenant, "token", CC))


def test_client_auth_post_method_must_be_registered(env: Env) -> None:
    tenant = env.tenant()
    client_id, secret = env.oauth_client(tenant, scope="api", token_endpoint_auth_method="client_secret_post")
    response = post(env, tenant, "token", {**CC, "client_id": client_id, "client_secret": secret})
    assert response.status_code == 200, response.text
    # The registered method is the only one accepted (OIDC Core §9).
    _assert_invalid_client(post(env, tenant, "token", CC, basic(client_id, secret or "")))


def test_client_auth_two_methods_invalid_request(env: Env) -> None:
    tenant = env.tenant()
    client_id, secret = env.oauth_client(tenant, scope="api")
    data = {**CC, "client_id": client_id, "client_secret": secret}
    response = post(env, tenant, "token", data, basic(client_id, secret or ""))
    assert response.status_code == 400 and response.json()["error"] == "invalid_request"


def test_client_auth_private_key_jwt_accepted_once(env: Env) -> None:
    tenant, client_id, key = _pkjwt_client(env)
    assertion = _assertion(tenant, client_id, key)
    data = {
        **CC,
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": assertion,
    }
    response = post(env, tenant, "token", data)
    assert response.status_code == 200, response.text
    # RFC 7523 §3: the same jti is a replay.
    _assert_invalid_client(post(env, tenant, "token", data))
    # The issuer is an accepted audience too.
    data["client_assertion"] = _assertion(tenant, client_id, key, aud=tenant.issuer)
    assert post(env, tenant, "token", data).status_code == 200


def test_client_auth_private_key_jwt_bad_assertions_refused(env: Env) -> None:
    tenant, client_id, key = _pkjwt_client(env)
    other = ECKey.generate_key("P-256", private=True)
    now = int(time.time())
    bad = [
        _assertion(tenant, client_id, other),  # signed by an unregistered key
        _assertion(tenant, client_id, key, aud="https://elsewhere.example/token"),
        _assertion(tenant, client_id, key, exp=now - 120),
        _assertion(tenant, client_id, key, exp=now + 3600),  # beyond client_assertion_max_age
        _assertion(tenant, client_id, key, iss="someone-else"),
        _assertion(tenant, client_id, key, jti=None),
        _assertion(tenant, client_id, OctKey.import_key(b"k" * 32), alg="HS256"),
    ]
    header = base64.urlsafe_b64encode(b'{"alg":"none"}').rstrip(b"=").decode()
    payload = _assertion(tenant, client_id, key).split(".")[1]
    bad.append(f"{header}.{payload}.")
    for assertion in bad:
        data = {
            **CC,
            "client_id": client_id,
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": assertion,
        }
        _assert_invalid_client(post(env, tenant, "token", data))


def test_client_auth_none_public_client_cannot_use_client_credentials(env: Env) -> None:
    tenant = env.tenant()
    client_id, _ = env.oauth_client(tenant, redirect_uris=["https://rp.example/cb"], public=True)
    response = post(env, tenant, "token", {**CC, "client_id": client_id})
    assert response.status_code == 400 and response.json()["error"] == "unauthorized_client"
    # A confidential client cannot pretend to be public.
    conf_id, _ = env.oauth_client(tenant, scope="api")
    _assert_invalid_client(post(env, tenant, "token", {**CC, "client_id": conf_id}))


async def _post_from(env: Env, address: str, tenant: Any, endpoint: str, data: Any, headers: Any = None) -> Any:
    """POST a form as if from ``address`` (the ASGI client tuple), on the app's own event loop."""
    transport = httpx.ASGITransport(app=env.client.app, client=(address, 40000))
    async with httpx.AsyncClient(transport=transport, base_url=PUBLIC_URL) as http:
        return await http.post(url(tenant, endpoint), data=data, headers=headers or {})


def test_client_auth_failures_elsewhere_right_secret_accepted(env: Env) -> None:
    # RFC 6749 §2.3: failures by others must not lock a known (public) client_id out of /token.
    tenant = env.tenant()
    client_id, secret = env.oauth_client(tenant, scope="api")
    limit = env.ctx.settings.throttle.max_failures_per_account
    for i in range(limit + 3):
        response = env.run(_post_from, env, f"198.51.100.{i}", tenant, "token", CC, basic(client_id, "wrong"))
        _assert_invalid_client(response)
    for address in ("203.0.113.7", "198.51.100.1"):
        response = env.run(_post_from, env, address, tenant, "token", CC, basic(client_id, secret or ""))
        assert response.status_code == 200, response.text
    assert post(env, tenant, "introspect", {"token": "x"}, basic(client_id, secret or "")).status_code == 200
    assert post(env, tenant, "revoke", {"token": "x"}, basic(client_id, secret or "")).status_code == 200


def test_client_auth_address_over_limit_refused_other_address_accepted(env: Env) -> None:
    tenant = env.tenant()
    client_id, secret = env.oauth_client(tenant, scope="api")
    with env.swapped_throttle(max_failures_per_address=3):
        for _ in range(3):
            _assert_invalid_client(env.run(_post_from, env, "192.0.2.66", tenant, "token", CC, basic("nobody", "x")))
        # That address is blocked, whatever it sends (RFC 6749 §5.2: still invalid_client, 401)...
        right = basic(client_id, secret or "")
        _assert_invalid_client(env.run(_post_from, env, "192.0.2.66", tenant, "token", CC, right))
        # ...but the client itself is not.
        assert env.run(_post_from, env, "192.0.2.67", tenant, "token", CC, right).status_code == 200


def test_client_auth_public_client_never_counted_or_blocked(env: Env) -> None:
    tenant = env.tenant()
    client_id, _ = env.oauth_client(tenant, redirect_uris=["https://rp.example/cb"], public=True)
    with env.swapped_throttle(max_failures_per_address=2, max_failures_per_account=1) as throttle:
        for _ in range(3):  # a public client has no secret: sending one is a failure of that address only
            _assert_invalid_client(
                env.run(_post_from, env, "192.0.2.80", tenant, "revoke", {"token": "x"}, basic(client_id, "x"))
            )
        key = f"client:{tenant.key}:{client_id}"
        assert env.run(throttle.counter.count, key, 900) == 0
        # Identifying itself (method none) is never refused, not even from the blocked address.
        form = {"token": "x", "client_id": client_id}
        assert env.run(_post_from, env, "192.0.2.80", tenant, "revoke", form).status_code == 200


def test_client_auth_client_failures_slowed_bounded_right_secret_accepted(env: Env) -> None:
    tenant = env.tenant()
    client_id, secret = env.oauth_client(tenant, scope="api")
    with env.swapped_throttle(max_failures_per_account=1, client_failure_max_delay=0.3):
        durations = []
        for i in range(6):
            started = time.monotonic()
            response = env.run(_post_from, env, f"198.51.100.{i}", tenant, "token", CC, basic(client_id, "wrong"))
            durations.append(time.monotonic() - started)
            _assert_invalid_client(response)
        assert durations[-1] >= 0.3  # slowed down, up to the bound
        assert max(durations) < 0.3 + 5
        # The right secret is neither refused nor held back by the client's failures.
        response = env.run(_post_from, env, "203.0.113.9", tenant, "token", CC, basic(client_id, secret or ""))
        assert response.status_code == 200, response.text


def test_client_auth_non_form_body_invalid_request(env: Env) -> None:
    tenant = env.tenant()
    client_id, secret = env.oauth_client(tenant, scope="api")
    response = env.client.post(
        url(tenant, "token"), json={"grant_type": "client_credentials"}, headers=basic(client_id, secret or "")
    )
    assert response.status_code == 400 and response.json()["error"] == "invalid_request"
    assert FORM["content-type"] == "application/x-www-form-urlencoded"


def test_client_auth_nul_in_basic_client_id_invalid_client(env: Env) -> None:
    import base64

    tenant = env.tenant()
    raw = base64.b64encode(b"a\x00b:secret").decode()
    response = post(env, tenant, "token", {"grant_type": "client_credentials"}, {"authorization": "Basic " + raw})
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"


# --- private_key_jwt with keys by reference (jwks_uri, RFC 7591 §2) ------------------------------------
class _JwksServer:
    """A client's key server on loopback: serves whatever JWK Set it is given."""

    def __init__(self) -> None:
        import http.server
        import json
        import threading

        owner = self
        self.document: dict[str, Any] = {"keys": []}
        self.hits = 0

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.hits += 1
                body = json.dumps(owner.document).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/jwks"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _public(key: ECKey, kid: str) -> dict[str, Any]:
    public = key.as_dict(private=False)
    public.update(kid=kid, alg="ES256", use="sig")
    return public


def _assertion_with(tenant: Any, client_id: str, key: Any, kid: str) -> dict[str, str]:
    now = int(time.time())
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": f"{tenant.issuer}/token",
        "exp": now + 60,
        "jti": uuid.uuid4().hex,
    }
    assertion = jose_jwt.encode({"alg": "ES256", "kid": kid}, claims, key)
    return {
        **CC,
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": assertion,
    }


def test_client_auth_private_key_jwt_keys_fetched_from_jwks_uri_and_rotated(env: Env) -> None:
    keys = _JwksServer()
    try:
        tenant = env.tenant()
        first = ECKey.generate_key("P-256", private=True)
        keys.document = {"keys": [_public(first, "k1")]}
        client_id, _ = env.oauth_client(
            tenant,
            token_endpoint_auth_method="private_key_jwt",
            jwks_uri=keys.url,
            allow_private_jwks_uri=True,
            scope="api",
        )
        answer = post(env, tenant, "token", _assertion_with(tenant, client_id, first, "k1"))
        assert answer.status_code == 200, answer.text
        assert post(env, tenant, "token", _assertion_with(tenant, client_id, first, "k1")).status_code == 200
        assert keys.hits == 1  # cached
        # The client rotates: a new kid makes the server fetch the set again (at most once per interval).
        second = ECKey.generate_key("P-256", private=True)
        keys.document = {"keys": [_public(second, "k2")]}
        jwks = env.ctx.broker.jwks
        interval, jwks.refetch_interval = jwks.refetch_interval, 0.0
        try:
            assert post(env, tenant, "token", _assertion_with(tenant, client_id, second, "k2")).status_code == 200
            # A key the set does not hold, and a key id it holds with another key's signature, fail.
            _assert_invalid_client(post(env, tenant, "token", _assertion_with(tenant, client_id, first, "k1")))
            _assert_invalid_client(post(env, tenant, "token", _assertion_with(tenant, client_id, first, "k2")))
        finally:
            jwks.refetch_interval = interval
    finally:
        keys.close()


def test_client_auth_jwks_uri_unreachable_is_503_with_retry_after(env: Env) -> None:
    keys = _JwksServer()
    keys.close()  # nothing listens there any more
    tenant = env.tenant()
    client_id, _ = env.oauth_client(
        tenant,
        token_endpoint_auth_method="private_key_jwt",
        jwks_uri=keys.url,
        allow_private_jwks_uri=True,
        scope="api",
    )
    key = ECKey.generate_key("P-256", private=True)
    answer = post(env, tenant, "token", _assertion_with(tenant, client_id, key, "k1"))
    assert answer.status_code == 503, answer.text
    assert answer.json()["error"] == "temporarily_unavailable" and int(answer.headers["retry-after"]) > 0


def test_client_registration_jwks_uri_rules(env: Env) -> None:
    import pytest

    from idhub.errors import Invalid

    tenant = env.tenant()
    key = {"keys": [_public(ECKey.generate_key("P-256", private=True), "k1")]}
    bad: list[dict[str, Any]] = [
        {"jwks_uri": "http://keys.example.com/jwks"},  # not https
        {"jwks_uri": "https://127.0.0.1/jwks"},  # loopback without the operator's allowance
        {"jwks_uri": "https://10.0.0.5/jwks"},
        {"jwks_uri": "https://keys.example.com/jwks", "jwks": key},  # both (RFC 7591 §2)
        {"jwks": {"keys": []}},
        {},  # private_key_jwt with no keys at all
    ]
    for extra in bad:
        with pytest.raises(Invalid):
            env.oauth_client(tenant, token_endpoint_auth_method="private_key_jwt", scope="api", **extra)
    client_id, _ = env.oauth_client(
        tenant, token_endpoint_auth_method="private_key_jwt", scope="api", jwks_uri="https://keys.example.com/jwks"
    )
    assert client_id
