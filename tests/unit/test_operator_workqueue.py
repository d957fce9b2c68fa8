"""The work queue: one reconcile per key at a time, deduplicated events, retries with backoff, and
a queue that cannot go quiet: no failure ends a worker, ended workers are replaced, a stall is seen."""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from collections.abc import Awaitable, Callable

import pytest
from prometheus_client import CollectorRegistry

from mnist_operator.metrics import Metrics
from mnist_operator.workqueue import MAX_BACKOFF, Requeue, StopRetrying, WorkQueue, backoff

Key = tuple[str, str]


async def wait_idle(queue: WorkQueue, timeout: float = 2.0) -> None:
    await asyncio.wait_for(queue.idle.wait(), timeout)


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.001)


def retry_at_once(queue: WorkQueue, monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Record every delay the queue asks for, but retry at once: thousands of retries take no time."""
    delays: list[float] = []
    schedule = queue.add_after

    def record(key: Key, delay: float) -> None:
        delays.append(delay)
        schedule(key, 0)

    monkeypatch.setattr(queue, "add_after", record)
    return delays


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def worker_tasks() -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("reconcile-worker-")]


@pytest.mark.asyncio
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


@pytest.mark.asyncio
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


@pytest.mark.asyncio
async def test_requeue_retries_with_growing_delays_until_success() -> None:
    loop = asyncio.get_running_loop()
    times: list[float] = []

    async def reconcile(key: Key) -> None:
        times.append(loop.time())
        if len(times) < 3:
            raise Requeue("not yet", delay=0.05)

    queue = WorkQueue(reconcile, workers=1)
    queue.start()
    queue.add(("ns", "a"))
    await until(lambda: len(times) == 3, timeout=2)
    await queue.stop()
    first, second = times[1] - times[0], times[2] - times[1]
    assert first >= 0.05 and second >= 0.1  # exponential: 0.05, then 0.1


@pytest.mark.asyncio
async def test_stop_retrying_waits_for_the_next_event() -> None:
    calls = 0

    async def reconcile(key: Key) -> None:
        nonlocal calls
        calls += 1
        raise StopRetrying("bad spec")

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


@pytest.mark.asyncio
async def test_forget_cancels_pending_retries() -> None:
    calls = 0

    async def reconcile(key: Key) -> None:
        nonlocal calls
        calls += 1
        raise Requeue("later", delay=0.05)

    queue = WorkQueue(reconcile, workers=1)
    queue.start()
    queue.add(("ns", "a"))
    await wait_idle(queue)
    queue.forget(("ns", "a"))
    await asyncio.sleep(0.15)
    await queue.stop()
    assert calls == 1


def test_backoff_doubles_up_to_the_cap_and_stays_finite_for_any_number_of_failures() -> None:
    assert [backoff(1.0, n, 300.0) for n in range(1, 11)] == [1, 2, 4, 8, 16, 32, 64, 128, 256, 300]
    # 2.0 ** 1024 overflows: the old formula raised OverflowError from here on.
    for failures in (1023, 1024, 1025, 10_000, 10**9):
        assert backoff(1.0, failures, 300.0) == 300.0
        assert backoff(1e-9, failures, 300.0) <= 300.0
    assert backoff(0.0, 5000, 300.0) == 0.0
    for unusable in (-1.0, math.nan, math.inf, 1e308):
        assert backoff(unusable, 3, 300.0) == 300.0


@pytest.mark.parametrize(
    "failure",
    [lambda: Requeue("quota exceeded", delay=1.0), lambda: RuntimeError("a bug")],
    ids=["requeue", "unexpected"],
)
@pytest.mark.asyncio
async def test_thousands_of_failures_of_one_key_leave_every_worker_alive_and_others_reconciled(
    failure: Callable[[], BaseException], monkeypatch: pytest.MonkeyPatch
) -> None:
    failures_wanted = 2500  # well past 1024, where 2.0 ** failures overflowed and killed the worker
    calls: Counter[Key] = Counter()

    async def reconcile(key: Key) -> None:
        calls[key] += 1
        if key == ("ns", "broken"):
            raise failure()

    metrics = Metrics.create(registry := CollectorRegistry())
    queue = WorkQueue(reconcile, workers=4, metrics=metrics)
    delays = retry_at_once(queue, monkeypatch)
    queue.start()
    queue.add(("ns", "broken"))
    good = [("ns", f"good-{i}") for i in range(50)]
    deadline = asyncio.get_running_loop().time() + 10
    while calls[("ns", "broken")] < failures_wanted:
        assert asyncio.get_running_loop().time() < deadline, f"stuck after {calls[('ns', 'broken')]} failures"
        # The others keep arriving while the broken one fails: each is still reconciled.
        if good and calls[("ns", "broken")] > 40 * (50 - len(good)):
            queue.add(good.pop())
        await asyncio.sleep(0)
    assert queue.alive_workers == 4
    assert all(not task.done() for task in worker_tasks())
    await until(lambda: sum(1 for k in calls if k[1].startswith("good-")) == 50)
    assert all(n == 1 for k, n in calls.items() if k[1].startswith("good-"))
    await queue.stop()
    assert len(delays) >= failures_wanted
    assert all(math.isfinite(d) and 0 < d <= MAX_BACKOFF for d in delays)
    assert max(delays) == MAX_BACKOFF and delays[-1] == MAX_BACKOFF
    assert registry.get_sample_value("mnist_operator_workqueue_retries_total") == len(delays)


class OddBaseException(BaseException):
    pass


def raising(exc: BaseException) -> Callable[[], Awaitable[None]]:
    async def fail() -> None:
        raise exc

    return fail


async def cancelled_inner_task() -> None:
    inner = asyncio.get_running_loop().create_future()
    inner.cancel()
    await inner  # a CancelledError, but the worker itself was not cancelled


@pytest.mark.parametrize(
    "fail",
    [
        raising(KeyError("spec")),
        raising(MemoryError()),
        raising(SystemExit(3)),
        raising(KeyboardInterrupt()),
        raising(OddBaseException()),
        cancelled_inner_task,
    ],
    ids=["KeyError", "MemoryError", "SystemExit", "KeyboardInterrupt", "BaseException", "inner-cancel"],
)
@pytest.mark.asyncio
async def test_any_failure_in_a_reconcile_is_retried_and_never_ends_the_worker(
    fail: Callable[[], Awaitable[None]], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: Counter[Key] = Counter()

    async def reconcile(key: Key) -> None:
        calls[key] += 1
        if key == ("ns", "a") and calls[key] == 1:
            await fail()

    queue = WorkQueue(reconcile, workers=1)  # one worker: if it died, nothing else would run
    delays = retry_at_once(queue, monkeypatch)
    queue.start()
    queue.add(("ns", "a"))
    await until(lambda: calls[("ns", "a")] == 2)
    queue.add(("ns", "b"))
    await until(lambda: calls[("ns", "b")] == 1)
    assert queue.alive_workers == 1
    await queue.stop()
    assert delays == [2.0]  # retried, with the base for unexpected failures


@pytest.mark.asyncio
async def test_a_worker_that_ends_is_replaced_and_its_key_is_not_lost() -> None:
    calls: Counter[Key] = Counter()
    hold = asyncio.Event()
    first_worker: list[asyncio.Task[object]] = []

    async def reconcile(key: Key) -> None:
        calls[key] += 1
        if calls[key] == 1:
            task = asyncio.current_task()
            assert task is not None
            first_worker.append(task)
            await hold.wait()

    metrics = Metrics.create(registry := CollectorRegistry())
    queue = WorkQueue(reconcile, workers=2, metrics=metrics)
    queue.start()
    queue.add(("ns", "a"))
    await until(lambda: calls[("ns", "a")] == 1)
    # Something other than stop() ends the worker in the middle of a reconcile.
    first_worker[0].cancel()
    await until(lambda: calls[("ns", "a")] == 2)  # the unfinished reconcile runs again
    assert queue.alive_workers == 2 and len(worker_tasks()) == 2
    assert registry.get_sample_value("mnist_operator_workqueue_worker_restarts_total") == 1
    await wait_idle(queue)
    await queue.stop()
    assert worker_tasks() == []  # stop() is not mistaken for a death
    assert registry.get_sample_value("mnist_operator_workqueue_worker_restarts_total") == 1


@pytest.mark.asyncio
async def test_stall_is_reported_only_when_due_work_waits_and_nothing_finishes() -> None:
    clock = FakeClock()
    hang = asyncio.Event()

    async def reconcile(key: Key) -> None:
        if key[1].startswith("hung"):
            await hang.wait()

    queue = WorkQueue(reconcile, workers=2, stall_after=300, clock=clock)
    queue.start()
    clock.now += 10_000
    assert queue.stall() is None  # idle for ages: nothing to do is not a stall
    queue.add(("ns", "hung-1"))
    queue.add(("ns", "hung-2"))
    queue.add(("ns", "waiting"))
    await until(lambda: len(queue) == 1)  # both workers hang; one key waits
    clock.now += 299
    assert queue.stall() is None
    clock.now += 2
    stall = queue.stall()
    assert stall is not None
    assert "1 waiting and 2 running MnistModels, the oldest due for 301s" in stall
    hang.set()
    await wait_idle(queue)
    assert queue.stall() is None
    await queue.stop()


@pytest.mark.asyncio
async def test_a_busy_queue_that_keeps_finishing_is_not_stalled() -> None:
    clock = FakeClock()
    seen: list[str | None] = []

    async def reconcile(key: Key) -> None:
        clock.now += 20  # each reconcile is slow, but they finish
        seen.append(queue.stall())

    queue = WorkQueue(reconcile, workers=1, stall_after=300, clock=clock)
    for i in range(50):
        queue.add(("ns", f"m{i}"))
    queue.start()
    await wait_idle(queue)
    await queue.stop()
    assert len(seen) == 50 and set(seen) == {None}  # the last ones waited 1000 s, yet no stall


@pytest.mark.asyncio
async def test_a_queue_without_live_workers_is_stalled_and_a_long_backoff_is_not() -> None:
    clock = FakeClock()

    async def reconcile(key: Key) -> None:
        raise Requeue("later", delay=1000)

    queue = WorkQueue(reconcile, workers=1, stall_after=300, max_backoff=1000, clock=clock)
    queue.start()
    queue.add(("ns", "backing-off"))
    await wait_idle(queue)
    clock.now += 5000
    assert queue.stall() is None  # its retry is not due for 1000 real seconds
    await queue.stop()
    queue.add(("ns", "nobody-takes-this"))
    clock.now += 301
    stall = queue.stall()
    assert stall is not None and "0 of 1 workers alive" in stall


@pytest.mark.asyncio
async def test_queue_metrics_depth_oldest_age_and_retries() -> None:
    clock = FakeClock()
    registry = CollectorRegistry()
    calls: Counter[Key] = Counter()

    async def reconcile(key: Key) -> None:
        calls[key] += 1
        if calls[key] == 1:
            raise Requeue("once", delay=0)

    queue = WorkQueue(reconcile, workers=2, metrics=Metrics.create(registry), clock=clock)

    def sample(name: str) -> float | None:
        return registry.get_sample_value(name)

    assert (
        sample("mnist_operator_workqueue_depth"),
        sample("mnist_operator_workqueue_oldest_item_age_seconds"),
    ) == (
        0,
        0,
    )
    queue.add(("ns", "a"))
    clock.now += 30
    queue.add(("ns", "b"))
    queue.add(("ns", "a"))  # already waiting: keeps its age
    clock.now += 12
    assert sample("mnist_operator_workqueue_depth") == 2
    assert sample("mnist_operator_workqueue_oldest_item_age_seconds") == 42
    queue.start()
    await until(lambda: calls == {("ns", "a"): 2, ("ns", "b"): 2})
    await wait_idle(queue)
    await queue.stop()
    assert sample("mnist_operator_workqueue_depth") == 0
    assert sample("mnist_operator_workqueue_oldest_item_age_seconds") == 0
    assert sample("mnist_operator_workqueue_retries_total") == 2
    assert sample("mnist_operator_workqueue_worker_restarts_total") == 0
