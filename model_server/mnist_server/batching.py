"""Dynamic micro-batching: many request threads share one model call.

Why: a model call has a fixed cost (framework dispatch, thread hand-offs, memory set-up) that
dwarfs the arithmetic for one 28x28 image; the same call on 64 images costs barely more than on
one. Request threads therefore hand their images to one batching thread, which runs the model
once for everything that is waiting and hands each caller back its own rows.

Batching is greedy: the thread takes what is queued the moment it is free, so a lone request is
never held back, and under load batches grow by themselves while the previous batch runs.
``max_wait_s`` (default 0) can additionally hold an incomplete batch open for more arrivals.

A request that finds the model idle and nothing queued (and no wait configured) runs the model
in its own thread: handing it to the batching thread and back would cost two thread wake-ups,
about a quarter of a single-image request's CPU. Requests arriving meanwhile queue, and the
batching thread takes them when that call ends; only one model call runs at a time either way.

Callers are threads (:meth:`MicroBatcher.predict`, blocking) or coroutines on an event loop
(:meth:`MicroBatcher.predict_async`). Coroutines of one loop that ask in the same turn of the
loop are gathered, and the next turn runs them as one model call in the loop's own thread when
the model is idle: the backends release the GIL while they compute, so this blocks the loop for
the call (a millisecond or two) but hands nothing to another thread. Measured on two cores, a
hand-off per request (to a decoding thread, to the batching thread, back to the loop) cost more
than the model: each waits for the GIL that the loop holds, and one worker answered 2,000
single-image requests a second rather than 3,300. When the model is busy in the batching
thread, the gathered requests queue for it, and it hands a loop all the answers of one batch
in one wake-up.

A request larger than ``max_batch_size`` is split into chunks that may ride in different
batches; its answer is reassembled in order. A failing model call fails only the callers whose
images were in that batch; a caller that gives up (timeout) has its queued chunks dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]
PredictFn = Callable[[FloatArray], FloatArray]
# Called once per model call with (images in the batch, seconds the call took).
BatchObserver = Callable[[int, float], None]


class BatchingError(Exception):
    """The batcher could not get an answer for a request (the message says why)."""


class BatcherOverloadedError(BatchingError):
    """Too many images are already waiting: shed load instead of queueing without bound."""


class BatcherClosedError(BatchingError):
    """The batcher is shutting down and takes no more work."""


class BatchTimeoutError(BatchingError):
    """The answer did not arrive in time (a slow batch, or a long queue ahead of it)."""


class BatchOutputError(BatchingError):
    """The model returned a different number of rows than it was given images."""


@dataclass(frozen=True)
class BatchingConfig:
    max_batch_size: int = 64
    max_wait_s: float = 0.0
    # Bounds memory and queueing delay; a single request larger than this is still accepted
    # when nothing else is waiting, so no request size is refused outright.
    max_queue_images: int = 4096
    timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {self.max_batch_size}")
        if not 0.0 <= self.max_wait_s <= 10.0:
            raise ValueError(f"max_wait_s must be within [0, 10] seconds, got {self.max_wait_s}")
        if self.max_queue_images < self.max_batch_size:
            raise ValueError(
                f"max_queue_images ({self.max_queue_images}) must be at least max_batch_size "
                f"({self.max_batch_size})"
            )
        if self.timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {self.timeout_s}")


# Coroutines' requests of at most this many images are gathered on their event loop; larger ones
# go to the batching thread. For a few images the model call is shorter than a hand-off, but a
# 64-image call would block the loop (probes, refusals, other requests' bodies) for ~5 ms, and
# for a batch the hand-off is a small share: the throughput of 64-image requests was the same
# either way (7,400 images/s, tutorial JSON at 4 clients on two cores).
LOOP_REQUEST_IMAGES = 8

_QUEUED, _RUNNING, _DONE, _CANCELLED = range(4)


class Pending:
    """The answer to one queued chunk of a request, filled in by the batching thread.

    Lighter than ``concurrent.futures.Future`` (no condition variable, no waiter list): a lock
    that is held from creation until the answer is in, which costs one futex wake per chunk.
    """

    __slots__ = (
        "_done",
        "_error",
        "_result",
        "enqueued",
        "future",
        "images",
        "size",
        "state",
        "timeout_s",
        "timer",
    )

    def __init__(
        self,
        images: FloatArray,
        enqueued: float,
        future: asyncio.Future[FloatArray] | None = None,
        timeout_s: float = 0.0,
    ) -> None:
        self.images = images
        # A coroutine's bound on waiting once its chunk is queued for the batching thread.
        self.timeout_s = timeout_s
        self.timer: asyncio.TimerHandle | None = None
        self.size = int(images.shape[0])
        self.enqueued = enqueued
        self.state = _QUEUED  # changed only under the batcher's lock
        # A coroutine's answer: set on its event loop (see _settle), not through the lock.
        self.future = future
        self._result: FloatArray | None = None
        self._error: BaseException | None = None
        self._done = threading.Lock()
        self._done.acquire()

    def result(self, timeout: float | None = None) -> FloatArray:
        """The rows for this chunk; raises the batch's error, or TimeoutError after ``timeout``."""
        if not self._done.acquire(timeout=-1 if timeout is None else max(0.0, timeout)):
            raise TimeoutError("the answer has not arrived yet")
        self._done.release()  # stays readable: result() may be called again
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result

    def done(self) -> bool:
        return self.state == _DONE

    def _finish(self, result: FloatArray | None = None, error: BaseException | None = None) -> None:
        self._result, self._error, self.state = result, error, _DONE
        self._done.release()


