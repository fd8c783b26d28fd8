"""Tell a dependency that is down or too slow from a bug: the former is an answer (503), the latter a 500.

A request whose database (or Redis) connection is refused, reset or timed out, whose pool had no
connection to lend in time, or whose transaction PostgreSQL aborted for reasons that pass (a deadlock,
a serialization failure, a server shutting down or in recovery, a statement cancelled by its timeout)
did nothing wrong: it gets :class:`~idhub.errors.Unavailable`, which every surface renders as a 503
with ``Retry-After``. :func:`as_unavailable` finds such a fault anywhere in an exception's chain
(SQLAlchemy wraps the driver's error, which may wrap the socket's).
"""

from __future__ import annotations

import errno
import logging
import socket
import sqlite3
from collections import deque
from collections.abc import Iterator
from typing import Protocol

from sqlalchemy import exc as sa_exc

from idhub.errors import Unavailable

RETRY_AFTER = 5  # seconds: about one failover
CONFLICT_RETRY_AFTER = 1

# SQLSTATEs that say "try again" rather than "your statement is wrong" (PostgreSQL Appendix A).
_TRANSIENT_CLASSES = ("08", "53", "57")  # connection exception, insufficient resources, operator intervention
_CONFLICT_STATES = frozenset({"40001", "40P01"})  # serialization failure, deadlock detected
_TRANSIENT_STATES = frozenset({"25006", "55P03", "58000", "58030"})  # read-only (a replica), lock wait, I/O
_NETWORK_ERRNOS = frozenset(
    {
        errno.ECONNREFUSED,
        errno.ECONNRESET,
        errno.ECONNABORTED,
        errno.EPIPE,
        errno.ETIMEDOUT,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        errno.ENETDOWN,
        errno.EHOSTDOWN,
        errno.EADDRNOTAVAIL,
    }
)
_SQLITE_TRANSIENT = ("database is locked", "database table is locked", "unable to open database file")
_CHAIN_LIMIT = 8


def as_unavailable(exc: BaseException) -> Unavailable | None:
    """Return the :class:`Unavailable` that ``exc`` stands for, or ``None`` when it is no dependency fault."""
    if isinstance(exc, Unavailable):
        return exc
    for current in exception_chain(exc):
        retry_after = _retry_after(current)
        if retry_after is not None:
            return Unavailable(
                "the service is temporarily unavailable; try again later",
                internal=f"{type(exc).__name__}: {_describe(exc)}",
                retry_after=retry_after,
            )
    return None


def exception_chain(exc: BaseException) -> Iterator[BaseException]:
    """Yield ``exc`` and what it wraps (the driver's ``orig``, cause, context), breadth first, each once.

    SQLAlchemy wraps the driver's error, and a service may have wrapped that again; the chain is cut after
    a few links, so a pathological exception cannot make this walk long.
    """
    seen: set[int] = set()
    pending: deque[BaseException] = deque([exc])
    while pending and len(seen) < _CHAIN_LIMIT:
        current = pending.popleft()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        for linked in (getattr(current, "orig", None), current.__cause__, current.__context__):
            if isinstance(linked, BaseException):
                pending.append(linked)


def translate(exc: Exception) -> Exception:
    """Return ``exc`` as an :class:`Unavailable` when it is a dependency fault, else ``exc`` itself."""
    return as_unavailable(exc) or exc


def is_fault(exc: BaseException) -> bool:
    """Tell whether ``exc`` is a dependency fault (down, too slow, transiently refusing)."""
    return as_unavailable(exc) is not None


def _retry_after(exc: BaseException) -> int | None:
    """Return the Retry-After for one exception of a chain, or ``None`` if it says nothing about faults."""
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return RETRY_AFTER
    if isinstance(exc, (sa_exc.TimeoutError, sa_exc.DisconnectionError)):  # pool checkout, a dead connection
        return RETRY_AFTER
    if isinstance(exc, (TimeoutError, ConnectionError, socket.gaierror)):
        return RETRY_AFTER
    if isinstance(exc, OSError) and exc.errno in _NETWORK_ERRNOS:
        return RETRY_AFTER
    if isinstance(exc, sa_exc.OperationalError) and not isinstance(exc.orig, sqlite3.Error):
        return RETRY_AFTER  # a server-side DBAPI's "operational" errors: connection lost, server gone
    sqlstate = getattr(exc, "sqlstate", None) or getattr(exc, "pgcode", None)
    if isinstance(sqlstate, str) and sqlstate:
        if sqlstate in _CONFLICT_STATES:
            return CONFLICT_RETRY_AFTER
        if sqlstate[:2] in _TRANSIENT_CLASSES or sqlstate in _TRANSIENT_STATES:
            return RETRY_AFTER
        return None
    if isinstance(exc, sqlite3.OperationalError):
        message = str(exc).lower()
        return RETRY_AFTER if any(text in message for text in _SQLITE_TRANSIENT) else None
    return _driver_fault(exc)


def _driver_fault(exc: BaseException) -> int | None:
    """Recognise the drivers' own connection errors without importing drivers that are not installed."""
    module = type(exc).__module__
    name = type(exc).__name__
    if module.startswith("asyncpg"):
        if name in ("ConnectionDoesNotExistError", "ConnectionFailureError", "ClientCannotConnectError"):
            return RETRY_AFTER
        if name == "InterfaceError" and "connection is closed" in str(exc):
            return RETRY_AFTER
    if module.startswith("redis") and name in ("ConnectionError", "TimeoutError", "BusyLoadingError"):
        return RETRY_AFTER
    return None


def _describe(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return text[:300]


class FaultCounter(Protocol):
    """Where faults are counted (:class:`idhub.metrics.Metrics`; services must not import the metrics module)."""

    def count_fault(self, dependency: str, event: str) -> None:
        """Count one fault of ``dependency`` and what was done instead (``event``)."""


class OutageLog:
    """Say once that a component lost a dependency, and once that it is back (not once per attempt)."""

    __slots__ = ("_down", "_logger", "_what")

    def __init__(self, logger: logging.Logger, what: str) -> None:
        self._logger = logger
        self._what = what
        self._down = False

    @property
    def down(self) -> bool:
        """Tell whether the last attempt failed."""
        return self._down

    def failed(self, exc: BaseException, consequence: str) -> bool:
        """Note a failed attempt; log a warning (with what happens instead) only when an outage starts."""
        if self._down:
            return False
        self._down = True
        self._logger.warning("%s failed (%s: %s); %s", self._what, type(exc).__name__, _describe(exc), consequence)
        return True

    def recovered(self) -> None:
        """Note a successful attempt; log when it ends an outage."""
        if self._down:
            self._down = False
            self._logger.info("%s works again", self._what)
