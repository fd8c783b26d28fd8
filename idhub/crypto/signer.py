"""A signing thread that takes ES256 signatures off the event loop in batches.

An ECDSA P-256 signature costs about 21 µs of OpenSSL time with the GIL released. Signed inline, that
time is lost to the event loop, which also parses, authenticates and answers every request. Handed to
``loop.run_in_executor`` one token at a time, the per-call hand-over (a future, a queue lock, a thread
wake-up and a loop wake-up per token) costs about as much as it saves (measured). Here, requests
queue their signing jobs, one worker thread drains the queue and signs while the loop keeps serving,
and the results of a whole batch are handed back with one ``call_soon_threadsafe`` per event loop.
Under load a batch holds several tokens, so the hand-over is paid a fraction of a time per token.

No library offers this (``concurrent.futures`` and ``asyncio.to_thread`` hand over per call), hence
this small module.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

Job = tuple[Callable[[], Any], "asyncio.Future[Any]"]


class BatchSigner:
    """Run signing callables on one worker thread; callers ``await`` the result."""

    def __init__(self, name: str = "idhub-es256") -> None:
        self._jobs: deque[Job] = deque()  # deque.append/popleft are atomic: no lock for the queue
        self._wake = threading.Event()
        self._closed = False
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    async def run(self, job: Callable[[], Any]) -> Any:
        """Return ``job()`` computed on the worker thread (its exception is raised here)."""
        if self._closed:
            raise RuntimeError("the signer is closed")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._jobs.append((job, future))
        if not self._wake.is_set():
            self._wake.set()
        return await future

    def close(self) -> None:
        """Stop the worker after the jobs already queued."""
        self._closed = True
        self._wake.set()

    def _work(self) -> None:
        jobs = self._jobs
        while True:
            self._wake.wait()
            self._wake.clear()
            while jobs:
                done: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], bool, Any]]] = {}
                for _ in range(len(jobs)):
                    job, future = jobs.popleft()
                    try:
                        outcome: tuple[asyncio.Future[Any], bool, Any] = (future, True, job())
                    except BaseException as exc:  # handed to the awaiting request, raised there
                        outcome = (future, False, exc)
                    done.setdefault(future.get_loop(), []).append(outcome)
                for loop, outcomes in done.items():
                    with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits for these
                        loop.call_soon_threadsafe(_settle, outcomes)
            if self._closed:
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
