"""The one validator of the URIs a client registers: redirect, post-logout redirect, back-channel logout.

Every surface that registers clients (the CLI, ``create_client``, any future admin or registration
endpoint) goes through :func:`validate_client_uris`, so the rules live here once:

* Redirect and post-logout redirect URIs use ``https``. Native apps may also use ``http`` on a
  loopback IP literal, ``127.0.0.1`` or ``[::1]`` (RFC 8252 §7.3), and private-use URI schemes named
  after a reverse domain, such as ``com.example.app:/callback`` (RFC 8252 §7.1). ``localhost`` is
  refused: RFC 8252 §8.3 calls it NOT RECOMMENDED, since the name may resolve to something else and a
  literal cannot.
* No wildcards (RFC 9700 §4.1.3 wants exact matching), no userinfo (``user@host`` misleads people
  reading the URI; RFC 3986 §7.6), no fragment, not even an empty ``#`` (RFC 6749 §3.1.2), no
  backslashes, whitespace, control or non-ASCII characters (each is read differently by different
  URL parsers), and none of ``javascript:``, ``data:``, ``file:``, ``blob:``, ``about:``, ``ftp:``.
* The back-channel logout URI is fetched by this server, so it must use ``https`` (OIDC Back-Channel
  Logout 1.0 §2.2 makes ``http`` optional for the OP; idhub does not take it) and must not name a
  loopback, private, link-local or otherwise non-public address (server-side request forgery), unless
  the caller allows it explicitly (``allow_private``: test peers and development).

Matching at ``/authorize`` stays exact (:func:`idhub.clients.service.redirect_uri_matches`); this
module only decides what may be registered.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from urllib.parse import SplitResult, urlsplit

from idhub.errors import Invalid

MAX_URI_LENGTH = 2000  # the width of the database columns
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1"})  # RFC 8252 §7.3: the loopback IP literals
FORBIDDEN_SCHEMES = frozenset({"javascript", "data", "file", "blob", "about", "ftp", "vbscript", "filesystem"})
# RFC 3986 §3.1: scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")
# A DNS name (RFC 1123 labels, an optional final dot); IP literals are checked by ``ipaddress``.
_DNS_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"(?=.{{1,253}}$){_DNS_LABEL}(?:\.{_DNS_LABEL})*\.?")
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?")
# Names that only mean something inside one machine or network (RFC 6761 §6.3, RFC 6762, RFC 8375).
_INTERNAL_SUFFIXES = (".localhost", ".local", ".internal", ".home.arpa", ".localdomain")


def _show(uri: str) -> str:
    """Quote ``uri`` for a one-line message: control characters escaped, long ones cut."""
    shown = ascii(uri[:120])
    return shown if len(uri) <= 120 else shown[:-1] + "...'"


def _refuse(label: str, uri: str, reason: str) -> Invalid:
    return Invalid(f"{label} {_show(uri)} {reason}")


def _check_characters(uri: str, label: str) -> None:
    """Refuse what URL parsers disagree about (RFC 3986 §2: a URI is printable ASCII without spaces)."""
    if not uri:
        raise Invalid(f"{label} must not be empty")
    if len(uri) > MAX_URI_LENGTH:
        raise _refuse(label, uri, f"is longer than {MAX_URI_LENGTH} characters")
    for char in uri:
        if char <= " " or char == "\x7f":
            raise _refuse(label, uri, "contains whitespace or a control character")
        if char > "\x7e":
            raise _refuse(label, uri, "contains non-ASCII characters (percent-encode them, RFC 3986 §2.1)")
    if "\\" in uri:
        raise _refuse(label, uri, "contains a backslash")
    if "#" in uri:
        raise _refuse(label, uri, "must not contain a fragment, not even an empty '#' (RFC 6749 §3.1.2)")
    if "*" in uri:
        raise _refuse(label, uri, "must not contain wildcards; register each URI exactly (RFC 9700 §4.1.3)")


def _split(uri: str, label: str) -> tuple[SplitResult, str]:
    """Split an absolute URI; return its parts and its lower-case scheme."""
    scheme, sep, _rest = uri.partition(":")
    if not sep or not _SCHEME.fullmatch(scheme):
        raise _refuse(label, uri, "must be an absolute URI with a scheme (RFC 6749 §3.1.2)")
    scheme = scheme.lower()
    if scheme in FORBIDDEN_SCHEMES:
        raise _refuse(label, uri, f"uses the scheme {scheme!r}, which is never allowed")
    try:
        parts = urlsplit(uri)
        _port = parts.port  # reading it validates the port
    except ValueError as exc:
        raise _refuse(label, uri, "is not a valid URI") from exc
    if "@" in parts.netloc:
        raise _refuse(label, uri, "must not contain userinfo (user@host)")
    return parts, scheme


def _host_of(parts: SplitResult, uri: str, label: str) -> str:
    """Return the lower-case host of an http(s) URI (IPv6 without brackets); refuse a missing or odd one."""
    host = parts.hostname
    if not host:
        raise _refuse(label, uri, "has no host")
    if parts.netloc.startswith("[") or ":" in host:
        try:
            address = ipaddress.ip_address(host)
        except ValueError as exc:
            raise _refuse(label, uri, "has an invalid IP literal") from exc
        if address.version != 6 or "%" in host:
            raise _refuse(label, uri, "has an invalid IP literal")
        return host
    if not _HOSTNAME.fullmatch(host):
        raise _refuse(label, uri, "has an invalid host name")
    if _ip(host) is None and _looks_numeric(host):
        raise _refuse(label, uri, "has a numeric host that is not a valid IP address")
    return host


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _looks_numeric(host: str) -> bool:
    """Tell whether a host that is not a dotted quad would still be read as an IPv4 address.

    WHATWG URL parsing (browsers, and many HTTP clients) reads ``2130706433``, ``0x7f.1`` or ``127.1``
    as IPv4 addresses: a host whose last label is a number is one.
    """
    last = host.rstrip(".").rsplit(".", 1)[-1]
    return last.isdigit() or bool(re.fullmatch(r"0[xX][0-9A-Fa-f]*", last))


def is_native_redirect(uri: str) -> bool:
    """Tell whether ``uri`` is a native-app redirect: http on a loopback literal, or a private-use scheme."""
    scheme = uri.partition(":")[0].lower()
    if scheme == "http":
        try:
            return urlsplit(uri).hostname in LOOPBACK_HOSTS
        except ValueError:
            return False
    return "." in scheme


def check_redirect_uri(uri: str, *, native: bool, label: str = "redirect URI") -> None:
    """Refuse a redirect or post-logout redirect URI that breaks the rules in the module docstring.

    ``native`` says whether the client is a native app, which may also use loopback ``http`` (RFC 8252
    §7.3) and private-use schemes (RFC 8252 §7.1); web apps use ``https`` only.
    """
    _check_characters(uri, label)
    parts, scheme = _split(uri, label)
    if scheme == "https":
        _host_of(parts, uri, label)
        return
    if scheme == "http":
        host = _host_of(parts, uri, label)
        if host in LOOPBACK_HOSTS:
            if not native:
                raise _refuse(label, uri, "uses loopback http, which only native apps may do (RFC 8252 §7.3)")
            return
        if host == "localhost" or host.endswith(".localhost"):
            raise _refuse(label, uri, "uses localhost; use http://127.0.0.1 or http://[::1] (RFC 8252 §8.3)")
        raise _refuse(label, uri, "must use https (http only on 127.0.0.1 or [::1] for native apps, RFC 8252 §7.3)")
    if "." in scheme:
        # RFC 8252 §7.1: a private-use scheme is a reverse domain name the app's publisher controls.
        if not all(_LABEL.fullmatch(part) for part in scheme.split(".")):
            raise _refuse(label, uri, "has a private-use scheme that is not a reverse domain name (RFC 8252 §7.1)")
        if not native:
            raise _refuse(label, uri, "uses a private-use scheme, which only native apps may do (RFC 8252 §7.1)")
        if not parts.path and not parts.netloc:
            raise _refuse(label, uri, "has no path after the scheme (RFC 8252 §7.1: e.g. com.example.app:/callback)")
        return
    raise _refuse(
        label, uri, "must use https, http on 127.0.0.1 or [::1], or a reverse-domain private-use scheme (RFC 8252 §7)"
    )


def is_public_host(host: str) -> bool:
    """Tell whether ``host`` may name a public server: no loopback, private, link-local or internal name."""
    address = _ip(host)
    if address is not None:
        if isinstance(address, ipaddress.IPv6Address):
            mapped = address.ipv4_mapped or address.sixtofour
            if mapped is not None:
                return is_public_host(str(mapped))
        return address.is_global and not address.is_multicast
    name = host.rstrip(".").lower()
    if "." not in name or _looks_numeric(name):
        return False  # single-label names resolve through local search domains; numbers are addresses
    return name != "localhost" and not name.endswith(_INTERNAL_SUFFIXES)


def check_backchannel_logout_uri(uri: str, *, allow_private: bool = False) -> None:
    """Refuse a back-channel logout URI this server should not POST to (OIDC Back-Channel Logout 1.0 §2.2).

    ``https`` only, on a public host. ``allow_private`` (an operator's explicit choice, for test peers
    and development) also takes loopback, private and internal hosts, over ``http`` too.
    """
    check_fetched_uri(uri, label="back-channel logout URI", allow_private=allow_private)


def check_jwks_uri(uri: str, *, allow_private: bool = False) -> None:
    """Refuse a client ``jwks_uri`` this server should not fetch (RFC 7591 §2; the same rule as back-channel logout).

    ``https`` on a public host (OIDC Registration §2: the keys' integrity rests on TLS); ``allow_private``
    as for :func:`check_backchannel_logout_uri`.
    """
    check_fetched_uri(uri, label="jwks_uri", allow_private=allow_private)


def check_fetched_uri(uri: str, *, label: str, allow_private: bool = False) -> None:
    """Refuse a URI this server would send requests to: ``https`` on a public host, unless allowed private."""
    _check_characters(uri, label)
    parts, scheme = _split(uri, label)
    if scheme not in ("https", "http"):
        raise _refuse(label, uri, "must use https")
    host = _host_of(parts, uri, label)
    address = _ip(host)
    if address is not None and (address.is_multicast or address.is_unspecified):
        raise _refuse(label, uri, "names a multicast or unspecified address")
    if is_public_host(host):
        if scheme != "https":
            raise _refuse(label, uri, "must use https")
        return
    if not allow_private:
        raise _refuse(label, uri, "names a loopback, private or internal host, which is not allowed here")


def validate_client_uris(
    *,
    redirect_uris: Iterable[str],
    post_logout_redirect_uris: Iterable[str] = (),
    backchannel_logout_uri: str | None = None,
    application_type: str | None = None,
    allow_private_backchannel: bool = False,
) -> str:
    """Check every URI a client registers; return its application type (``web`` or ``native``).

    Without an explicit type, a client that registers a native-app redirect (loopback ``http`` or a
    private-use scheme) is a native app (OIDC Dynamic Client Registration 1.0 §2 ``application_type``).
    """
    redirects, post_logout = list(redirect_uris), list(post_logout_redirect_uris)
    if application_type is None:
        application_type = "native" if any(is_native_redirect(u) for u in [*redirects, *post_logout]) else "web"
    if application_type not in ("web", "native"):
        raise Invalid("application_type must be web or native")
    native = application_type == "native"
    for uri in redirects:
        check_redirect_uri(uri, native=native)
    for uri in post_logout:
        check_redirect_uri(uri, native=native, label="post-logout redirect URI")
    if backchannel_logout_uri is not None:
        check_backchannel_logout_uri(backchannel_logout_uri, allow_private=allow_private_backchannel)
    return application_type
