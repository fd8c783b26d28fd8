"""Background tasks of the storage layer's consumers (the audit writer, the purge, key rotation)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")


async def cancel(task: asyncio.Task[Any] | None) -> None:
    """Cancel ``task`` (if any) and wait until it has stopped."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def repeat(
    interval: float,
    work: Callable[[], Awaitable[T]],
    *,
    log: logging.Logger,
    done: str,
    failed: str,
) -> None:
    """Run ``work`` every ``interval`` seconds (jittered) until cancelled; log what it did and its failures.

    The first run comes after a random part of the interval, so processes started together spread out.
    ``done`` is logged with the result when the result is truthy; a failure is logged and retried at the
    next interval.
    """
    await asyncio.sleep(interval * random.uniform(0.1, 1.0))  # noqa: S311 (jitter, not a secret)
    while True:
        try:
            result = await work()
            if result:
                log.info(done, result)
        except Exception:
            log.exception(failed)
        await asyncio.sleep(interval * random.uniform(0.9, 1.1))  # noqa: S311
