"""The model behind the server: a narrow interface and its TensorFlow SavedModel implementation.

Routes only see ``Model``: tests use a fake, and other backends (ONNX Runtime) or a
micro-batching wrapper can sit behind the same five members later.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import numpy.typing as npt

from mnist_server.errors import ModelLoadError, NotReadyError
from mnist_server.repository import IMAGE_SHAPE, INPUT_NAME, NUM_CLASSES, OUTPUT_NAME, SIGNATURE_NAME

if TYPE_CHECKING:
    from mnist_server.repository import ModelVersion

log = logging.getLogger(__name__)

Images = npt.NDArray[np.float32]  # (n, 28, 28), values in [0, 1]
Probabilities = npt.NDArray[np.float32]  # (n, 10), rows sum to 1


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


def warm_up(predict: Any) -> None:
    """One prediction on a blank image: proves the model answers with the contract's shape."""
    probabilities = np.asarray(predict(np.zeros((1, *IMAGE_SHAPE), np.float32)))
    if probabilities.shape != (1, NUM_CLASSES) or not np.all(np.isfinite(probabilities)):
        raise ModelLoadError(
            f"warm-up prediction returned shape {probabilities.shape}; "
            f"expected (1, {NUM_CLASSES}) finite probabilities"
        )


class SavedModel:
    """A model version from the repository, run through its ``serving_default`` concrete function.

    The concrete function is traced once at export with a ``[None, 28, 28]`` signature, so
    every call runs the same graph whatever the batch size: no per-request tracing, and TF ops
    release the GIL, so request threads can run predictions concurrently.
    """

    platform = "tensorflow_savedmodel"

    def __init__(self, model_version: ModelVersion) -> None:
        self._model_version = model_version
        self._metadata: Mapping[str, Any] = {}
        self._state = LoadState.PENDING
        self._message = "model not loaded yet"
        self._loaded: Any = None  # keeps the trackable object (and its variables) alive
        self._serve: Any = None
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return self._model_version.name

    @property
    def version(self) -> str:
        return self._model_version.version

    @property
    def metadata(self) -> Mapping[str, Any]:
        return self._metadata

    @property
    def state(self) -> LoadState:
        return self._state

    @property
    def state_message(self) -> str:
        return self._message

    @property
    def ready(self) -> bool:
        return self._state is LoadState.READY

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
        import tensorflow as tf

        path = self._model_version.path
        self._metadata = self._model_version.metadata()
        loaded = tf.saved_model.load(str(path))
        if SIGNATURE_NAME not in loaded.signatures:
            raise ModelLoadError(f"{path}: no {SIGNATURE_NAME!r} signature")
        serve = loaded.signatures[SIGNATURE_NAME]
        outputs = serve.structured_outputs
        if OUTPUT_NAME not in outputs:
            raise ModelLoadError(f"{path}: signature outputs {sorted(outputs)} lack {OUTPUT_NAME!r}")
        self._loaded, self._serve = loaded, serve
        warm_up(self._run)
        log.info("loaded model %s version %s from %s", self.name, self.version, path)

    def _run(self, images: Images) -> Probabilities:
        result = self._serve(**{INPUT_NAME: images})[OUTPUT_NAME]
        return np.asarray(result.numpy(), dtype=np.float32)

    def predict(self, images: Images) -> Probabilities:
        if self._state is not LoadState.READY:
            raise NotReadyError(self._message)
        return self._run(images)


def load_in_background(model: Model, on_ready: Callable[[], None] | None = None) -> threading.Thread:
    """Load without blocking the worker, so liveness answers and the arbiter sees heartbeats.

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
