"""What every upstream connector gives the broker: one normalised :class:`Identity`.

Each protocol (OIDC, the social networks' OAuth 2 profiles, SAML 2.0) has one connector; each
implements the small capability protocols below and returns the same frozen ``Identity``, so the
mapping, linking and sign-in steps never know which protocol spoke (Dex's connector interface,
SATOSA's internal data). Adding a protocol touches only its connector.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class Identity:
    """Who the upstream says signed in.

    ``issuer`` and ``subject`` identify the upstream account (the link key; never the email).
    ``email_verified`` is what the upstream asserts about the address, interpreted per provider.
    ``amr`` and ``acr`` are the upstream's own authentication methods and context, when it gives them.
    """

    issuer: str
    subject: str
    email: str | None = None
    email_verified: bool = False
    name: str | None = None
    given_name: str | None = None
    family_name: str | None = None
    username: str | None = None
    groups: tuple[str, ...] = ()
    amr: tuple[str, ...] = ()
    acr: str | None = None
    claims: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class LoginSecrets:
    """Values that bind one sign-in's upstream answer to it; the broker picks them and seals them in ``state``.

    ``nonce`` goes into the OIDC authentication request, ``code_verifier`` stays here and its S256
    challenge goes upstream (RFC 7636), ``request_id`` is the SAML AuthnRequest ID that the response's
    ``InResponseTo`` must name.
    """

    nonce: str
    code_verifier: str
    request_id: str


@dataclass(frozen=True, slots=True)
class LoginStart:
    """Where to send the browser upstream."""

    url: str


@dataclass(frozen=True, slots=True)
class CallbackInput:
    """What came back to the callback or ACS: query or form parameters, and what ``state`` carried."""

    params: Mapping[str, str]
    nonce: str | None = None
    code_verifier: str | None = None
    request_id: str | None = None


class LoginStarter(Protocol):
    """Build the upstream authorization (or SAML AuthnRequest) URL."""

    async def login_url(self, *, state: str, callback_url: str, secrets: LoginSecrets) -> LoginStart:
        """Return where the browser goes upstream for this sign-in, bound to ``state`` and ``secrets``."""
        ...


class CallbackHandler(Protocol):
    """Turn the upstream's answer into an :class:`Identity`, or raise :class:`UpstreamRefused`."""

    async def handle_callback(self, answer: CallbackInput, *, callback_url: str) -> Identity:
        """Validate the upstream's answer and return who signed in."""
        ...


class Connector(LoginStarter, CallbackHandler, Protocol):
    """A connector both starts sign-ins and handles their callbacks."""
