"""The micro-batcher: answers never mix, large requests split, failures stay in their batch.

The fake model returns, for each image, the id written into its first pixel, so any mix-up of
rows between callers shows as a wrong id. Batch composition is made deterministic by a gate: the
first batch blocks inside the model until the test has queued everything it wants batched next.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from mnist_server.batching import (
    LOOP_REQUEST_IMAGES,
    BatcherClosedError,
    BatcherOverloadedError,
    BatchingConfig,
    BatchOutputError,
    BatchTimeoutError,
    MicroBatcher,
)

WAIT = 10.0  # generous deadline for anything that should happen promptly


def images_with_ids(ids: list[int]) -> np.ndarray:
    images = np.zeros((len(ids), 28, 28), dtype=np.float32)
    images[:, 0, 0] = ids
    return images


class FakeModel:
    """Echo each image's id; record batch sizes; optionally block or fail on marked images."""

    POISON = -1.0
    GATE = -2.0

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.gate = threading.Event()
        self.entered_gate = threading.Event()
        self.lock = threading.Lock()

    def __call__(self, images: np.ndarray) -> np.ndarray:
        ids = images[:, 0, 0]
        with self.lock:
            self.batches.append([int(i) for i in ids])
        if (ids == self.GATE).any():
            self.entered_gate.set()
            assert self.gate.wait(WAIT), "the test never opened the gate"
        if (ids == self.POISON).any():
            raise RuntimeError("poisoned batch")
        return np.stack([ids, ids * 2], axis=1)

    def sizes(self) -> list[int]:
        return [len(batch) for batch in self.batches]


def wait_until_queued(batcher: MicroBatcher, count: int) -> None:
    deadline = threading.Event()
    for _ in range(int(WAIT / 0.01)):
        if batcher.queued_images >= count:
            return
        deadline.wait(0.01)
    raise AssertionError(f"only {batcher.queued_images} of {count} images were queued in time")


@pytest.fixture
def model() -> FakeModel:
    return FakeModel()


def hold_batcher(batcher: MicroBatcher, model: FakeModel) -> list[object]:
    """Occupy the batching thread with a gate batch; the returned futures belong to that batch."""
    futures: list[object] = list(batcher.submit(images_with_ids([int(FakeModel.GATE)])))
    assert model.entered_gate.wait(WAIT)
    return futures


def test_concurrent_requests_each_get_their_own_answer(model: FakeModel) -> None:
    batcher = MicroBatcher(model, BatchingConfig(max_batch_size=16))
    try:
        hold_batcher(batcher, model)
        ids = list(range(1, 41))
        with ThreadPoolExecutor(max_workers=len(ids)) as pool:
            results = [pool.submit(batcher.predict, images_with_ids([i]), WAIT) for i in ids]
            wait_until_queued(batcher, len(ids))
            model.gate.set()
            answers = [r.result(WAIT) for r in results]
        for request_id, answer in zip(ids, answers, strict=True):
            np.testing.assert_array_equal(answer, [[request_id, 2 * request_id]])
        # After the gate batch, the 40 queued requests ran as full batches of 16, 16 and 8.
        assert model.sizes() == [1, 16, 16, 8]
    finally:
        batcher.close()


def test_multi_image_requests_keep_their_rows_in_order(model: FakeModel) -> None:
    batcher = MicroBatcher(model, BatchingConfig(max_batch_size=32))
    try:
        hold_batcher(batcher, model)
        requests = [list(range(100 * k, 100 * k + n)) for k, n in enumerate([3, 1, 7, 5, 2], start=1)]
        with ThreadPoolExecutor(max_workers=len(requests)) as pool:
            results = [pool.submit(batcher.predict, images_with_ids(ids), WAIT) for ids in requests]
            wait_until_queued(batcher, sum(map(len, requests)))
            model.gate.set()
            for ids, result in zip(requests, results, strict=True):
                np.testing.assert_array_equal(result.result(WAIT)[:, 0], ids)
        assert model.sizes() == [1, 18]
    finally:
        batcher.close()


