"""TensorFlow Serving's REST API: ``:predict`` and model status.

As in TF Serving, the row format (``instances``: a list of images, or of ``{"images": image}``
objects) answers ``{"predictions": [[10 probabilities], ...]}`` and the columnar format
(``inputs``: a batch, or ``{"images": batch}``) answers ``{"outputs": [[...], ...]}``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mnist_server.decoding import JsonBody, check_images, numeric_array
from mnist_server.errors import InvalidInputError, Reason
from mnist_server.model import Images, LoadState, Model, Probabilities
from mnist_server.repository import INPUT_NAME, SIGNATURE_NAME

_EXPECTED = "[n, 28, 28] (a list of images)"
_STATES = {
    LoadState.PENDING: "START",
    LoadState.LOADING: "LOADING",
    LoadState.READY: "AVAILABLE",
    LoadState.FAILED: "END",
}


@dataclass(frozen=True)
class PredictRequest:
    images: Images
    row_format: bool


def parse_predict_request(body: JsonBody, max_batch: int) -> PredictRequest:
    signature = body.value.get("signature_name", SIGNATURE_NAME)
    if signature != SIGNATURE_NAME:
        raise InvalidInputError(f"unknown signature_name {signature!r}; the model has {SIGNATURE_NAME!r}")
    has_instances, has_inputs = "instances" in body.value, "inputs" in body.value
    if has_instances == has_inputs:
        raise InvalidInputError(
            "send exactly one of 'instances' (row format) or 'inputs' (columnar format)",
            Reason.BAD_REQUEST if has_instances else Reason.MISSING_FIELD,
        )
    if has_instances:
        field, value = "instances", _instances(body.value["instances"])
    else:
        field, value = "inputs", _named_input(body.value["inputs"], "inputs")
    array = numeric_array(value, field, body.mentions_booleans, body.may_hold_strings_in(value))
    return PredictRequest(check_images(array, field, max_batch, expected=_EXPECTED), row_format=has_instances)


def predict_response(probabilities: Probabilities, row_format: bool) -> dict[str, Any]:
    return {"predictions" if row_format else "outputs": probabilities.tolist()}


def model_status(model: Model) -> dict[str, Any]:
    failed = model.state is LoadState.FAILED
    return {
        "model_version_status": [
            {
                "version": model.version,
                "state": _STATES[model.state],
                "status": {
                    "error_code": "UNKNOWN" if failed else "OK",
                    "error_message": model.state_message if failed else "",
                },
            }
        ]
    }


def _instances(instances: Any) -> Any:
    if not isinstance(instances, list):
        raise InvalidInputError("'instances' must be a list of images", Reason.WRONG_SHAPE)
    objects = [isinstance(instance, dict) for instance in instances]
    if not any(objects):
        return instances
    if not all(objects):
        raise InvalidInputError("'instances' mixes objects and arrays; use one form", Reason.WRONG_SHAPE)
    return [_named_input(instance, "instances[]") for instance in instances]


def _named_input(value: Any, field: str) -> Any:
    if not isinstance(value, dict):
        return value
    if set(value) != {INPUT_NAME}:
        raise InvalidInputError(
            f"{field} names inputs {sorted(value)}; the model has one input, {INPUT_NAME!r}",
            Reason.BAD_REQUEST,
        )
    return value[INPUT_NAME]
