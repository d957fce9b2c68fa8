"""The seed tutorial's ``POST /predict`` contract, extended to batches.

One image: ``{"inputs": [[...28 floats...] x 28]}`` → ``{"prediction", "probability", "latency"}``.
A batch: ``{"inputs": [image, ...]}`` → ``{"predictions": [int, ...], "probabilities": [float, ...],
"latency"}``, where ``probabilities[i]`` is the probability of ``predictions[i]``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mnist_server.decoding import Batch, JsonBody, images_from_json, require
from mnist_server.model import Probabilities

FIELD = "inputs"
HINT = 'send {"inputs": <28x28 floats in [0, 1]>} or {"inputs": [<28x28>, ...]}'


def parse_request(body: JsonBody, max_batch: int) -> Batch:
    value = require(body.value, FIELD, HINT)
    return images_from_json(value, FIELD, max_batch, body.mentions_booleans, body.mentions_strings)


def response(probabilities: Probabilities, single: bool, latency: float) -> dict[str, Any]:
    digits = probabilities.argmax(axis=1)
    confidence = probabilities[np.arange(len(digits)), digits]
    if single:
        return {"prediction": int(digits[0]), "probability": float(confidence[0]), "latency": latency}
    return {"predictions": digits.tolist(), "probabilities": confidence.tolist(), "latency": latency}
