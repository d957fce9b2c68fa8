"""The TensorFlow backend: the SavedModel's serving signature, called directly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mnist_server.backends import BackendError, FloatArray
from mnist_server.repository import INPUT_NAME, OUTPUT_NAME, SIGNATURE_NAME


class TensorFlowRunner:
    """Calls the ``serving_default`` concrete function: a graph traced once at export with a
    ``[None, 28, 28]`` input, so any batch size runs the same graph with no retracing, and its
    ops release the GIL while they compute."""

    platform = "tensorflow_savedmodel"

    def __init__(self, path: Path, threads: int | None = None) -> None:
        import tensorflow as tf

        if threads is not None:
            _limit_threads(tf, threads)
        try:
            self._loaded = tf.saved_model.load(str(path))  # keeps the variables alive
        except (OSError, ValueError) as exc:
            raise BackendError(f"{path}: cannot load the SavedModel: {exc}") from exc
        if SIGNATURE_NAME not in self._loaded.signatures:
            raise BackendError(f"{path}: no {SIGNATURE_NAME!r} signature")
        self._serve = self._loaded.signatures[SIGNATURE_NAME]
        outputs = self._serve.structured_outputs
        if OUTPUT_NAME not in outputs:
            raise BackendError(f"{path}: signature outputs {sorted(outputs)} lack {OUTPUT_NAME!r}")

    def __call__(self, images: FloatArray) -> FloatArray:
        result = self._serve(**{INPUT_NAME: images})[OUTPUT_NAME]
        return np.asarray(result.numpy(), dtype=np.float32)


def _limit_threads(tf: Any, threads: int) -> None:
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        # TensorFlow was already initialised in this process (e.g. by a test): its pools are
        # fixed now, and the caller's limit is only an optimisation.
        pass
