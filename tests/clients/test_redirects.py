"""The one validator of registered URIs: a corpus of good and bad redirect, post-logout and back-channel URIs."""

from __future__ import annotations

import pytest

from idhub.clients.redirects import (
    check_backchannel_logout_uri,
    check_redirect_uri,
    is_native_redirect,
    validate_client_uris,
)
from idhub.errors import Invalid

GOOD_WEB = [
    "https://app.example/cb",
    "https://app.example:8443/cb",
    "https://app.example/cb?tenant=a&x=1",
    "https://APP.example/Callback",
    "https://app.example",
    "https://app.example./cb",
    "https://xn--bcher-kva.example/cb",
    "https://192.0.2.10/cb",
    "https://[2001:db8::1]/cb",
    "https://app.example/cb%20x",
]
GOOD_NATIVE_ONLY = [
    "http://127.0.0.1/cb",  # RFC 8252 §7.3
    "http://127.0.0.1:53211/oauth2redirect",
    "http://[::1]:8080/cb",
    "com.example.app:/callback",  # RFC 8252 §7.1
    "com.example.app:/oauth2redirect/example-provider",
    "com.example-corp.app2://callback",
]
BAD_ALWAYS = [
    "",
    "/relative/cb",
    "app.example/cb",
    "http://app.example/cb",  # https only
    "http://localhost/cb",  # RFC 8252 §8.3: NOT RECOMMENDED, refused
    "http://localhost:8080/cb",
    "http://app.localhost/cb",
    "http://127.0.0.2/cb",  # only the literals 127.0.0.1 and [::1]
    "http://127.1/cb",
    "http://2130706433/cb",
    "http://0x7f.0.0.1/cb",
    "https://2130706433/cb",
    "https://010.0.0.1/cb",
    "https://*.example.com/cb",  # wildcards
    "https://app.example/*",
    "https://app.example/cb*",
    "https://user@app.example/cb",  # userinfo
    "https://user:pass@app.example/cb",
    "https://@app.example/cb",
    "https://app.example/cb#",  # fragments, even empty
    "https://app.example/cb#frag",
    "https://app.example\\@evil.example/cb",  # backslash
    "https:\\\\app.example\\cb",
    "https://app.example/c b",  # whitespace and control characters
    " https://app.example/cb",
    "https://app.example/cb ",
    "https://app.example/cb\n",
    "https://app.example/\tcb",
    "https://app.example/cb\x00",
    "https://app.example/cb\x7f",
    "https://app.example/cb\u00a0",
    "https://app.example/cb\u2028",
    "https://äpp.example/cb",  # non-ASCII: percent-encode or punycode
    "javascript:alert(1)",
    "JavaScript:alert(1)",
    "data:text/html,<script>alert(1)</script>",
    "file:///etc/passwd",
    "blob:https://app.example/1234",
    "about:blank",
    "ftp://app.example/cb",
    "vbscript:msgbox(1)",
    "myapp:/cb",  # a private-use scheme must be a reverse domain name
    "myapp://cb",
    "com..example:/cb",
    "com.example.:/cb",
    ".com.example:/cb",
    "com.example.app:",  # nothing after the scheme
    "https:///cb",  # no host
    "https://app.example:99999/cb",  # bad port
    "https://app.example:port/cb",
    "https://[::1/cb",
    "https://app_example.com/cb",
    "https://-app.example/cb",
    "https://app.example/" + "a" * 2000,
]


@pytest.mark.parametrize("uri", GOOD_WEB)
def test_check_redirect_uri_https_accepted_for_every_client(uri: str) -> None:
    check_redirect_uri(uri, native=False)
    check_redirect_uri(uri, native=True)


@pytest.mark.parametrize("uri", GOOD_NATIVE_ONLY)
def test_check_redirect_uri_loopback_and_private_use_native_only(uri: str) -> None:
    check_redirect_uri(uri, native=True)
    assert is_native_redirect(uri)
    with pytest.raises(Invalid, match="only native apps"):
        check_redirect_uri(uri, native=False)


@pytest.mark.parametrize("uri", BAD_ALWAYS)
def test_check_redirect_uri_bad_refused_one_line(uri: str) -> None:
    for native in (False, True):
        with pytest.raises(Invalid) as caught:
            check_redirect_uri(uri, native=native)
        message = caught.value.detail
        assert message and "\n" not in message and "\r" not in message and len(message) < 400


