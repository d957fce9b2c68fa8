"""The Open Inference Protocol's binary tensor data extension on /v2/models/<name>/infer: a
JSON header of Inference-Header-Content-Length bytes, then the tensor's raw bytes. Over the fake
model, whose predicted digit is the image's mean pixel x 10."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from flask.testing import FlaskClient
from server_support import fake_digits, image_with_digit
from test_server_app import v2_request

from mnist_server.app import INLINE_DECODE_BYTES
from mnist_server.settings import Settings

V2 = "/v2/models/mnist/infer"
BINARY_HEADER = "Inference-Header-Content-Length"  # spelled here as clients spell it


def binary_request(
    images: np.ndarray, dtype: str = "<f4", **tensor_extra: Any
) -> tuple[bytes, dict[str, str]]:
    raw = np.ascontiguousarray(images, dtype=dtype).tobytes()
    tensor = {
        "name": "images",
        "shape": list(images.shape),
        "datatype": "FP32" if dtype == "<f4" else "FP64",
        "parameters": {"binary_data_size": len(raw)},
        **tensor_extra,
    }
    header = json.dumps({"inputs": [tensor], "id": "bin-1"}).encode()
    return header + raw, {BINARY_HEADER: str(len(header))}


def post_binary(client: FlaskClient, body: bytes, headers: dict[str, str]) -> Any:
    return client.post(V2, data=body, headers=headers, content_type="application/octet-stream")


def reason_of(response: Any, status: int) -> str:
    assert response.status_code == status, response.get_data(as_text=True)
    reason: str = response.get_json()["reason"]
    return reason


@pytest.mark.parametrize("dtype", ["<f4", "<f8"])
def test_binary_tensor_data_is_read_like_json_data(server_client: FlaskClient, dtype: str) -> None:
    images = np.stack([image_with_digit(d) for d in (3, 8, 1)]).astype(np.float32)
    body, headers = binary_request(images, dtype)
    response = post_binary(server_client, body, headers)
    assert response.status_code == 200, response.get_data(as_text=True)
    answer = response.get_json()
    assert answer["id"] == "bin-1"
    output = answer["outputs"][0]
    assert output["shape"] == [3, 10]
    assert np.reshape(output["data"], (3, 10)).argmax(axis=1).tolist() == fake_digits(images).tolist()


def test_binary_header_length_must_fit_the_body(server_client: FlaskClient) -> None:
    body, _ = binary_request(np.zeros((1, 28, 28), np.float32))
    for value in ("abc", "-5", str(len(body) + 1), "\u00b2"):
        response = post_binary(server_client, body, {BINARY_HEADER: value})
        assert reason_of(response, 400) == "bad_request"
        assert BINARY_HEADER in response.get_json()["error"]


def test_binary_size_must_match_the_bytes_that_follow(server_client: FlaskClient) -> None:
    body, headers = binary_request(np.zeros((1, 28, 28), np.float32))
    assert reason_of(post_binary(server_client, body[:-4], headers), 400) == "wrong_shape"
    assert reason_of(post_binary(server_client, body + b"\0" * 4, headers), 400) == "wrong_shape"


def test_binary_bytes_must_be_whole_values_and_match_the_shape(server_client: FlaskClient) -> None:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "images",
                    "shape": [1, 28, 28],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": 6},
                }
            ]
        }
    ).encode()
    response = post_binary(server_client, header + b"\0" * 6, {BINARY_HEADER: str(len(header))})
    assert reason_of(response, 400) == "wrong_shape"
    assert "whole number" in response.get_json()["error"]
    body, headers = binary_request(np.zeros((2, 28, 28), np.float32))
    wrong_shape = body.replace(b"[2, 28, 28]", b"[3, 28, 28]")
    assert reason_of(post_binary(server_client, wrong_shape, headers), 400) == "wrong_shape"


def test_binary_and_json_data_cannot_be_mixed(server_client: FlaskClient) -> None:
    body, headers = binary_request(np.zeros((1, 28, 28), np.float32), data=[0.0] * 784)
    assert reason_of(post_binary(server_client, body, headers), 400) == "bad_request"
    # Bytes after the header, but the tensor announces none.
    plain = json.dumps(
        {"inputs": [{"name": "images", "shape": [1, 28, 28], "datatype": "FP32", "data": [0.0] * 784}]}
    ).encode()
    response = post_binary(server_client, plain + b"\0" * 8, {BINARY_HEADER: str(len(plain))})
    assert reason_of(response, 400) == "bad_request"
    # Binary announced, but no header saying where the JSON ends.
    tensor = {
        "name": "images",
        "shape": [1, 28, 28],
        "datatype": "FP32",
        "parameters": {"binary_data_size": 3136},
    }
    response = server_client.post(V2, json={"inputs": [tensor]})
    assert reason_of(response, 400) == "bad_request"
    assert BINARY_HEADER in response.get_json()["error"]


def test_binary_pixels_are_validated_like_json_pixels(server_client: FlaskClient) -> None:
    images = np.zeros((1, 28, 28), np.float32)
    images[0, 3, 3] = np.nan
    assert reason_of(post_binary(server_client, *binary_request(images)), 400) == "non_finite"
    images[0, 3, 3] = 2.0
    assert reason_of(post_binary(server_client, *binary_request(images)), 400) == "out_of_range"


def test_a_large_binary_tensor_is_decoded_on_the_loop_and_large_json_on_a_thread(
    server_make_app: Callable[..., Any], server_fake_model: Any, server_settings: Settings
) -> None:
    """Decoding a binary tensor is a copy whatever its size: only its JSON header counts towards
    the size past which a body is decoded on a thread. The same images as JSON go there."""
    settings = dataclasses.replace(server_settings, max_batch=64, max_body_bytes=1 << 20)
    app = server_make_app(server_fake_model, settings)
    images = np.zeros((64, 28, 28), np.float32)
    body, headers = binary_request(images)
    assert len(body) > INLINE_DECODE_BYTES
    with app.test_client() as client:
        assert post_binary(client, body, headers).status_code == 200
        assert app._json_decoder is None  # no decoding thread was needed
        assert client.post(V2, json=v2_request(images)).status_code == 200
        assert app._json_decoder is not None
