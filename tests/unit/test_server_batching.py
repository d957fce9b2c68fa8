"""The server's fast path: the batched model behind the app, the backends it picks, and the v2
binary tensor extension.

The model tests use the session's tiny real model (``server_tiny_model_root``); the protocol
tests use the fake model, whose predicted digit is the image's mean pixel x 10.
"""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client import CollectorRegistry
from server_support import fake_digits, image_with_digit

from mnist_server.backends import choose_backend
from mnist_server.batching import BatcherClosedError, BatcherOverloadedError, BatchingConfig
from mnist_server.errors import NotReadyError, OverloadedError
from mnist_server.model import SavedModel
from mnist_server.repository import ModelVersion, resolve

V2 = "/v2/models/mnist/infer"
BINARY_HEADER = "Inference-Header-Content-Length"


def batched(root: Path, max_batch_size: int = 8, backend: str = "tensorflow") -> SavedModel:
    return SavedModel(
        resolve(root, "mnist", "1"), backend=backend, batching=BatchingConfig(max_batch_size=max_batch_size)
    )


def samples(registry: CollectorRegistry, name: str) -> float:
    return registry.get_sample_value(name) or 0.0


# --- the batched model ------------------------------------------------------------------------


def test_concurrent_requests_with_distinct_images_each_get_their_own_prediction(
    server_tiny_model_root: Path, server_make_app: Callable[..., Flask], server_registry: CollectorRegistry
) -> None:
    model = batched(server_tiny_model_root)
    model.load()
    app = server_make_app(model)
    images = np.random.default_rng(11).random((48, 28, 28), dtype=np.float32)
    expected = SavedModel(resolve(server_tiny_model_root, "mnist", "1"))
    expected.load()
    reference = expected.predict(images)

    def ask(index: int) -> list[float]:
        tensor = {
            "name": "images",
            "shape": [1, 28, 28],
            "datatype": "FP32",
            "data": images[index].ravel().tolist(),
        }
        response = app.test_client().post(V2, json={"inputs": [tensor]})
        assert response.status_code == 200, response.get_data(as_text=True)
        data: list[float] = response.get_json()["outputs"][0]["data"]
        return data

    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(ask, range(len(images))))
    for index, answer in enumerate(answers):
        np.testing.assert_allclose(answer, reference[index], rtol=1e-5, atol=1e-6, err_msg=f"image {index}")
    # Every image went through exactly one model call, whatever the batches were.
    assert samples(server_registry, "mnist_server_inference_batch_size_sum") == len(images)
    assert samples(server_registry, "mnist_server_inference_batch_size_count") <= len(images)
    model.close()


def test_each_model_call_is_observed_and_warm_ups_are_not(
    server_tiny_model_root: Path, server_make_app: Callable[..., Flask], server_registry: CollectorRegistry
) -> None:
    model = batched(server_tiny_model_root, max_batch_size=4)
    server_make_app(model)  # registers the metrics observer before the load, as the server does
    model.load()
    assert samples(server_registry, "mnist_server_inference_batch_size_count") == 0

    assert model.predict(np.zeros((10, 28, 28), np.float32)).shape == (10, 10)

    # One request of 10 images, split into model calls of 4, 4 and 2.
    assert samples(server_registry, "mnist_server_inference_batch_size_count") == 3
    assert samples(server_registry, "mnist_server_inference_batch_size_sum") == 10
    assert samples(server_registry, "mnist_server_inference_duration_seconds_count") == 3
    model.close()


def test_a_full_queue_is_a_503_overloaded_and_a_closing_batcher_is_not_ready(
    server_tiny_model_root: Path, server_make_app: Callable[..., Flask], monkeypatch: pytest.MonkeyPatch
) -> None:
    model = batched(server_tiny_model_root)
    model.load()
    client = server_make_app(model).test_client()

    def overloaded(images: np.ndarray, timeout_s: float | None = None) -> np.ndarray:
        raise BatcherOverloadedError(
            "4096 images are already waiting for the model (limit 4096); retry later"
        )

    monkeypatch.setattr(model._batcher, "predict", overloaded)
    with pytest.raises(OverloadedError):
        model.predict(np.zeros((1, 28, 28), np.float32))
    response = client.post("/predict", json={"inputs": np.zeros((28, 28)).tolist()})
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    assert response.get_json() == {
        "error": "4096 images are already waiting for the model (limit 4096); retry later",
        "reason": "overloaded",
    }

    def closed(images: np.ndarray, timeout_s: float | None = None) -> np.ndarray:
        raise BatcherClosedError("the model server is shutting down")

    monkeypatch.setattr(model._batcher, "predict", closed)
    with pytest.raises(NotReadyError, match="shutting down"):
        model.predict(np.zeros((1, 28, 28), np.float32))