def test_request_larger_than_max_batch_is_split(model: FakeModel) -> None:
    batcher = MicroBatcher(model, BatchingConfig(max_batch_size=4))
    try:
        answer = batcher.predict(images_with_ids(list(range(1, 11))), WAIT)
        np.testing.assert_array_equal(answer[:, 0], list(range(1, 11)))
        assert answer.shape == (10, 2)
        assert model.batches == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10]]
    finally:
        batcher.close()


def test_split_chunks_share_batches_with_other_requests(model: FakeModel) -> None:
    batcher = MicroBatcher(model, BatchingConfig(max_batch_size=4))
    try:
        hold_batcher(batcher, model)
        big = batcher.submit(images_with_ids([1, 2, 3, 4, 5, 6]))  # chunks [1..4], [5, 6]
        small = batcher.submit(images_with_ids([7, 8]))
        model.gate.set()
        assert [f.result(WAIT)[:, 0].tolist() for f in big] == [[1, 2, 3, 4], [5, 6]]
        assert small[0].result(WAIT)[:, 0].tolist() == [7, 8]
        assert model.batches[1:] == [[1, 2, 3, 4], [5, 6, 7, 8]]
    finally:
        batcher.close()


def test_a_failing_batch_fails_only_its_own_callers(model: FakeModel) -> None:
    batcher = MicroBatcher(model, BatchingConfig(max_batch_size=2))
    try:
        hold_batcher(batcher, model)
        poisoned = batcher.submit(images_with_ids([int(FakeModel.POISON)]))
        neighbour = batcher.submit(images_with_ids([5]))  # same batch as the poison
        later = batcher.submit(images_with_ids([6, 7]))  # does not fit: next batch
        model.gate.set()
        for future in (*poisoned, *neighbour):
            with pytest.raises(RuntimeError, match="poisoned batch"):
                future.result(WAIT)
        assert later[0].result(WAIT)[:, 0].tolist() == [6, 7]
        # The thread survived the failure and keeps serving.
        assert batcher.predict(images_with_ids([8]), WAIT)[0, 0] == 8
    finally:
        batcher.close()


def test_a_slow_batch_times_out_its_callers_and_the_batcher_recovers(model: FakeModel) -> None:
    batcher = MicroBatcher(model, BatchingConfig(max_batch_size=8))
    try:
        (slow,) = hold_batcher(batcher, model)  # a slow batch in the batching thread
        # Its caller gives up; a caller queued behind it gives up and is dropped, not computed.
        with pytest.raises(TimeoutError):
            slow.result(0.05)  # type: ignore[attr-defined]
        with pytest.raises(BatchTimeoutError, match="no answer for 1 image"):
            batcher.predict(images_with_ids([99]), timeout_s=0.05)
        model.gate.set()
        np.testing.assert_array_equal(batcher.predict(images_with_ids([3, 4]), WAIT)[:, 0], [3, 4])
        assert [99] not in model.batches
    finally:
        batcher.close()


def test_a_lone_request_runs_in_its_own_thread(model: FakeModel) -> None:
    threads: list[str] = []

    def recording(images: np.ndarray) -> np.ndarray:
        threads.append(threading.current_thread().name)
        return model(images)

    batcher = MicroBatcher(recording, BatchingConfig(max_batch_size=8))
    try:
        np.testing.assert_array_equal(batcher.predict(images_with_ids([5, 6]), WAIT)[:, 0], [5, 6])
        assert threads == [threading.current_thread().name]  # no hand-off to the batching thread
        # Larger than a batch: split, and queued for the batching thread as before.
        batcher.predict(images_with_ids(list(range(10))), WAIT)
        assert threads[1:] == ["micro-batcher", "micro-batcher"]
    finally:
        batcher.close()


