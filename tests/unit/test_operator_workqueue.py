"""The work queue: one reconcile per key at a time, deduplicated events, retries with backoff."""

from __future__ import annotations

import asyncio
from collections import Counter

import kopf
import pytest

from mnist_operator.workqueue import WorkQueue

pytestmark = pytest.mark.asyncio
Key = tuple[str, str]


async def wait_idle(queue: WorkQueue, timeout: float = 2.0) -> None:
    await asyncio.wait_for(queue.idle.wait(), timeout)


async def test_events_for_a_queued_key_are_merged() -> None:
    calls: Counter[Key] = Counter()

    async def reconcile(key: Key) -> None:
        calls[key] += 1

    queue = WorkQueue(reconcile, workers=2)
    for _ in range(5):
        queue.add(("ns", "a"))
    queue.add(("ns", "b"))
    queue.start()
    await wait_idle(queue)
    await queue.stop()
    assert calls == {("ns", "a"): 1, ("ns", "b"): 1}


async def test_a_key_is_never_reconciled_twice_at_once_and_events_during_a_run_requeue_it() -> None:
    running: set[Key] = set()
    overlaps = 0
    calls = 0
    release = asyncio.Event()

    async def reconcile(key: Key) -> None:
        nonlocal overlaps, calls
        calls += 1
        if key in running:
            overlaps += 1
        running.add(key)
        await release.wait()
        running.discard(key)

    queue = WorkQueue(reconcile, workers=4)
    queue.start()
    queue.add(("ns", "a"))
    await asyncio.sleep(0.01)
    queue.add(("ns", "a"))  # arrives while the first run is in progress
    queue.add(("ns", "a"))
    await asyncio.sleep(0.01)
    assert calls == 1
    release.set()
    await wait_idle(queue)
    await queue.stop()
    assert (calls, overlaps) == (2, 0)


async def test_temporary_errors_retry_with_growing_delays_until_success() -> None:
    loop = asyncio.get_running_loop()
    times: list[float] = []

    async def reconcile(key: Key) -> None:
        times.append(loop.time())
        if len(times) < 3:
            raise kopf.TemporaryError("not yet", delay=0.05)

    queue = WorkQueue(reconcile, workers=1)
    queue.start()
    queue.add(("ns", "a"))
    deadline = loop.time() + 2
    while len(times) < 3 and loop.time() < deadline:
        await asyncio.sleep(0.01)
    await queue.stop()
    assert len(times) == 3
    first, second = times[1] - times[0], times[2] - times[1]
    assert first >= 0.05 and second >= 0.1  # exponential: 0.05, then 0.1


async def test_permanent_errors_wait_for_the_next_event() -> None:
    calls = 0

    async def reconcile(key: Key) -> None:
        nonlocal calls
        calls += 1
        raise kopf.PermanentError("bad spec")

    queue = WorkQueue(reconcile, workers=1)
    queue.start()
    queue.add(("ns", "a"))
    await wait_idle(queue)
    await asyncio.sleep(0.1)
    assert calls == 1
    queue.add(("ns", "a"))
    await wait_idle(queue)
    await queue.stop()
    assert calls == 2


async def test_forget_cancels_pending_retries() -> None:
    calls = 0

    async def reconcile(key: Key) -> None:
        nonlocal calls
        calls += 1
        raise kopf.TemporaryError("later", delay=0.05)

    queue = WorkQueue(reconcile, workers=1)
    queue.start()
    queue.add(("ns", "a"))
    await wait_idle(queue)
    queue.forget(("ns", "a"))
    await asyncio.sleep(0.15)
    await queue.stop()
    assert calls == 1
