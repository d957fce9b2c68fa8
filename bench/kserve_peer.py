"""The KServe peer: KServe's Python model server (Open Inference Protocol v2) on the same model.

A small custom ``kserve.Model``, written the way KServe's documentation shows custom predictors:
load in ``load()``, a synchronous ``predict`` that reads the v2 input as NumPy and returns an
``InferResponse``. The model is the version's ``model.onnx`` on ONNX Runtime, with the session
options our server's onnx backend uses (all graph optimisations, intra-op threads = the CPUs, no
spinning), so the comparison is of the serving stack alone, not of the model or its runtime.

Runs in its own virtualenv (kserve pins many packages); started by ``bench/run.py``:
``python bench/kserve_peer.py --model_dir DIR --http_port PORT --model_name mnist``.
Not part of the project's package: it is benchmark scaffolding, kept out of lint's strict typing.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import kserve
import numpy as np
from kserve import InferOutput, InferRequest, InferResponse
from kserve.utils.utils import generate_uuid


class MnistModel(kserve.Model):  # type: ignore[misc]
    def __init__(self, name: str, model_dir: str) -> None:
        super().__init__(name)
        self.model_dir = model_dir
        self.load()

    def load(self) -> bool:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = len(os.sched_getaffinity(0))
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        path = Path(self.model_dir) / "model.onnx"
        self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self._predict(np.zeros((1, 28, 28), np.float32))  # warm up before reporting ready
        self.ready = True
        return self.ready

    def _predict(self, images: np.ndarray) -> np.ndarray:
        (probabilities,) = self._session.run(["probabilities"], {"images": images})
        return probabilities  # type: ignore[no-any-return]

    def predict(self, payload: InferRequest, headers: dict[str, str] | None = None) -> InferResponse:
        images = payload.inputs[0].as_numpy().astype(np.float32, copy=False).reshape(-1, 28, 28)
        probabilities = self._predict(np.ascontiguousarray(images))
        output = InferOutput(name="probabilities", shape=list(probabilities.shape), datatype="FP32")
        output.set_data_from_numpy(probabilities, binary_data=False)
        return InferResponse(
            model_name=self.name, infer_outputs=[output], response_id=payload.id or generate_uuid()
        )


def main() -> None:
    parser = argparse.ArgumentParser(parents=[kserve.model_server.parser])
    parser.add_argument("--model_dir", required=True, help="the model version directory (with model.onnx)")
    args: Any = parser.parse_args()
    model = MnistModel(args.model_name, args.model_dir)
    kserve.ModelServer().start([model])


if __name__ == "__main__":
    main()
