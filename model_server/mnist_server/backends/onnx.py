"""The ONNX Runtime backend: a lean server that never imports TensorFlow."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mnist_server.backends import BackendError, FloatArray
from mnist_server.repository import INPUT_NAME, NUM_CLASSES, OUTPUT_NAME


class OnnxRunner:
    """An ONNX Runtime session on ``model.onnx`` (input ``images``, output ``probabilities``).

    ``InferenceSession.run`` is thread-safe and releases the GIL while it computes. Graph
    optimisations (batch norm folded into convolutions, fused activations) run once, at load.
    """

    platform = "onnxruntime_onnx"

    def __init__(self, path: Path, threads: int | None = None, spin: bool = False) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise BackendError(
                "the onnx backend needs ONNX Runtime: pip install 'mnist-operator[onnx]'"
            ) from None
        if not path.is_file():
            raise BackendError(
                f"{path}: no ONNX model; create it from the SavedModel with "
                f"'python -m mnist_server.backends.onnx_export {path.parent}'"
            )
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads is not None:
            options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # By default idle pool threads sleep instead of spinning: in a server the request threads
        # need the cores between model calls, and spinning made a batch of one 3x slower on busy
        # cores. (Spinning can win for back-to-back calls with nothing else to run.)
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        try:
            self._session: Any = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT raises its own untyped Fail/InvalidGraph exceptions
            raise BackendError(f"{path}: ONNX Runtime cannot load it: {exc}") from exc
        inputs = [i.name for i in self._session.get_inputs()]
        outputs = [o.name for o in self._session.get_outputs()]
        if inputs != [INPUT_NAME] or OUTPUT_NAME not in outputs:
            raise BackendError(
                f"{path}: expected input {INPUT_NAME!r} and output {OUTPUT_NAME!r}, "
                f"found inputs {inputs} and outputs {outputs}"
            )
        self._outputs = [OUTPUT_NAME]

    def __call__(self, images: FloatArray) -> FloatArray:
        (probabilities,) = self._session.run(self._outputs, {INPUT_NAME: images})
        if probabilities.shape != (images.shape[0], NUM_CLASSES):
            raise BackendError(f"the ONNX model returned shape {probabilities.shape}")
        return np.asarray(probabilities, dtype=np.float32)
