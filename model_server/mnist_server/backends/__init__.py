"""Inference backends: what turns a float32 ``[n, 28, 28]`` batch into ``[n, 10]`` probabilities.

- ``tensorflow`` (default): the SavedModel's ``serving_default`` concrete function, traced once
  at export for any batch size; needs TensorFlow (~500 MB resident).
- ``onnx``: ONNX Runtime on ``model.onnx`` beside the SavedModel in the version directory
  (made from the SavedModel by :func:`mnist_server.backends.onnx_export.export_onnx`). It never
  imports TensorFlow, so a server on it is far smaller, and its per-call overhead is far lower.

Each runner is built once per process, is safe to call from several threads, and builds no
graph per call. Loading and warm-up are the model wrapper's business, not the runner's.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt

BACKENDS = ("tensorflow", "onnx")
AUTO = "auto"
ONNX_FILE = "model.onnx"
PLATFORMS = {"tensorflow": "tensorflow_savedmodel", "onnx": "onnxruntime_onnx"}

FloatArray = npt.NDArray[np.float32]


class BackendError(Exception):
    """A backend cannot serve this model version (missing file, missing package, bad graph)."""


class Runner(Protocol):
    @property
    def platform(self) -> str:
        """The Open Inference Protocol platform string (``tensorflow_savedmodel``, ``onnxruntime_onnx``)."""
        ...

    def __call__(self, images: FloatArray) -> FloatArray:
        """Probabilities ``[n, 10]`` for images ``[n, 28, 28]`` (float32, C-contiguous)."""
        ...


def open_runner(backend: str, version_dir: Path, threads: int | None = None) -> Runner:
    """The ``backend``'s runner for the model version in ``version_dir``.

    ``threads`` caps the backend's intra-op threads (None: the backend's own default, usually
    one per core). With several worker processes on few cores, fewer threads per process avoids
    oversubscription.
    """
    if backend == "tensorflow":
        from mnist_server.backends.tensorflow import TensorFlowRunner

        return TensorFlowRunner(version_dir, threads)
    if backend == "onnx":
        from mnist_server.backends.onnx import OnnxRunner

        return OnnxRunner(version_dir / ONNX_FILE, threads)
    raise BackendError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")


def choose_backend(requested: str, version_dir: Path) -> str:
    """``requested``, or for ``auto``: onnx when the version has model.onnx and ONNX Runtime is
    installed (far less overhead per call, no TensorFlow in memory), else tensorflow."""
    if requested != AUTO:
        return requested
    if (version_dir / ONNX_FILE).is_file() and importlib.util.find_spec("onnxruntime") is not None:
        return "onnx"
    return "tensorflow"


def default_threads(workers: int) -> int:
    """Backend threads per worker process: the CPUs this process may use, shared out between the
    workers, so that workers x threads does not oversubscribe the cores."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return max(1, cpus // max(1, workers))
