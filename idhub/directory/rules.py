"""The directory's rules, each stated once: usernames, emails, passwords, and who counts as live."""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import ColumnElement, and_, true

from idhub.errors import Invalid
from idhub.storage.models import User

USERNAME_RE = re.compile(r"^[^\s\x00-\x1f\x7f]{1,255}$")
EMAIL_RE = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,255}$")
MIN_PASSWORD, MAX_PASSWORD = 8, 1024


def normalise_username(username: str) -> str:
    """Case-fold a username so lookups are case-insensitive (RFC 7643 §4.1.1 ``userName``)."""
    return username.strip().casefold()


def checked_username(username: str) -> str:
    """Return the stored (case-folded) form of ``username``, or raise :class:`Invalid`."""
    normalised = normalise_username(username)
    if not USERNAME_RE.fullmatch(normalised):
        raise Invalid("userName must be 1-255 characters without spaces or control characters")
    return normalised


def check_email(email: str) -> None:
    """Refuse a string that cannot be an email address (``local@domain``, bounded lengths)."""
    if not EMAIL_RE.fullmatch(email):
        raise Invalid("email is not a valid address")


def check_password(password: object) -> str:
    """Return ``password`` when it is a string of 8 to 1024 characters (NIST SP 800-63B §5.1.1.2)."""
    if not isinstance(password, str) or not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise Invalid(f"password must be {MIN_PASSWORD} to {MAX_PASSWORD} characters")
    return password


def is_live(user: Any) -> bool:
    """Tell whether an account may sign in and hold tokens: not deleted, and active exactly ``true``.

    ``enabled`` is NULL when a provisioning client removed SCIM ``active`` (unassigned); that is not
    ``true``, so such an account is cut off like a disabled one and only an explicit ``true`` lets it in.
    """
    return user is not None and user.deleted_at is None and user.enabled is True


def live_clause() -> ColumnElement[bool]:
    """Return :func:`is_live` as SQL over ``user`` (for joins that must skip dead accounts)."""
    return and_(User.deleted_at.is_(None), User.enabled.is_(true()))