def test_requests_arriving_during_a_callers_model_call_share_the_next_batch(model: FakeModel) -> None:
    batcher = MicroBatcher(model, BatchingConfig(max_batch_size=8))
    try:
        with ThreadPoolExecutor(max_workers=6) as pool:
            first = pool.submit(batcher.predict, images_with_ids([int(FakeModel.GATE)]), WAIT)
            assert model.entered_gate.wait(WAIT)  # running in its caller's thread
            others = [pool.submit(batcher.predict, images_with_ids([i]), WAIT) for i in range(1, 6)]
            wait_until_queued(batcher, 5)
            model.gate.set()
            assert first.result(WAIT)[0, 0] == FakeModel.GATE
            assert [f.result(WAIT)[0, 0] for f in others] == [1, 2, 3, 4, 5]
        assert model.sizes() == [1, 5]  # one model call at a time; the five waited and went together
    finally:
        batcher.close()


def test_a_slow_call_in_its_callers_thread_holds_back_only_the_callers_queued_behind(
    model: FakeModel,
) -> None:
    batcher = MicroBatcher(model, BatchingConfig(max_batch_size=8))
    try:
        with ThreadPoolExecutor(max_workers=1) as pool:
            slow = pool.submit(batcher.predict, images_with_ids([int(FakeModel.GATE)]), 0.05)
            assert model.entered_gate.wait(WAIT)
            with pytest.raises(BatchTimeoutError):
                batcher.predict(images_with_ids([99]), timeout_s=0.05)
            model.gate.set()
            # The caller that ran the model gets its answer (a running call cannot be abandoned).
            assert slow.result(WAIT)[0, 0] == FakeModel.GATE
        assert batcher.predict(images_with_ids([7]), WAIT)[0, 0] == 7
        assert [99] not in model.batches
    finally:
        batcher.close()


def test_running_for_measures_the_model_call_in_progress_whichever_thread_makes_it(
    model: FakeModel,
) -> None:
    batcher = MicroBatcher(model, BatchingConfig(max_batch_size=8))
    try:
        assert batcher.running_for() == 0.0
        with ThreadPoolExecutor(max_workers=1) as pool:
            inline = pool.submit(batcher.predict, images_with_ids([int(FakeModel.GATE)]), WAIT)
            assert model.entered_gate.wait(WAIT)
            threading.Event().wait(0.05)
            assert batcher.running_for() >= 0.05
            model.gate.set()
            inline.result(WAIT)
        assert batcher.running_for() == 0.0
        model.gate.clear()
        model.entered_gate.clear()
        (held,) = batcher.submit(images_with_ids([int(FakeModel.GATE)]))  # in the batching thread
        assert model.entered_gate.wait(WAIT)
        threading.Event().wait(0.05)
        assert batcher.running_for() >= 0.05
        model.gate.set()
        held.result(WAIT)
        assert batcher.running_for() == 0.0
    finally:
        batcher.close()


def test_wrong_number_of_output_rows_is_an_error_for_that_batch() -> None:
    batcher = MicroBatcher(
        lambda images: np.zeros((1, 2), dtype=np.float32), BatchingConfig(max_batch_size=8)
    )
    try:
        with pytest.raises(BatchOutputError, match="1 rows for a batch of 3"):
            batcher.predict(images_with_ids([1, 2, 3]), WAIT)
    finally:
        batcher.close()


def test_queue_is_bounded(model: FakeModel) -> None:
    batcher = MicroBatcher(model, BatchingConfig(max_batch_size=4, max_queue_images=8))
    try:
        hold_batcher(batcher, model)
        accepted = batcher.submit(images_with_ids(list(range(1, 9))))
        with pytest.raises(BatcherOverloadedError, match="8 images are already waiting"):
            batcher.submit(images_with_ids([9]))
        model.gate.set()
        assert [f.result(WAIT).shape[0] for f in accepted] == [4, 4]
        # Once drained, a request larger than the whole queue is still accepted on its own.
        assert batcher.predict(images_with_ids(list(range(20))), WAIT).shape == (20, 2)
    finally:
        batcher.close()


def test_full_batch_runs_without_waiting_for_max_wait(model: FakeModel) -> None:
    # Only "the batch is full" can release these two requests before max_wait (10 s) runs out.
    batcher = MicroBatcher(model, BatchingConfig(max_batch_size=2, max_wait_s=10.0))
    try:
        first = batcher.submit(images_with_ids([1]))
        second = batcher.submit(images_with_ids([2]))
        assert first[0].result(5.0)[0, 0] == 1
        assert second[0].result(5.0)[0, 0] == 2
        assert model.batches == [[1, 2]]
    finally:
        batcher.close()


