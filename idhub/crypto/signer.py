"""A signing thread that takes ES256 signatures off the event loop in batches.

An ECDSA P-256 signature costs about 21 µs of OpenSSL time with the GIL released. Signed inline, that
time is lost to the event loop, which also parses, authenticates and answers every request. Handed to
``loop.run_in_executor`` one token at a time, the per-call hand-over (a future, a queue lock, a thread
wake-up and a loop wake-up per token) costs about as much as it saves (measured). Here, requests
queue their signing jobs; the jobs of one event-loop iteration go to one worker thread together (one
thread wake-up per iteration, not per token), which signs while the loop keeps serving, and the
results of a whole batch are handed back with one ``call_soon_threadsafe`` per event loop. Under load
a batch holds several tokens, so the hand-over is paid a fraction of a time per token.

No library offers this (``concurrent.futures`` and ``asyncio.to_thread`` hand over per call), hence
this small module.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any

Job = tuple[Callable[[], Any], "asyncio.Future[Any]"]


class BatchSigner:
    """Run signing callables on one worker thread; callers ``await`` the result."""

    def __init__(self, name: str = "idhub-es256") -> None:
        # A C queue: ``put`` takes no Python-level lock and wakes the worker only when it waits
        # (``threading.Event.set`` goes through a Python ``Condition``, microseconds per token).
        self._jobs: queue.SimpleQueue[list[Job] | None] = queue.SimpleQueue()
        # Jobs of the current event-loop iteration, per loop: handed over together, one wake-up of
        # the worker per iteration instead of one per token (a wake-up is a system call).
        self._pending: dict[asyncio.AbstractEventLoop, list[Job]] = {}
        self._closed = False
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    async def run(self, job: Callable[[], Any]) -> Any:
        """Return ``job()`` computed on the worker thread (its exception is raised here)."""
        if self._closed:
            raise RuntimeError("the signer is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        pending = self._pending.get(loop)
        if pending is None:
            pending = self._pending[loop] = []
            loop.call_soon(self._hand_over, loop)
        pending.append((job, future))
        return await future

    def _hand_over(self, loop: asyncio.AbstractEventLoop) -> None:
        """Give the worker the jobs ``loop`` queued during one iteration."""
        jobs = self._pending.pop(loop)
        if self._closed:
            for _job, future in jobs:
                if not future.done():
                    future.set_exception(RuntimeError("the signer is closed"))
            return
        self._jobs.put(jobs)

    def close(self) -> None:
        """Stop the worker after the jobs already queued."""
        if not self._closed:
            self._closed = True
            self._jobs.put(None)

    def _work(self) -> None:
        jobs = self._jobs
        while True:
            batches = [jobs.get()]  # blocks until there is work
            while not jobs.empty():
                batches.append(jobs.get_nowait())
            done: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], bool, Any]]] = {}
            stop = None in batches
            for job, future in (item for batch in batches if batch is not None for item in batch):
                try:
                    outcome: tuple[asyncio.Future[Any], bool, Any] = (future, True, job())
                except BaseException as exc:  # handed to the awaiting request, raised there
                    outcome = (future, False, exc)
                done.setdefault(future.get_loop(), []).append(outcome)
            for loop, outcomes in done.items():
                with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits for these
                    loop.call_soon_threadsafe(_settle, outcomes)
            if stop:
                return


def _settle(outcomes: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    """Resolve a batch's futures on their own loop (a cancelled request's future is skipped)."""
    for future, ok, value in outcomes:
        if future.done():
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)
