"""The tutorial-style baseline: Flask's own server and Keras ``model.predict`` on every request.

Written for the benchmark to stand for the seed tutorial's server: it loads the same SavedModel
(Keras 3 loads a SavedModel for inference through ``keras.layers.TFSMLayer``), parses the JSON
with ``request.get_json()`` and ``np.array``, and calls ``model.predict`` once per request - which
builds a data pipeline and steps through it every time. Same request and response as our
``/predict``: ``{"inputs": <28x28 or n x 28x28>}`` -> ``{"prediction", "probability", "latency"}``.

``python bench/baseline_server.py --model-dir DIR --port PORT``
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
from flask import Flask, jsonify, request
from flask.typing import ResponseReturnValue


def build_app(model_dir: str) -> Flask:
    inputs = keras.Input(shape=(28, 28), name="images")
    outputs = keras.layers.TFSMLayer(model_dir, call_endpoint="serving_default")(inputs)
    model = keras.Model(inputs, outputs["probabilities"])
    app = Flask(__name__)

    @app.post("/predict")
    def predict() -> ResponseReturnValue:
        started = time.time()
        data = request.get_json()
        images = np.array(data["inputs"], dtype=np.float32).reshape(-1, 28, 28)
        probabilities = model.predict(images, verbose=0)
        answers = [{"prediction": int(np.argmax(p)), "probability": float(np.max(p))} for p in probabilities]
        latency = time.time() - started
        if len(answers) == 1:
            return jsonify({**answers[0], "latency": latency})
        return jsonify({"predictions": answers, "latency": latency})

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    args = parser.parse_args()
    build_app(args.model_dir).run(host=args.host, port=args.port, threaded=True)


if __name__ == "__main__":
    main()
