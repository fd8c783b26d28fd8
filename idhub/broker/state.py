"""The broker's ``state``: sealed, bound to one browser and one interaction, and usable once.

What the callback must find again (the interaction, the upstream, the ``nonce``, the PKCE verifier,
the SAML request ID) travels inside ``state`` itself, encrypted and authenticated with a key derived
from the master key, so nothing is stored for a sign-in that is never finished and the verifier is
never readable by the upstream or anyone watching the redirect. The callback opens it, checks that the
same browser came back (the hash of its browser-binding cookie), and claims its random id in the
single-use table (:func:`idhub.storage.single_use.claim`): a replayed or cross-browser ``state`` fails
(RFC 6749 §10.12, RFC 9700 §4.7).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

import orjson

from idhub.broker.connector import LoginSecrets
from idhub.broker.errors import UpstreamRefused
from idhub.crypto.encryption import DecryptionError, Sealer
from idhub.crypto.secrets import random_token
from idhub.storage.single_use import claim
from idhub.storage.uow import UnitOfWork

STATE_TTL = 600  # seconds a person has at the upstream before the sign-in must start over
MAX_STATE = 4096
_CONTEXT = "broker-state"


@dataclass(frozen=True, slots=True)
class PendingLogin:
    """One sign-in waiting for its upstream's answer."""

    id: str
    tenant_id: str
    provider_id: str
    interaction_id: str
    browser: str  # keyed hash of the browser-binding cookie's secret
    expires_at: int
    nonce: str
    code_verifier: str
    request_id: str

    @property
    def secrets(self) -> LoginSecrets:
        """Return the values the upstream's answer is bound to."""
        return LoginSecrets(nonce=self.nonce, code_verifier=self.code_verifier, request_id=self.request_id)


def browser_binding(cookie_key: bytes, browser_secret: str) -> str:
    """Return the keyed hash that binds a ``state`` to the browser holding ``browser_secret``."""
    return hmac.new(cookie_key, b"broker-state:" + browser_secret.encode(), hashlib.sha256).hexdigest()


def new_pending(
    *,
    tenant_id: uuid.UUID,
    provider_id: uuid.UUID,
    interaction_id: str,
    browser: str,
    now: float,
) -> PendingLogin:
    """Return a new pending sign-in with a fresh single-use id."""
    return PendingLogin(
        id=random_token(18),
        tenant_id=str(tenant_id),
        provider_id=str(provider_id),
        interaction_id=interaction_id,
        browser=browser,
        expires_at=int(now) + STATE_TTL,
        nonce=random_token(24),
        code_verifier=random_token(48),  # 64 characters, within RFC 7636 §4.1's 43..128
        request_id="_" + secrets.token_hex(20),  # an xs:ID must not start with a digit (SAML Core §1.3.4)
    )


def seal_state(sealer: Sealer, pending: PendingLogin) -> str:
    """Return ``pending`` as an opaque URL-safe ``state`` value."""
    sealed = sealer.seal(orjson.dumps(asdict(pending)), context=_CONTEXT)
    return base64.urlsafe_b64encode(sealed).rstrip(b"=").decode("ascii")


def open_state(sealer: Sealer, value: str | None, *, browser: str | None, now: float) -> PendingLogin:
    """Open a ``state`` that came back, for this browser, before it expired; else refuse."""
    if not value or len(value) > MAX_STATE:
        raise UpstreamRefused("bad_state", "state missing or too long")
    try:
        sealed = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        fields = orjson.loads(sealer.open(sealed, context=_CONTEXT))
        pending = PendingLogin(**fields)
    except (ValueError, TypeError, DecryptionError) as exc:
        raise UpstreamRefused("bad_state", "state does not open") from exc
    if browser is None or not hmac.compare_digest(str(pending.browser).encode(), browser.encode()):
        raise UpstreamRefused("cross_browser_state", "state came back in another browser")
    if pending.expires_at <= now:
        raise UpstreamRefused("expired_state", "the sign-in at the upstream took too long")
    return pending


async def consume_state(uow: UnitOfWork, pending: PendingLogin) -> None:
    """Use ``pending`` up: of two callbacks carrying the same ``state``, exactly one gets past this."""
    won = await claim(
        uow.session,
        tenant_id=uuid.UUID(pending.tenant_id),
        namespace="broker_state",
        value=pending.id,
        expires_at=datetime.fromtimestamp(pending.expires_at, UTC),
    )
    if not won:
        raise UpstreamRefused("state_replayed", "this state was already used")
