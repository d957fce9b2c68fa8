"""An in-memory work queue of MnistModel keys, with the semantics of client-go's workqueue.

Why not kopf's own create/update/resume handlers: they persist progress and a diff base in the
object's annotations, which is a write per change and per restart. Watch events only *trigger*
work here; the work itself reads the watch caches and writes only real differences.

- a key is queued at most once, however many events arrive for it;
- a key is never reconciled by two workers at once; events during a reconcile queue it again;
- `Requeue` retries with a per-key exponential backoff (its delay is the base), `StopRetrying`
  waits for the next event, and any other failure retries too: whatever one reconcile raises, it
  never ends a worker, and a worker that ends anyway is replaced;
- `stall()` tells the liveness probe when work has waited and nothing has finished for too long.

kopf never sees the queue's exceptions, so they are the queue's own: kopf's TemporaryError and
PermanentError would promise kopf's retry behaviour to a reader.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable

from mnist_operator.metrics import Metrics

logger = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, name)
Reconcile = Callable[[Key], Awaitable[None]]
Clock = Callable[[], float]

MAX_BACKOFF = 300.0
REQUEUE_DELAY = 1.0  # the base when a Requeue names none
UNEXPECTED_FAILURE_DELAY = 2.0  # the base after an exception the reconcile did not mean to raise
# 2**32 seconds is far beyond any cap, and 2.0**1024 raises OverflowError: the exponent stops here.
MAX_BACKOFF_EXPONENT = 32
STALL_AFTER = 300.0


# Named for what they ask of the queue, as StopIteration is, rather than with an Error suffix.
class Requeue(Exception):  # noqa: N818
    """Not done yet: reconcile this key again in `delay` seconds, doubled for each failure in a row."""

    def __init__(self, message: str, *, delay: float = REQUEUE_DELAY) -> None:
        super().__init__(message)
        self.delay = delay


class StopRetrying(Exception):  # noqa: N818
    """Trying again cannot help (the input is wrong): wait for the next event about this key."""


def backoff(base: float, failures: int, cap: float) -> float:
    """Seconds before the next try: `base` doubled for each failure in a row after the first, at most `cap`.

    A model can fail for days (a spec the cluster refuses): thousands of failures must still give
    a finite delay, so the exponent is bounded. A base that is not a usable number (negative,
    NaN, infinite) waits the longest, `cap`.
    """
    if not 0.0 <= base <= cap:
        return cap
    exponent = min(max(failures - 1, 0), MAX_BACKOFF_EXPONENT)
    return min(base * 2.0**exponent, cap)


class WorkQueue:
    def __init__(
        self,
        reconcile: Reconcile,
        *,
        workers: int = 4,
        max_backoff: float = MAX_BACKOFF,
        stall_after: float = STALL_AFTER,
        metrics: Metrics | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self._reconcile = reconcile
        self._worker_count = workers
        self._max_backoff = max_backoff
        self._stall_after = stall_after
        self._metrics = metrics
        self._clock = clock
        self._queue: asyncio.Queue[Key] = asyncio.Queue()
        # Keys waiting for a worker, with when they started waiting. Insertion order is age order
        # (a key queued again keeps its first time), so the first entry is the oldest.
        self._waiting: dict[Key, float] = {}
        self._running: dict[Key, float] = {}  # key -> when its reconcile started
        self._failures: dict[Key, int] = {}
        self._timers: dict[Key, asyncio.TimerHandle] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._last_finished = clock()
        # Kept up to date on the event loop, read by the metrics server's thread (one attribute
        # read is safe there; walking the dict while the loop changes it would not be).
        self._oldest_waiting_since: float | None = None
        self.idle = asyncio.Event()  # set whenever nothing is queued or running (for tests, benchmarks)
        self.idle.set()
        if metrics is not None:
            metrics.watch_queue(depth=self.__len__, oldest_age=self.oldest_age)

    def start(self) -> None:
        self._stopping = False
        self._tasks = []
        for index in range(self._worker_count):
            self._tasks.append(self._spawn(index))

    async def stop(self) -> None:
        self._stopping = True
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    def clear(self) -> None:
        """Forget all pending work and retries (a stopped queue of a replica that stopped leading:
        the new leader reconciles everything, and a standby must not look stalled)."""
        if self._tasks:
            raise RuntimeError("clear() a stopped queue only")
        self._waiting.clear()
        self._failures.clear()
        self._oldest_waiting_since = None
        self._queue = asyncio.Queue()
        self.idle.set()

    def __len__(self) -> int:
        return len(self._waiting)

    @property
    def alive_workers(self) -> int:
        return sum(not task.done() for task in self._tasks)

    def oldest_age(self) -> float:
        """Seconds the longest-waiting key has waited for a worker (0 when none waits)."""
        since = self._oldest_waiting_since
        return 0.0 if since is None else max(self._clock() - since, 0.0)

    def stall(self) -> str | None:
        """Why the queue makes no progress, or None while it is idle or progressing.

        Stalled: work has been due (waiting for a worker, or running) for longer than
        `stall_after`, and no reconcile has finished in that time. Retries scheduled for later are
        not due, so a model in a long backoff does not count.
        """
        now = self._clock()
        since_finished = now - self._last_finished
        oldest_running = min(self._running.values(), default=None)
        due = [t for t in (self._oldest_waiting_since, oldest_running) if t is not None]
        if not due or since_finished <= self._stall_after:
            return None
        pending_for = now - min(due)
        if pending_for <= self._stall_after:
            return None
        return (
            f"work queue stalled: {len(self._waiting)} waiting and {len(self._running)} running "
            f"MnistModels, the oldest due for {pending_for:.0f}s, and no reconcile has finished for "
            f"{since_finished:.0f}s (limit {self._stall_after:g}s); {self.alive_workers} of "
            f"{self._worker_count} workers alive"
        )

    def add(self, key: Key) -> None:
        if key in self._waiting:
            return
        self._waiting[key] = self._clock()
        if self._oldest_waiting_since is None:
            self._oldest_waiting_since = self._waiting[key]
        self.idle.clear()
        if key not in self._running:
            self._queue.put_nowait(key)

    def add_after(self, key: Key, delay: float) -> None:
        """Queue `key` in `delay` seconds (an earlier pending timer for it wins)."""
        loop = asyncio.get_running_loop()
        existing = self._timers.get(key)
        if existing is not None and existing.when() <= loop.time() + delay:
            return
        if existing is not None:
            existing.cancel()
        self._timers[key] = loop.call_later(delay, self._fire, key)

    def _fire(self, key: Key) -> None:
        self._timers.pop(key, None)
        self.add(key)

    def forget(self, key: Key) -> None:
        """The object is gone: drop its retries and backoff."""
        self._failures.pop(key, None)
        handle = self._timers.pop(key, None)
        if handle is not None:
            handle.cancel()

    def _spawn(self, index: int) -> asyncio.Task[None]:
        task = asyncio.create_task(self._work(), name=f"reconcile-worker-{index}")
        task.add_done_callback(functools.partial(self._worker_ended, index))
        return task

    def _worker_ended(self, index: int, task: asyncio.Task[None]) -> None:
        """Supervision: a worker only ends when stop() cancels it; any other end is replaced."""
        if self._stopping:
            return
        error = None if task.cancelled() else task.exception()
        logger.error(
            "reconcile worker %d ended (%s); starting a new one",
            index,
            "cancelled" if error is None else repr(error),
            exc_info=error,
        )
        if self._metrics is not None:
            self._metrics.worker_restarts.inc()
        self._tasks[index] = self._spawn(index)

    async def _work(self) -> None:
        while True:
            key = await self._queue.get()
            self._take(key)
            finished = False
            try:
                await self._reconcile_once(key)
                finished = True
            finally:
                self._release(key, finished=finished)

    async def _reconcile_once(self, key: Key) -> None:
        """Run one reconcile and act on its outcome; raises only when this worker is cancelled."""
        try:
            await self._reconcile(key)
        except Requeue as exc:
            delay = self._retry(key, exc.delay)
            logger.info("%s/%s: will retry in %.0fs: %s", *key, delay, exc)
        except StopRetrying as exc:
            self._failures.pop(key, None)
            logger.warning("%s/%s: not retried until it changes: %s", *key, exc)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # stop(), or someone cancelling this worker: supervision decides
            # Not a cancellation of this worker but one escaping from inside the reconcile (a
            # cancelled inner task): a failure like any other.
            delay = self._retry(key, UNEXPECTED_FAILURE_DELAY)
            logger.exception("%s/%s: reconcile was cancelled from inside; retrying in %.0fs", *key, delay)
        except BaseException:
            # Anything at all, even a BaseException such as SystemExit from a library: letting it
            # out would end this worker, and enough of them would end all reconciling.
            delay = self._retry(key, UNEXPECTED_FAILURE_DELAY)
            logger.exception("%s/%s: reconcile failed unexpectedly; retrying in %.0fs", *key, delay)
        else:
            self._failures.pop(key, None)

    def _retry(self, key: Key, base: float) -> float:
        failures = self._failures.get(key, 0) + 1
        self._failures[key] = failures
        delay = backoff(base, failures, self._max_backoff)
        if self._metrics is not None:
            self._metrics.queue_retries.inc()
        self.add_after(key, delay)
        return delay

    def _take(self, key: Key) -> None:
        self._waiting.pop(key, None)
        self._oldest_waiting_since = next(iter(self._waiting.values()), None)
        self._running[key] = self._clock()

    def _release(self, key: Key, *, finished: bool) -> None:
        self._running.pop(key, None)
        if finished:
            self._last_finished = self._clock()
        if key in self._waiting:
            self._queue.put_nowait(key)  # an event arrived while it ran
        elif not finished and not self._stopping:
            self.add(key)  # the worker was cancelled mid-reconcile, not by stop(): the work is not done
        if not self._waiting and not self._running:
            self.idle.set()