def test_max_wait_gathers_requests_that_arrive_later(model: FakeModel) -> None:
    batcher = MicroBatcher(model, BatchingConfig(max_batch_size=3, max_wait_s=10.0))
    try:
        futures = [batcher.submit(images_with_ids([i]))[0] for i in (1, 2, 3)]
        assert [f.result(WAIT)[0, 0] for f in futures] == [1, 2, 3]
        # Without max_wait the first request would have run alone as soon as it was queued.
        assert model.batches == [[1, 2, 3]]
    finally:
        batcher.close()


def test_close_finishes_queued_work_then_refuses_new(model: FakeModel) -> None:
    batcher = MicroBatcher(model, BatchingConfig(max_batch_size=4))
    hold_batcher(batcher, model)
    queued = batcher.submit(images_with_ids([1, 2]))
    closer = threading.Thread(target=batcher.close, kwargs={"timeout_s": WAIT})
    closer.start()
    model.gate.set()
    closer.join(WAIT)
    assert not closer.is_alive()
    assert queued[0].result(0)[:, 0].tolist() == [1, 2]
    with pytest.raises(BatcherClosedError):
        batcher.submit(images_with_ids([3]))


def test_close_fails_work_a_stuck_model_never_reached(model: FakeModel) -> None:
    batcher = MicroBatcher(model, BatchingConfig(max_batch_size=1))
    hold_batcher(batcher, model)
    stranded = batcher.submit(images_with_ids([1]))
    batcher.close(timeout_s=0.05)
    with pytest.raises(BatcherClosedError, match="shut down first"):
        stranded[0].result(WAIT)
    model.gate.set()


def test_empty_request_is_refused(model: FakeModel) -> None:
    batcher = MicroBatcher(model)
    with pytest.raises(ValueError, match="no images"):
        batcher.submit(np.zeros((0, 28, 28), dtype=np.float32))