def test_check_redirect_uri_messages_name_the_rule() -> None:
    cases = {
        "http://app.example/cb": "must use https",
        "http://localhost/cb": "RFC 8252 §8.3",
        "https://*.example/cb": "wildcards",
        "https://u@app.example/cb": "userinfo",
        "https://app.example/cb#": "fragment",
        "https://app.example\\cb": "backslash",
        "https://app.example/c b": "whitespace",
        "blob:https://app.example/x": "'blob'",
        "about:blank": "'about'",
        "ftp://app.example/": "'ftp'",
    }
    for uri, words in cases.items():
        with pytest.raises(Invalid, match=words):
            check_redirect_uri(uri, native=True)


def test_check_redirect_uri_label_names_post_logout() -> None:
    with pytest.raises(Invalid, match=r"^post-logout redirect URI"):
        check_redirect_uri("http://app.example/bye", native=False, label="post-logout redirect URI")


GOOD_BACKCHANNEL = [
    "https://rp.example/backchannel-logout",
    "https://rp.example:8443/logout?from=idhub",
    "https://8.8.8.8/logout",
    "https://[2001:4860:4860::8888]/logout",
]
PRIVATE_BACKCHANNEL = [
    "https://127.0.0.1/logout",
    "https://[::1]/logout",
    "https://10.1.2.3/logout",
    "https://172.16.0.1/logout",
    "https://192.168.1.1/logout",
    "https://169.254.169.254/latest/meta-data",  # link-local (cloud metadata)
    "https://[fe80::1]/logout",
    "https://[fc00::1]/logout",
    "https://[::ffff:127.0.0.1]/logout",  # IPv4-mapped loopback
    "https://[::ffff:10.0.0.1]/logout",
    "https://100.64.0.1/logout",  # shared address space
    "https://localhost/logout",
    "https://rp.localhost/logout",
    "https://printer.local/logout",
    "https://metadata.google.internal/logout",
    "https://intranet/logout",  # single-label names resolve through local search domains
    "http://127.0.0.1:8000/logout",
    "http://localhost:8000/logout",
]
BAD_BACKCHANNEL = [
    "http://rp.example/logout",  # https only, even when private hosts are allowed
    "https://rp.example/logout#",
    "https://rp.example/logout#x",
    "https://user@rp.example/logout",
    "https://*.rp.example/logout",
    "https://rp.example/log out",
    "https://rp.example\\logout",
    "com.example.app:/logout",
    "javascript:alert(1)",
    "ftp://rp.example/logout",
    "https://2130706433/logout",
    "https://224.0.0.1/logout",
    "https://0.0.0.0/logout",
]


@pytest.mark.parametrize("uri", GOOD_BACKCHANNEL)
def test_check_backchannel_logout_uri_public_https_accepted(uri: str) -> None:
    check_backchannel_logout_uri(uri)


@pytest.mark.parametrize("uri", PRIVATE_BACKCHANNEL)
def test_check_backchannel_logout_uri_private_refused_unless_allowed(uri: str) -> None:
    with pytest.raises(Invalid, match="back-channel logout URI"):
        check_backchannel_logout_uri(uri)
    check_backchannel_logout_uri(uri, allow_private=True)


@pytest.mark.parametrize("uri", BAD_BACKCHANNEL)
def test_check_backchannel_logout_uri_bad_refused_even_when_private_allowed(uri: str) -> None:
    for allow_private in (False, True):
        with pytest.raises(Invalid):
            check_backchannel_logout_uri(uri, allow_private=allow_private)


def test_validate_client_uris_native_redirect_makes_native_app() -> None:
    assert validate_client_uris(redirect_uris=["https://app.example/cb"]) == "web"
    assert validate_client_uris(redirect_uris=["http://127.0.0.1/cb"]) == "native"
    assert validate_client_uris(redirect_uris=["com.example.app:/cb", "https://app.example/cb"]) == "native"
    assert validate_client_uris(redirect_uris=[], post_logout_redirect_uris=["http://[::1]/bye"]) == "native"


def test_validate_client_uris_explicit_web_refuses_native_redirects() -> None:
    with pytest.raises(Invalid, match="only native apps"):
        validate_client_uris(redirect_uris=["http://127.0.0.1/cb"], application_type="web")
    with pytest.raises(Invalid, match="application_type"):
        validate_client_uris(redirect_uris=["https://app.example/cb"], application_type="spa")


def test_validate_client_uris_checks_post_logout_and_backchannel() -> None:
    with pytest.raises(Invalid, match=r"^post-logout redirect URI"):
        validate_client_uris(
            redirect_uris=["https://app.example/cb"], post_logout_redirect_uris=["https://a.example/#"]
        )
    with pytest.raises(Invalid, match=r"^back-channel logout URI"):
        validate_client_uris(redirect_uris=[], backchannel_logout_uri="https://10.0.0.1/logout")
    validate_client_uris(
        redirect_uris=[], backchannel_logout_uri="http://127.0.0.1:9/logout", allow_private_backchannel=True
    )
