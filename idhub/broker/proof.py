"""Proof of ownership: link an upstream account to an existing one only after signing in with that one.

When an upstream identity may not be linked automatically (its email is an existing account's but the
upstream may not vouch for it, or just-in-time accounts are off), the person is asked to sign in with
the existing account (#14, linking rule 4; Keycloak's "first broker login" re-authentication). What the
upstream asserted travels to that page and back in a sealed, browser-bound, short-lived, single-use
token, so nothing is stored for a proof that is never given, and a token cannot be replayed, carried
to another browser or altered.
"""

from __future__ import annotations

import base64
import hmac
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

import orjson

from idhub.broker.connector import Identity
from idhub.broker.errors import UpstreamRefused
from idhub.crypto.encryption import DecryptionError, Sealer
from idhub.crypto.secrets import random_token
from idhub.storage.single_use import claim
from idhub.storage.uow import UnitOfWork

PROOF_TTL = 600  # seconds to sign in with the existing account
MAX_PROOF = 8192
_CONTEXT = "broker-proof"


@dataclass(frozen=True, slots=True)
class PendingProof:
    """An upstream identity waiting for its owner to prove they hold an existing account."""

    id: str
    tenant_id: str
    provider_id: str
    interaction_id: str
    browser: str  # keyed hash of the browser-binding cookie's secret (see broker.state.browser_binding)
    expires_at: int
    reason: str  # why proof is needed: email_in_use | no_account
    issuer: str
    subject: str
    email: str | None
    name: str | None
    amr: list[str]
    acr: str | None

    def identity(self) -> Identity:
        """Return the upstream identity (what linking needs of it)."""
        return Identity(
            issuer=self.issuer,
            subject=self.subject,
            email=self.email,
            name=self.name,
            amr=tuple(self.amr),
            acr=self.acr,
        )


def new_proof(
    *,
    tenant_id: uuid.UUID,
    provider_id: uuid.UUID,
    interaction_id: str,
    browser: str,
    identity: Identity,
    reason: str,
    now: float,
) -> PendingProof:
    """Return a proof request for ``identity`` with a fresh single-use id."""
    return PendingProof(
        id=random_token(18),
        tenant_id=str(tenant_id),
        provider_id=str(provider_id),
        interaction_id=interaction_id,
        browser=browser,
        expires_at=int(now) + PROOF_TTL,
        reason=reason,
        issuer=identity.issuer[:1000],
        subject=identity.subject[:1000],
        email=identity.email[:320] if identity.email else None,
        name=identity.name[:200] if identity.name else None,
        amr=[value[:64] for value in identity.amr[:10]],
        acr=identity.acr[:255] if identity.acr else None,
    )


def seal_proof(sealer: Sealer, proof: PendingProof) -> str:
    """Return ``proof`` as an opaque URL-safe token."""
    sealed = sealer.seal(orjson.dumps(asdict(proof)), context=_CONTEXT)
    return base64.urlsafe_b64encode(sealed).rstrip(b"=").decode("ascii")


def open_proof(sealer: Sealer, value: str | None, *, browser: str | None, now: float) -> PendingProof:
    """Open a proof token for this browser before it expired; else refuse."""
    if not value or len(value) > MAX_PROOF:
        raise UpstreamRefused("bad_proof", "proof token missing or too long")
    try:
        sealed = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        proof = PendingProof(**orjson.loads(sealer.open(sealed, context=_CONTEXT)))
    except (ValueError, TypeError, DecryptionError) as exc:
        raise UpstreamRefused("bad_proof", "proof token does not open") from exc
    if browser is None or not hmac.compare_digest(proof.browser.encode(), browser.encode()):
        raise UpstreamRefused("cross_browser_proof", "proof token came back in another browser")
    if proof.expires_at <= now:
        raise UpstreamRefused("expired_proof", "the sign-in with the existing account took too long")
    return proof


async def consume_proof(uow: UnitOfWork, proof: PendingProof) -> None:
    """Use ``proof`` up: one link per proof, however many times the form is posted."""
    won = await claim(
        uow.session,
        tenant_id=uuid.UUID(proof.tenant_id),
        namespace="broker_proof",
        value=proof.id,
        expires_at=datetime.fromtimestamp(proof.expires_at, UTC),
    )
    if not won:
        raise UpstreamRefused("proof_replayed", "this proof was already used")