def test_the_onnx_backend_serves_the_same_predictions_and_auto_prefers_it(
    server_tiny_model_root: Path, tmp_path: Path
) -> None:
    from mnist_server.backends.onnx_export import export_onnx

    version_dir = tmp_path / "mnist" / "1"
    shutil.copytree(server_tiny_model_root / "mnist" / "1", version_dir)
    assert choose_backend("auto", version_dir) == "tensorflow"
    export_onnx(version_dir)
    assert choose_backend("auto", version_dir) == "onnx"
    assert choose_backend("tensorflow", version_dir) == "tensorflow"

    model = SavedModel(ModelVersion("mnist", "1", version_dir), backend="auto", batching=BatchingConfig())
    assert model.platform == "tensorflow_savedmodel"  # nothing chosen before the load
    model.load()
    assert (model.backend, model.platform) == ("onnx", "onnxruntime_onnx")
    images = np.load(server_tiny_model_root / "reference-input.npy")
    expected = np.load(server_tiny_model_root / "reference-output.npy")
    np.testing.assert_allclose(model.predict(images), expected, rtol=1e-4, atol=1e-6)
    model.close()


def test_a_missing_onnx_file_fails_the_load_with_how_to_make_it(server_tiny_model_root: Path) -> None:
    model = batched(server_tiny_model_root, backend="onnx")
    with pytest.raises(Exception, match="no ONNX model; create it"):
        model.load()
    assert not model.ready
    assert "onnx_export" in model.state_message


# --- v2 binary tensor data ----------------------------------------------------------------------


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
    for value in ("abc", "-5", str(len(body) + 1)):
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


def test_a_model_that_answers_wrongly_is_a_500_not_a_retryable_503(
    server_tiny_model_root: Path, server_make_app: Callable[..., Flask], monkeypatch: pytest.MonkeyPatch
) -> None:
    model = batched(server_tiny_model_root)
    model.load()
    client = server_make_app(model).test_client()
    assert model._batcher is not None
    monkeypatch.setattr(model._batcher, "_predict", lambda images: np.zeros((1, 10), np.float32))

    response = client.post("/predict", json={"inputs": np.zeros((3, 28, 28)).tolist()})

    assert response.status_code == 500
    assert response.headers.get("Retry-After") is None
    assert response.get_json() == {
        "error": "the model answered wrongly (the model returned 1 rows for a batch of 3 images); "
        "this is a server fault, not a bad request",
        "reason": "internal",
    }
    model.close()


def test_a_model_call_stuck_beyond_the_request_timeout_fails_readiness_until_it_returns(
    server_tiny_model_root: Path, server_make_app: Callable[..., Flask], monkeypatch: pytest.MonkeyPatch
) -> None:
    model = SavedModel(
        resolve(server_tiny_model_root, "mnist", "1"),
        batching=BatchingConfig(max_batch_size=8, timeout_s=1.0),
    )
    model.load()
    client = server_make_app(model).test_client()
    assert model._batcher is not None
    runner = model._batcher._predict
    entered, release = threading.Event(), threading.Event()

    def wedged(images: np.ndarray) -> np.ndarray:
        entered.set()
        assert release.wait(30)
        return runner(images)

    monkeypatch.setattr(model._batcher, "_predict", wedged)
    image = {"inputs": np.zeros((28, 28)).tolist()}
    with ThreadPoolExecutor(max_workers=1) as pool:
        stuck = pool.submit(client.post, "/predict", json=image)  # runs the model in its own thread
        assert entered.wait(30)
        assert client.get("/readyz").status_code == 200  # a call in progress is not yet stuck
        # Requests queued behind it give up after the timeout, and readiness fails from then on.
        queued = client.post("/predict", json=image)
        assert (queued.status_code, queued.get_json()["reason"]) == (503, "overloaded")
        for path in ("/readyz", "/v2/health/ready", "/v2/models/mnist/ready"):
            response = client.get(path)
            assert response.status_code == 503, path
            assert response.get_json()["reason"] == "not_ready"
            assert "the model looks stuck" in response.get_json()["error"]
        assert client.get("/healthz").status_code == 200
        release.set()
        assert stuck.result(30).status_code == 200
    assert client.get("/readyz").status_code == 200
    model.close()