def test_observer_sees_every_model_call(model: FakeModel) -> None:
    seen: list[int] = []
    batcher = MicroBatcher(model, BatchingConfig(max_batch_size=4), on_batch=lambda n, _s: seen.append(n))
    try:
        batcher.predict(images_with_ids(list(range(6))), WAIT)
        assert seen == [4, 2]
    finally:
        batcher.close()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_batch_size": 0}, "max_batch_size must be at least 1"),
        ({"max_wait_s": -0.001}, "max_wait_s must be within"),
        ({"max_batch_size": 64, "max_queue_images": 10}, "max_queue_images"),
        ({"timeout_s": 0}, "timeout_s must be positive"),
    ],
)
def test_config_is_validated(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BatchingConfig(**kwargs)  # type: ignore[arg-type]


# --- coroutines: gathered per turn of their event loop -------------------------------------


class ThreadRecordingModel(FakeModel):
    """A FakeModel that also records which thread made each call."""

    def __init__(self) -> None:
        super().__init__()
        self.threads: list[int] = []

    def __call__(self, images: np.ndarray) -> np.ndarray:
        self.threads.append(threading.get_ident())
        return super().__call__(images)


def test_coroutines_asking_in_one_turn_share_one_call_in_the_loops_own_thread() -> None:
    model = ThreadRecordingModel()
    batcher = MicroBatcher(model, BatchingConfig(max_batch_size=8))

    async def scenario() -> list[np.ndarray]:
        return list(await asyncio.gather(*(batcher.predict_async(images_with_ids([i])) for i in range(5))))

    answers = asyncio.run(scenario())
    assert [int(answer[0, 0]) for answer in answers] == [0, 1, 2, 3, 4]
    assert model.batches == [[0, 1, 2, 3, 4]]
    assert model.threads == [threading.get_ident()]  # no hand-off to another thread


def test_a_turns_requests_beyond_a_batch_run_in_the_next_turns() -> None:
    model = FakeModel()
    batcher = MicroBatcher(model, BatchingConfig(max_batch_size=4))

    async def scenario() -> list[np.ndarray]:
        requests = [batcher.predict_async(images_with_ids([3 * i, 3 * i + 1, 3 * i + 2])) for i in range(3)]
        return list(await asyncio.gather(*requests))

    answers = asyncio.run(scenario())
    assert [answer[:, 0].tolist() for answer in answers] == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    assert model.sizes() == [3, 3, 3]  # whole requests only: 3 + 3 does not fit in 4


def test_a_lone_coroutine_is_answered_in_the_next_turn_in_the_loops_thread() -> None:
    model = ThreadRecordingModel()
    batcher = MicroBatcher(model)

    async def scenario() -> tuple[bool, np.ndarray]:
        request = asyncio.ensure_future(batcher.predict_async(images_with_ids([7])))
        await asyncio.sleep(0)  # this turn: the request is gathered, not yet run
        gathered = not request.done() and model.batches == []
        return gathered, await request

    gathered, answer = asyncio.run(scenario())
    assert gathered
    assert int(answer[0, 0]) == 7
    assert model.batches == [[7]] and model.threads == [threading.get_ident()]


def test_coroutines_queue_for_the_thread_while_it_runs_the_model_and_can_time_out(model: FakeModel) -> None:
    batcher = MicroBatcher(model, BatchingConfig(max_batch_size=8))
    held = hold_batcher(batcher, model)

    async def scenario() -> tuple[list[np.ndarray], BaseException | None]:
        waiting = asyncio.gather(*(batcher.predict_async(images_with_ids([i])) for i in (1, 2)))
        late: BaseException | None = None
        try:
            await batcher.predict_async(images_with_ids([3]), timeout_s=0.05)
        except BatchTimeoutError as exc:
            late = exc
        model.gate.set()
        return list(await waiting), late

    answers, late = asyncio.run(scenario())
    assert isinstance(late, BatchTimeoutError)
    assert [int(answer[0, 0]) for answer in answers] == [1, 2]
    assert held[0].result(WAIT)[0, 0] == FakeModel.GATE  # type: ignore[attr-defined]
    assert model.batches[1] == [1, 2]  # queued together, one batch in the thread
    assert 3 not in [i for batch in model.batches for i in batch]  # the expired one was dropped


def test_a_failing_call_on_the_loop_fails_its_turns_callers_only() -> None:
    model = FakeModel()
    batcher = MicroBatcher(model)

    async def scenario() -> list[object]:
        ids = [1, int(FakeModel.POISON), 3]
        first = await asyncio.gather(
            *(batcher.predict_async(images_with_ids([i])) for i in ids), return_exceptions=True
        )
        return [*first, await batcher.predict_async(images_with_ids([2]))]

    *poisoned, healthy = asyncio.run(scenario())
    assert all(isinstance(answer, RuntimeError) for answer in poisoned)
    assert int(healthy[0, 0]) == 2  # type: ignore[index]


def test_a_closed_batcher_refuses_coroutines(model: FakeModel) -> None:
    batcher = MicroBatcher(model)
    batcher.close()
    with pytest.raises(BatcherClosedError):
        asyncio.run(batcher.predict_async(images_with_ids([1])))


def test_a_coroutine_s_request_of_many_images_goes_to_the_batching_thread() -> None:
    model = ThreadRecordingModel()
    batcher = MicroBatcher(model, BatchingConfig(max_batch_size=64))
    many = list(range(LOOP_REQUEST_IMAGES + 1))

    async def scenario() -> tuple[np.ndarray, np.ndarray]:
        large = await batcher.predict_async(images_with_ids(many))
        # The answer can arrive before the batching thread has let go of the model; a request
        # then would rightly queue for that thread.
        while batcher._busy:
            await asyncio.sleep(0.001)
        return large, await batcher.predict_async(images_with_ids([1]))

    large, small = asyncio.run(scenario())
    assert large[:, 0].tolist() == many and int(small[0, 0]) == 1
    assert model.threads[0] != threading.get_ident()  # the batching thread's call
    assert model.threads[1] == threading.get_ident()  # the loop's own
