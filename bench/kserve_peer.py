"""The KServe peer: KServe's Python model server (Open Inference Protocol v2) on the same SavedModel.

A small custom ``kserve.Model``, written the way KServe's documentation shows custom predictors:
load in ``load()``, a synchronous ``predict`` that reads the v2 input as NumPy and returns an
``InferResponse``. The TensorFlow call is the same compiled serving signature our server's
TensorFlow backend uses, so the comparison is of the serving stack, not of the model.

Runs in its own virtualenv (kserve pins many packages); started by ``bench/run.py``:
``python bench/kserve_peer.py --model_dir DIR --http_port PORT --model_name mnist``.
Not part of the project's package: it is benchmark scaffolding, kept out of lint's strict typing.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

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
        import tensorflow as tf

        self._loaded = tf.saved_model.load(self.model_dir)
        self._serve = self._loaded.signatures["serving_default"]
        self._serve(images=np.zeros((1, 28, 28), np.float32))  # warm up before reporting ready
        self.ready = True
        return self.ready

    def predict(self, payload: InferRequest, headers: dict[str, str] | None = None) -> InferResponse:
        images = payload.inputs[0].as_numpy().astype(np.float32, copy=False).reshape(-1, 28, 28)
        probabilities = self._serve(images=images)["probabilities"].numpy()
        output = InferOutput(name="probabilities", shape=list(probabilities.shape), datatype="FP32")
        output.set_data_from_numpy(probabilities, binary_data=False)
        return InferResponse(
            model_name=self.name, infer_outputs=[output], response_id=payload.id or generate_uuid()
        )


def main() -> None:
    parser = argparse.ArgumentParser(parents=[kserve.model_server.parser])
    parser.add_argument("--model_dir", required=True, help="the SavedModel version directory")
    args: Any = parser.parse_args()
    model = MnistModel(args.model_name, args.model_dir)
    kserve.ModelServer().start([model])


if __name__ == "__main__":
    main()
