"""The unit of work: the one place that commits, and the bus that hands domain events on after it.

Every request and every CLI command runs in one :class:`UnitOfWork`. Services change state through its
session and raise :mod:`idhub.events` on it; they never commit. At the end the surface's boundary (or
``async with``) calls :meth:`UnitOfWork.commit`, which

1. runs the before-commit hooks in the same transaction (the audit log writes one row per audited event),
2. commits,
3. hands the events to their consumers (revocation state and broadcast, cache invalidation, the audit
   log stream). Consumers run only after a successful commit; one that fails is logged, never raised
   into the request whose change is already durable.

On an error the transaction rolls back and no event is handed on, except that refused attempts (events
whose outcome is not ``success``) still reach the failure hooks, so the audit log records them. A
refusal that must itself persist (a replayed authorization code revokes its grant, then the request
fails) calls :meth:`UnitOfWork.keep_on_error` before raising.

The session opens on first use: a request that never touches the database (a ``client_credentials``
token) costs no round trip.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import TypeVar

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from idhub.events import ANONYMOUS, Actor, DomainEvent

log = logging.getLogger(__name__)

E = TypeVar("E", bound=DomainEvent)
Consumer = Callable[[DomainEvent], Awaitable[None] | None]
Hook = Callable[["UnitOfWork", Sequence[DomainEvent]], Awaitable[None]]


class EventBus:
    """Consumers of domain events by event type (a consumer of a base class gets its subclasses too)."""

    def __init__(self) -> None:
        self._consumers: list[tuple[type[DomainEvent], Consumer]] = []
        self._resolved: dict[type[DomainEvent], tuple[Consumer, ...]] = {}

    def subscribe(self, event_type: type[E], consumer: Callable[[E], Awaitable[None] | None]) -> None:
        """Call ``consumer`` after each commit that raised an ``event_type`` (or a subclass)."""
        self._consumers.append((event_type, consumer))  # type: ignore[arg-type]
        self._resolved.clear()

    def consumers_of(self, event_type: type[DomainEvent]) -> tuple[Consumer, ...]:
        """Return the consumers of one event type (resolved once per type)."""
        found = self._resolved.get(event_type)
        if found is None:
            found = tuple(consumer for kind, consumer in self._consumers if issubclass(event_type, kind))
            self._resolved[event_type] = found
        return found

    async def publish(self, events: Sequence[DomainEvent]) -> None:
        """Hand committed events to their consumers; a failing consumer is logged and skipped."""
        for event in events:
            for consumer in self.consumers_of(type(event)):
                try:
                    result = consumer(event)
                    if result is not None:
                        await result
                except Exception:
                    log.exception("consumer of %s failed", type(event).__name__)


class UnitOfWork:
    """One transaction with the domain events it raised; commits in exactly one place."""

    __slots__ = ("_after_commit", "_bus", "_factory", "_keep", "_session", "actor", "events", "surface")

    def __init__(self, factory: UnitOfWorkFactory, *, actor: Actor, surface: str) -> None:
        self._factory = factory
        self._bus = factory.bus
        self._session: AsyncSession | None = None
        self._keep = False
        self._after_commit: list[Callable[[], None]] | None = None
        self.actor = actor
        self.surface = surface
        self.events: list[DomainEvent] = []

    @property
    def session(self) -> AsyncSession:
        """Return the session, opening it on first use."""
        if self._session is None:
            self._session = self._factory.sessionmaker()
        return self._session

    @property
    def opened(self) -> bool:
        """Tell whether the session was used (a transaction may be open)."""
        return self._session is not None

    def raise_event(self, event: DomainEvent) -> None:
        """Record that ``event`` happened in this unit of work."""
        self.events.append(event)

    def raise_events(self, events: Sequence[DomainEvent]) -> None:
        """Record several events at once (bulk operations)."""
        self.events.extend(events)

    def on_commit(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once this unit of work's transaction committed (never when it rolls back).

        For work that must only see committed state and must not wait on anything (the audit sink's
        queue); a callback that fails is logged, never raised into the request.
        """
        if self._after_commit is None:
            self._after_commit = []
        self._after_commit.append(callback)

    def keep_on_error(self) -> None:
        """Commit what was done so far even if the request then fails (a refusal that must persist)."""
        self._keep = True

    async def commit(self) -> None:
        """Write the audit rows, commit, then hand the events on. The only commit in idhub.

        The before-commit hooks see the events; a unit of work that raised none does not call them.
        """
        events, self.events = self.events, []
        try:
            if events:
                for hook in self._factory.before_commit:
                    await hook(self, events)
            if self._session is not None:
                await self._session.commit()
        except BaseException:
            self.events = events + self.events  # not committed: the refusals among them are still owed
            self._after_commit = None
            raise
        self._keep = False
        if self._after_commit is not None:
            callbacks, self._after_commit = self._after_commit, None
            for callback in callbacks:
                try:
                    callback()
                except Exception:
                    log.exception("after-commit callback failed")
        if events:
            await self._bus.publish(events)

    async def rollback(self) -> None:
        """Undo everything; refused attempts among the events still reach the failure hooks."""
        events, self.events = self.events, []
        self._after_commit = None
        if self._session is not None:
            await self._session.rollback()
        refused = [event for event in events if event.outcome != "success"]
        if refused:
            for hook in self._factory.after_rollback:
                await hook(self, refused)

    async def _rollback_quietly(self) -> None:
        try:
            await self.rollback()
        except Exception:
            log.exception("rolling back after a failed commit failed too")

    async def close(self) -> None:
        """Release the session (anything not committed is rolled back)."""
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    async def finish(self, error: BaseException | None) -> None:
        """End the unit of work: commit on success (or when kept), else roll back; always close."""
        if error is None and self._session is None:  # nothing to close (a stateless token request)
            try:
                await self.commit()
            except Exception:
                await self._rollback_quietly()
                raise
            return
        try:
            if error is None or (self._keep and isinstance(error, Exception)):
                try:
                    await self.commit()
                except Exception:
                    # A failed COMMIT (or before-commit hook) is a rollback: the refusals still reach
                    # the failure hooks, then the commit's own error goes up.
                    await self._rollback_quietly()
                    raise
            else:
                await self.rollback()
        finally:
            await self.close()

    async def __aenter__(self) -> UnitOfWork:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.finish(exc)


class UnitOfWorkFactory:
    """Build units of work that share one session factory, one event bus and the commit hooks."""

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        *,
        bus: EventBus | None = None,
        before_commit: Sequence[Hook] = (),
        after_rollback: Sequence[Hook] = (),
    ) -> None:
        self.sessionmaker = sessionmaker
        self.bus = bus or EventBus()
        self.before_commit: list[Hook] = list(before_commit)
        self.after_rollback: list[Hook] = list(after_rollback)

    def __call__(self, *, actor: Actor = ANONYMOUS, surface: str = "") -> UnitOfWork:
        """Start a unit of work for ``actor`` acting through ``surface`` (``scim``, ``oidc``, ``cli``...)."""
        return UnitOfWork(self, actor=actor, surface=surface)
