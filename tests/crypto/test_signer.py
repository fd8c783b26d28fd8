"""The batching signing thread."""

from __future__ import annotations

import asyncio
import queue
import threading

import pytest

from idhub.crypto.signer import BatchSigner


async def test_batch_signer_runs_jobs_off_the_loop_thread_and_returns_results() -> None:
    signer = BatchSigner()
    try:
        loop_thread = threading.get_ident()
        results = await asyncio.gather(*(signer.run(lambda i=i: (i, threading.get_ident())) for i in range(200)))
        assert [value for value, _ in results] == list(range(200))
        assert all(thread != loop_thread for _, thread in results)
    finally:
        signer.close()


async def test_batch_signer_job_error_raised_to_its_caller_only() -> None:
    signer = BatchSigner()

    def fail() -> None:
        raise ValueError("bad key")

    try:
        outcomes = await asyncio.gather(signer.run(fail), signer.run(lambda: "ok"), return_exceptions=True)
        assert isinstance(outcomes[0], ValueError)
        assert outcomes[1] == "ok"
    finally:
        signer.close()


async def test_batch_signer_cancelled_caller_does_not_break_the_batch() -> None:
    signer = BatchSigner()
    gate = threading.Event()
    try:
        slow = asyncio.ensure_future(signer.run(gate.wait))
        other = asyncio.ensure_future(signer.run(lambda: 42))
        await asyncio.sleep(0.01)
        slow.cancel()
        gate.set()
        assert await other == 42
        assert await signer.run(lambda: "still serving") == "still serving"
    finally:
        signer.close()


async def test_batch_signer_closed_refuses_new_jobs() -> None:
    signer = BatchSigner()
    signer.close()
    with pytest.raises(RuntimeError):
        await signer.run(lambda: None)


async def test_batch_signer_hands_one_iterations_jobs_over_together(monkeypatch: pytest.MonkeyPatch) -> None:
    handed: list[int] = []

    class CountingQueue(queue.SimpleQueue):  # type: ignore[type-arg]
        def put(self, item: object, block: bool = True, timeout: float | None = None) -> None:
            handed.append(len(item) if isinstance(item, list) else 0)
            super().put(item, block, timeout)

    monkeypatch.setattr(queue, "SimpleQueue", CountingQueue)
    signer = BatchSigner()
    try:
        results = await asyncio.gather(*(signer.run(lambda i=i: i) for i in range(50)))
        assert results == list(range(50))
        assert handed == [50]  # one wake-up of the worker for the whole iteration, not fifty
    finally:
        signer.close()


async def test_batch_signer_closed_before_the_hand_over_fails_the_waiting_jobs() -> None:
    signer = BatchSigner()
    job = asyncio.ensure_future(signer.run(lambda: "never signed"))
    await asyncio.sleep(0)  # queued, not yet handed over
    signer.close()
    with pytest.raises(RuntimeError):
        await asyncio.wait_for(job, 2)
