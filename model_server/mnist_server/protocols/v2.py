"""Open Inference Protocol v2 (KServe, Triton, MLServer), JSON over REST.

The model has one input (``images``: FP32 ``[-1, 28, 28]``) and one output (``probabilities``:
FP32 ``[-1, 10]``). Requests may send FP32 or FP64 data, flat (row-major) or nested; the input's
name is not checked, since there is only one.

The binary tensor data extension is supported for the input: a JSON header of
``Inference-Header-Content-Length`` bytes, then the tensor's raw little-endian bytes, announced
by ``"parameters": {"binary_data_size": N}`` in place of ``data``. It spares the client and the
server the text formatting and parsing of every pixel. Outputs are always JSON.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from mnist_server.decoding import JsonBody, check_images, numeric_array, parse_json, require
from mnist_server.errors import InvalidInputError, Reason
from mnist_server.model import Images, Model, Probabilities
from mnist_server.repository import IMAGE_SHAPE, INPUT_NAME, NUM_CLASSES, OUTPUT_NAME

SERVER_NAME = "mnist-server"
ACCEPTED_DATATYPES = ("FP32", "FP64")
BINARY_HEADER = "Inference-Header-Content-Length"
_BINARY_DTYPES: dict[str, np.dtype[Any]] = {"FP32": np.dtype("<f4"), "FP64": np.dtype("<f8")}
_EXPECTED_SHAPE = f"[n, {IMAGE_SHAPE[0]}, {IMAGE_SHAPE[1]}]"


@dataclass(frozen=True)
class InferRequest:
    id: str
    images: Images


def server_metadata(server_version: str) -> dict[str, Any]:
    return {"name": SERVER_NAME, "version": server_version, "extensions": ["binary_tensor_data"]}


def model_metadata(model: Model) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "name": model.name,
        "versions": [model.version],
        "platform": model.platform,
        "inputs": [{"name": INPUT_NAME, "datatype": "FP32", "shape": [-1, *IMAGE_SHAPE]}],
        "outputs": [{"name": OUTPUT_NAME, "datatype": "FP32", "shape": [-1, NUM_CLASSES]}],
    }
    # A version fetched from storage: the digest of the archive it was unpacked from, verified
    # before it was loaded (the one a MnistModel pins), so a client can prove which bytes answer.
    source = getattr(model, "source", None)
    if source is not None:
        metadata["parameters"] = {"source": source.kind, "sha256": source.sha256}
    return metadata


def is_length(value: str) -> bool:
    """ASCII digits only: ``str.isdigit`` also accepts digits ``int`` refuses (``"²"``)."""
    return value.isascii() and value.isdigit()


def parse_binary_infer_request(raw: bytes, header_length: str, max_batch: int) -> InferRequest:
    """An infer request in the binary extension's body: ``header_length`` (the value of the
    ``Inference-Header-Content-Length`` header) bytes of JSON, then the input's raw bytes."""
    if not is_length(header_length) or int(header_length) > len(raw):
        raise InvalidInputError(
            f"{BINARY_HEADER} {header_length!r:.40} must be the JSON header's length in bytes "
            f"(the body has {len(raw)})",
            Reason.BAD_REQUEST,
        )
    split = int(header_length)
    return parse_infer_request(parse_json(raw[:split]), max_batch, raw[split:])