def _finish_all(finished: list[tuple[Pending, FloatArray | None, BaseException | None]]) -> None:
    """Answer the chunks of one batch: threads through their locks, coroutines through one call
    into each event loop (a single wake-up for all the coroutines of a batch)."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Pending, FloatArray | None, BaseException | None]]]
    by_loop = {}
    for item in finished:
        chunk, result, error = item
        chunk._finish(result, error)
        future = chunk.future
        if future is not None:
            by_loop.setdefault(future.get_loop(), []).append(item)
    running = asyncio._get_running_loop()
    for loop, items in by_loop.items():
        if loop is running:  # a batch run in the loop's own thread (MicroBatcher._flush)
            _settle(items)
            continue
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting any more
            loop.call_soon_threadsafe(_settle, items)


def _settle(items: list[tuple[Pending, FloatArray | None, BaseException | None]]) -> None:
    for chunk, result, error in items:
        future = chunk.future
        if chunk.timer is not None:
            chunk.timer.cancel()
        if future is None or future.done():  # its caller gave up (timeout)
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]


class MicroBatcher:
    """Run ``predict`` on batches gathered from concurrent :meth:`predict` callers.

    ``predict`` maps float32 ``[n, ...]`` to ``[n, ...]`` row by row. The batching thread starts
    on first use, so a batcher built before a pre-fork server forks its workers is safe as long
    as nothing was submitted before the fork.
    """

    def __init__(
        self,
        predict: PredictFn,
        config: BatchingConfig | None = None,
        on_batch: BatchObserver | None = None,
        name: str = "micro-batcher",
    ) -> None:
        self._predict = predict
        self.config = config or BatchingConfig()
        self._on_batch = on_batch
        self._name = name
        self._cond = threading.Condition()
        self._queue: deque[Pending] = deque()
        self._queued_images = 0
        self._busy = False  # a model call is running (in the batching thread or a caller's)
        self._call_started: float | None = None  # perf_counter() when that call began
        self._closed = False
        self._thread: threading.Thread | None = None
        # Coroutines' requests gathered in the current turn of each event loop (predict_async).
        self._gathering: dict[asyncio.AbstractEventLoop, list[Pending]] = {}

    # --- request side ---------------------------------------------------------------------

    def predict(self, images: FloatArray, timeout_s: float | None = None) -> FloatArray:
        """Rows of ``predict(images)``, computed within shared batches; blocks the caller."""
        if self._claim_idle_model(int(images.shape[0])):
            return self._run_inline(images)
        chunks = self.submit(images)
        timeout_s = self.config.timeout_s if timeout_s is None else timeout_s
        if len(chunks) == 1:  # the common case, without the bookkeeping below
            try:
                return chunks[0].result(timeout_s)
            except TimeoutError:
                self._cancel(chunks)
                raise BatchTimeoutError(
                    f"no answer for {images.shape[0]} image(s) in {timeout_s:g} s"
                ) from None
        deadline = time.monotonic() + timeout_s
        parts = []
        try:
            for chunk in chunks:
                parts.append(chunk.result(deadline - time.monotonic()))
        except TimeoutError:
            self._cancel(chunks)
            raise BatchTimeoutError(f"no answer for {images.shape[0]} image(s) in {timeout_s:g} s") from None
        return np.concatenate(parts)

    async def predict_async(self, images: FloatArray, timeout_s: float | None = None) -> FloatArray:
        """:meth:`predict` for a coroutine: gathered with the other requests of this turn of the
        event loop into one model call, in the loop's thread if the model is idle (see the module's
        docstring), else by the batching thread while the loop goes on."""
        loop = asyncio.get_running_loop()
        count = int(images.shape[0])
        if count == 0:
            raise ValueError("no images to predict")
        timeout_s = self.config.timeout_s if timeout_s is None else timeout_s
        if count > min(LOOP_REQUEST_IMAGES, self.config.max_batch_size) or self.config.max_wait_s > 0:
            return await self._predict_in_thread(images, loop, timeout_s)
        # A lone request waits for the next turn too: the server's loop (uvloop) does not show
        # whether other work is ready. The extra turn costs nothing measurable: p50 0.77 ms at
        # concurrency 1, as with asyncio's loop answering a lone request in the same turn.
        if self._closed:
            raise BatcherClosedError("the model server is shutting down")
        chunk = Pending(images, time.monotonic(), loop.create_future(), timeout_s)
        gathering = self._gathering.get(loop)
        if gathering is None:
            gathering = self._gathering[loop] = []
            loop.call_soon(self._flush, loop)
        gathering.append(chunk)
        assert chunk.future is not None
        return await chunk.future

    async def _predict_in_thread(
        self, images: FloatArray, loop: asyncio.AbstractEventLoop, timeout_s: float
    ) -> FloatArray:
        """A request of many images, or with a batching wait configured: the batching thread runs
        it (in chunks of at most a batch, which may ride in different batches)."""
        chunks = self.submit(images, loop)
        futures = [chunk.future for chunk in chunks if chunk.future is not None]
        try:
            parts = await asyncio.wait_for(asyncio.gather(*futures), timeout_s)
        except TimeoutError:
            self._cancel(chunks)
            raise BatchTimeoutError(f"no answer for {images.shape[0]} image(s) in {timeout_s:g} s") from None
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        """On ``loop``, a turn after the first of them asked: one model call for the requests
        gathered so far (at most a batch; the rest in the next turn, so that probes and other
        requests are served between model calls)."""
        gathering = self._gathering.pop(loop, [])
        batch: list[Pending] = []
        size = 0
        while gathering and size + gathering[0].size <= self.config.max_batch_size:
            chunk = gathering.pop(0)
            assert chunk.future is not None
            if not chunk.future.done():  # else its caller has gone (cancelled)
                batch.append(chunk)
                size += chunk.size
        if gathering:
            self._gathering[loop] = gathering
            loop.call_soon(self._flush, loop)
        if not batch:
            return
        try:
            if self._claim_idle_model(size):
                for chunk in batch:
                    chunk.state = _RUNNING
                try:
                    self._execute(batch)
                finally:
                    self._release_model()
                return
            self._enqueue(batch, size)
        except BatchingError as exc:  # closed, or too much queued already
            _settle([(chunk, None, exc) for chunk in batch])
            return
        # Only queued work can wait long: bound it (the inline call above answers at once).
        for chunk in batch:
            chunk.timer = loop.call_at(loop.time() + chunk.timeout_s, self._expire, chunk)

    def _expire(self, chunk: Pending) -> None:
        future = chunk.future
        if future is not None and not future.done():
            self._cancel([chunk])
            future.set_exception(
                BatchTimeoutError(f"no answer for {chunk.size} image(s) in {chunk.timeout_s:g} s")
            )

    def _claim_idle_model(self, count: int) -> bool:
        if self.config.max_wait_s > 0 or count > self.config.max_batch_size:
            return False
        with self._cond:
            if self._closed:
                raise BatcherClosedError("the model server is shutting down")
            if self._busy or self._queue:
                return False
            self._busy = True
            return True

    def _run_inline(self, images: FloatArray) -> FloatArray:
        """The model on ``images`` in the caller's thread; the caller holds the model (``_busy``)."""
        try:
            return self._call_model(images)
        finally:
            self._release_model()

    def _call_model(self, images: FloatArray) -> FloatArray:
        """One model call, checked and observed, whichever thread makes it."""
        started = self._call_started = time.perf_counter()
        try:
            output = self._predict(images)
        finally:
            self._call_started = None
            if self._on_batch is not None:
                self._on_batch(int(images.shape[0]), time.perf_counter() - started)
        if output.shape[0] != images.shape[0]:
            raise BatchOutputError(
                f"the model returned {output.shape[0]} rows for a batch of {images.shape[0]} images"
            )
        return output

    def _release_model(self) -> None:
        with self._cond:
            self._busy = False
            if self._queue:
                self._start_locked()
                self._cond.notify()

    def submit(self, images: FloatArray, loop: asyncio.AbstractEventLoop | None = None) -> list[Pending]:
        """Queue ``images`` (split into chunks of at most ``max_batch_size``); one answer per chunk,
        also as a future on ``loop`` when given."""
        count = int(images.shape[0])
        if count == 0:
            raise ValueError("no images to predict")
        limit = self.config.max_batch_size
        now = time.monotonic()
        chunks = [
            Pending(images[start : start + limit], now, None if loop is None else loop.create_future())
            for start in range(0, count, limit)
        ]
        self._enqueue(chunks, count)
        return chunks

    def _enqueue(self, chunks: list[Pending], count: int) -> None:
        """Queue ``chunks`` (``count`` images) for the batching thread."""
        with self._cond:
            if self._closed:
                raise BatcherClosedError("the model server is shutting down")
            if self._queued_images and self._queued_images + count > self.config.max_queue_images:
                raise BatcherOverloadedError(
                    f"{self._queued_images} images are already waiting for the model "
                    f"(limit {self.config.max_queue_images}); retry later"
                )
            self._start_locked()
            self._queue.extend(chunks)
            self._queued_images += count
            self._cond.notify()

    def _cancel(self, chunks: list[Pending]) -> None:
        # Chunks still queued are dropped, not computed for a caller that has gone.
        with self._cond:
            for chunk in chunks:
                if chunk.state == _QUEUED:
                    chunk.state = _CANCELLED

    def running_for(self) -> float:
        """Seconds the model call in progress has been running (0 when the model is idle): a
        call far longer than usual means a wedged model, which no timeout can interrupt."""
        started = self._call_started
        return 0.0 if started is None else time.perf_counter() - started

    @property
    def queued_images(self) -> int:
        with self._cond:
            return self._queued_images

    def close(self, timeout_s: float = 10.0) -> None:
        """Refuse new work, let queued work finish (up to ``timeout_s``), fail what is left."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout_s)
        left: list[tuple[Pending, FloatArray | None, BaseException | None]] = []
        with self._cond:
            while self._queue:
                chunk = self._queue.popleft()
                if chunk.state == _QUEUED:
                    chunk.state = _RUNNING
                    left.append((chunk, None, BatcherClosedError("the model server shut down first")))
            self._queued_images = 0
        _finish_all(left)

    def _start_locked(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()

    # --- batching thread ------------------------------------------------------------------

    def _run(self) -> None:
        while (batch := self._next_batch()) is not None:
            try:
                if batch:
                    self._execute(batch)
            finally:
                self._release_model()

    def _next_batch(self) -> list[Pending] | None:
        """The next batch to run; None once closed and drained; [] if all taken were cancelled."""
        limit = self.config.max_batch_size
        with self._cond:
            while not self._queue or self._busy:
                if self._closed and not self._queue:
                    return None
                self._cond.wait()
            self._busy = True
            batch: list[Pending] = []
            size = self._take_locked(batch, 0, limit)
            if self.config.max_wait_s > 0 and size < limit:
                deadline = (batch[0].enqueued if batch else time.monotonic()) + self.config.max_wait_s
                while size < limit and not self._closed:
                    if self._queue:
                        before = size
                        size = self._take_locked(batch, size, limit)
                        if size == before and self._queue:
                            break  # the next chunk does not fit: run what we have
                        continue
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
            return batch

    def _take_locked(self, batch: list[Pending], size: int, limit: int) -> int:
        while self._queue and size + self._queue[0].size <= limit:
            chunk = self._queue.popleft()
            self._queued_images -= chunk.size
            if chunk.state == _QUEUED:  # else its caller gave up: skip the work
                chunk.state = _RUNNING
                batch.append(chunk)
                size += chunk.size
        return size

    def _execute(self, batch: list[Pending]) -> None:
        images = batch[0].images if len(batch) == 1 else np.concatenate([c.images for c in batch])
        try:
            output = self._call_model(images)
        except Exception as exc:
            _finish_all([(chunk, None, exc) for chunk in batch])
            return
        finished: list[tuple[Pending, FloatArray | None, BaseException | None]] = []
        offset = 0
        for chunk in batch:
            finished.append((chunk, output[offset : offset + chunk.size], None))
            offset += chunk.size
        _finish_all(finished)


__all__ = [
    "BatchOutputError",
    "BatchTimeoutError",
    "BatcherClosedError",
    "BatcherOverloadedError",
    "BatchingConfig",
    "BatchingError",
    "MicroBatcher",
    "Pending",
]
