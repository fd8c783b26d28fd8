"""Retry a transaction that the database aborted to settle a conflict (deadlock, serialization failure).

PostgreSQL breaks a deadlock by aborting one of the transactions in it (SQLSTATE ``40P01``) and aborts a
transaction whose snapshot could not be serialised (``40001``); in both cases the transaction did nothing
wrong and the same work in a fresh transaction normally succeeds (PostgreSQL manual, "Serialization Failure
Handling"). :func:`is_conflict` recognises such an abort anywhere in an exception's chain (SQLAlchemy wraps
the driver's error, and a service may have wrapped that); :class:`RetryPolicy` says how often to try and how
long to wait between attempts. After the last attempt the caller answers 503 (:func:`exhausted`), never 500.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from idhub.errors import Unavailable
from idhub.storage.faults import exception_chain

DEADLOCK_DETECTED = "40P01"
SERIALIZATION_FAILURE = "40001"
CONFLICT_STATES = frozenset({DEADLOCK_DETECTED, SERIALIZATION_FAILURE})


def sqlstate_of(exc: BaseException) -> str | None:
    """Return the first SQLSTATE found in ``exc``'s chain (``orig``, cause, context), or ``None``."""
    for current in exception_chain(exc):
        state = getattr(current, "sqlstate", None) or getattr(current, "pgcode", None)
        if isinstance(state, str) and state:
            return state
    return None


def is_conflict(exc: BaseException) -> bool:
    """Tell whether ``exc`` is a transaction the database aborted as a deadlock or serialization failure."""
    return sqlstate_of(exc) in CONFLICT_STATES


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """At most ``attempts`` runs of one transaction; between them a random wait ("full jitter").

    The wait before the ``n``-th retry is uniform in ``[0, min(max_delay, base_delay * 2**(n-1))]``: the
    transactions that collided do not collide again in lockstep, and a request waits well under a second
    in total.
    """

    attempts: int = 3
    base_delay: float = 0.01
    max_delay: float = 0.2

    def should_retry(self, exc: BaseException, attempt: int) -> bool:
        """Tell whether attempt number ``attempt`` (from 1), which failed with ``exc``, is run again."""
        return attempt < self.attempts and is_conflict(exc)

    def delay(self, attempt: int) -> float:
        """Return the seconds to wait after failed attempt number ``attempt`` (from 1)."""
        ceiling = min(self.max_delay, self.base_delay * 2 ** max(0, attempt - 1))
        return random.uniform(0.0, ceiling)  # noqa: S311 - jitter, not a secret


DEFAULT_POLICY = RetryPolicy()


def exhausted(exc: BaseException, attempts: int) -> Unavailable:
    """Return the 503 for a conflict that persisted through every attempt (never a 500)."""
    return Unavailable(
        "the service is busy; try again",
        internal=f"transaction aborted as a conflict (SQLSTATE {sqlstate_of(exc)}) {attempts} times",
        retry_after=1,
    )