def parse_infer_request(body: JsonBody, max_batch: int, binary: bytes | None = None) -> InferRequest:
    request_id = body.value.get("id")
    if request_id is None:
        request_id = str(uuid.uuid4())
    elif not isinstance(request_id, str):
        raise InvalidInputError("'id' must be a string", Reason.BAD_REQUEST)
    _check_requested_outputs(body.value.get("outputs"))
    inputs = require(body.value, "inputs", 'send {"inputs": [{"name", "shape", "datatype", "data"}]}')
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise InvalidInputError(
            f"'inputs' must be a list of exactly one tensor object (the model has one input, {INPUT_NAME!r})",
            Reason.WRONG_SHAPE,
        )
    tensor: dict[str, Any] = inputs[0]
    binary_size = _binary_size(tensor, binary)
    fields = (
        ("name", "shape", "datatype") if binary_size is not None else ("name", "shape", "datatype", "data")
    )
    for field in fields:
        require(tensor, field, f"each input needs name, shape, datatype and data; {field!r} is missing")
    datatype = tensor["datatype"]
    if datatype not in ACCEPTED_DATATYPES:
        raise InvalidInputError(
            f"inputs[0].datatype {datatype!r} is not supported; send {' or '.join(ACCEPTED_DATATYPES)}",
            Reason.WRONG_DTYPE,
        )
    shape = _shape(tensor["shape"])
    if binary_size is not None:
        array = _binary_array(binary or b"", binary_size, datatype)
    else:
        data = tensor["data"]
        array = numeric_array(data, "inputs[0].data", body.mentions_booleans, body.may_hold_strings_in(data))
    needed = math.prod(shape)
    if array.size != needed:
        raise InvalidInputError(
            f"inputs[0].data holds {array.size} values but shape {shape} needs {needed}", Reason.WRONG_SHAPE
        )
    images = check_images(array.reshape(shape), "inputs[0]", max_batch, expected=_EXPECTED_SHAPE)
    return InferRequest(id=request_id, images=images)


def infer_response(model: Model, request_id: str, probabilities: Probabilities) -> dict[str, Any]:
    return {
        "model_name": model.name,
        "model_version": model.version,
        "id": request_id,
        "outputs": [
            {
                "name": OUTPUT_NAME,
                "shape": list(probabilities.shape),
                "datatype": "FP32",
                "data": probabilities.ravel().tolist(),
            }
        ],
    }


def _binary_size(tensor: dict[str, Any], binary: bytes | None) -> int | None:
    """The input's ``binary_data_size``, or None for JSON data; checked against the body."""
    parameters = tensor.get("parameters")
    size = parameters.get("binary_data_size") if isinstance(parameters, dict) else None
    if size is None:
        if binary:
            raise InvalidInputError(
                f"the body has {len(binary)} bytes after the JSON header but inputs[0] has no "
                "parameters.binary_data_size",
                Reason.BAD_REQUEST,
            )
        return None
    if binary is None:
        raise InvalidInputError(
            f"inputs[0] announces binary data; send the {BINARY_HEADER} header with the JSON header's length",
            Reason.BAD_REQUEST,
        )
    if not isinstance(size, int) or isinstance(size, bool) or size != len(binary):
        raise InvalidInputError(
            f"inputs[0].parameters.binary_data_size is {size!r:.40} but {len(binary)} bytes follow "
            "the header",
            Reason.WRONG_SHAPE,
        )
    if "data" in tensor:
        raise InvalidInputError("inputs[0] has both data and binary data; send one", Reason.BAD_REQUEST)
    return size


def _binary_array(binary: bytes, size: int, datatype: str) -> npt.NDArray[Any]:
    dtype = _BINARY_DTYPES[datatype]
    if size % dtype.itemsize:
        raise InvalidInputError(
            f"{size} bytes of binary data are not a whole number of {datatype} values", Reason.WRONG_SHAPE
        )
    return np.frombuffer(binary, dtype=dtype)


def _shape(value: Any) -> list[int]:
    if not isinstance(value, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in value):
        raise InvalidInputError(
            f"inputs[0].shape must be a list of integers, got {value!r:.80}", Reason.WRONG_SHAPE
        )
    if len(value) != 1 + len(IMAGE_SHAPE) or tuple(value[1:]) != IMAGE_SHAPE or value[0] < 0:
        raise InvalidInputError(
            f"inputs[0].shape {value} is not supported; expected {_EXPECTED_SHAPE}", Reason.WRONG_SHAPE
        )
    return value


def _check_requested_outputs(outputs: Any) -> None:
    if outputs is None:
        return
    if not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs):
        raise InvalidInputError("'outputs' must be a list of objects with a 'name'", Reason.BAD_REQUEST)
    for output in outputs:
        if output.get("name") != OUTPUT_NAME:
            raise InvalidInputError(
                f"unknown output {output.get('name')!r}; the model has one output, {OUTPUT_NAME!r}",
                Reason.BAD_REQUEST,
            )
        parameters = output.get("parameters") or {}
        if isinstance(parameters, dict) and parameters.get("binary_data"):
            raise InvalidInputError(
                "the binary data extension is not supported; omit binary_data", Reason.BAD_REQUEST
            )
