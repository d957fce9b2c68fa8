"""An in-memory work queue of MnistModel keys, with the semantics of client-go's workqueue.

Why not kopf's own create/update/resume handlers: they persist progress and a diff base in the
object's annotations, which is a write per change and per restart. Watch events only *trigger*
work here; the work itself reads the watch caches and writes only real differences.

- a key is queued at most once, however many events arrive for it;
- a key is never reconciled by two workers at once; events during a reconcile queue it again;
- failures retry with a per-key exponential backoff (kopf.TemporaryError's delay is the base),
  kopf.PermanentError waits for the next event.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import kopf

logger = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, name)
Reconcile = Callable[[Key], Awaitable[None]]

MAX_BACKOFF = 300.0


class WorkQueue:
    def __init__(self, reconcile: Reconcile, *, workers: int = 4, max_backoff: float = MAX_BACKOFF) -> None:
        self._reconcile = reconcile
        self._workers = workers
        self._max_backoff = max_backoff
        self._queue: asyncio.Queue[Key] = asyncio.Queue()
        self._dirty: set[Key] = set()
        self._processing: set[Key] = set()
        self._failures: dict[Key, int] = {}
        self._timers: dict[Key, asyncio.TimerHandle] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self.idle = asyncio.Event()  # set whenever nothing is queued or running (for tests, benchmarks)
        self.idle.set()

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._worker(), name=f"reconcile-worker-{i}") for i in range(self._workers)
        ]

    async def stop(self) -> None:
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    def __len__(self) -> int:
        return len(self._dirty)

    def add(self, key: Key) -> None:
        if key in self._dirty:
            return
        self._dirty.add(key)
        self.idle.clear()
        if key not in self._processing:
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

    async def _worker(self) -> None:
        while True:
            key = await self._queue.get()
            self._dirty.discard(key)
            self._processing.add(key)
            try:
                await self._reconcile(key)
            except kopf.TemporaryError as exc:
                failures = self._failures.get(key, 0) + 1
                self._failures[key] = failures
                base = float(exc.delay) if exc.delay is not None else 1.0
                delay = min(base * 2 ** (failures - 1), self._max_backoff)
                logger.info("%s/%s: will retry in %.0fs: %s", *key, delay, exc)
                self.add_after(key, delay)
            except kopf.PermanentError as exc:
                self._failures.pop(key, None)
                logger.warning("%s/%s: not retried until it changes: %s", *key, exc)
            except Exception:
                failures = self._failures.get(key, 0) + 1
                self._failures[key] = failures
                delay = min(2.0**failures, self._max_backoff)
                logger.exception("%s/%s: reconcile failed unexpectedly; retrying in %.0fs", *key, delay)
                self.add_after(key, delay)
            else:
                self._failures.pop(key, None)
            finally:
                self._processing.discard(key)
                if key in self._dirty:
                    self._queue.put_nowait(key)
                if not self._dirty and not self._processing:
                    self.idle.set()
