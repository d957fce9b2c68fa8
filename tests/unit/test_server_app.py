"""The app factory over a fake model: every endpoint, every bad input, metrics and readiness."""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from flask import Flask
from flask.testing import FlaskClient
from PIL import Image
from prometheus_client import CollectorRegistry
from server_support import FAKE_CONFIDENCE, SERVER_MAX_BATCH, SERVER_MAX_BODY, FakeModel, image_with_digit
from werkzeug.datastructures import FileStorage
from werkzeug.test import TestResponse, encode_multipart

from mnist_server.app import create_app
from mnist_server.settings import Settings


def post_json(client: FlaskClient, path: str, body: Any) -> TestResponse:
    return client.post(path, data=json.dumps(body), content_type="application/json")


def error_of(response: TestResponse, status: int, reason: str) -> str:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert set(body) == {"error", "reason"}
    assert body["reason"] == reason
    assert body["error"]
    return str(body["error"])


def png_bytes(pixels: np.ndarray, mode: str = "L", fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode=mode).save(buffer, format=fmt)
    return buffer.getvalue()


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


# --- health and readiness ------------------------------------------------------------------


def test_liveness_answers_before_the_model_is_loaded(server_make_app: Callable[..., Flask]) -> None:
    client = server_make_app(FakeModel()).test_client()
    assert client.get("/healthz").get_json() == {"status": "alive"}
    assert client.get("/v2/health/live").get_json() == {"live": True}


def test_readiness_is_503_until_loaded_and_warmed_up_then_200(server_make_app: Callable[..., Flask]) -> None:
    model = FakeModel()
    client = server_make_app(model).test_client()
    for path in ("/readyz", "/v2/health/ready", "/v2/models/mnist/ready"):
        assert "not loaded" in error_of(client.get(path), 503, "not_ready")
    error_of(post_json(client, "/predict", {"inputs": image_with_digit(1).tolist()}), 503, "not_ready")
    assert client.get("/v1/models/mnist").get_json()["model_version_status"][0]["state"] == "START"

    model.load()

    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.get_json() == {
        "status": "ready",
        "model": {"name": "mnist", "version": "3", "metadata": {"test_accuracy": 0.5}},
    }
    assert client.get("/v2/health/ready").get_json() == {"ready": True}
    assert client.get("/v2/models/mnist/ready").get_json() == {"name": "mnist", "ready": True}
    assert client.get("/v2/models/mnist/versions/3/ready").status_code == 200


def test_a_failed_load_fails_readiness_and_liveness_with_the_cause(
    server_make_app: Callable[..., Flask],
) -> None:
    model = FakeModel(fail_with="saved_model.pb is corrupt")
    client = server_make_app(model).test_client()
    with pytest.raises(Exception, match="corrupt"):
        model.load()
    assert "corrupt" in error_of(client.get("/readyz"), 503, "load_failed")
    assert "corrupt" in error_of(client.get("/healthz"), 503, "load_failed")
    assert "corrupt" in error_of(client.get("/v2/health/live"), 503, "load_failed")
    status = client.get("/v1/models/mnist").get_json()["model_version_status"][0]
    assert status["state"] == "END"
    assert "corrupt" in status["status"]["error_message"]


def test_readiness_waits_for_the_gate_once_the_model_is_ready(
    server_make_app: Callable[..., Flask], server_settings: Settings, server_registry: CollectorRegistry
) -> None:
    waiting = ["1 of 2 workers have loaded the model"]
    model = FakeModel()
    model.load()
    app = create_app(server_settings, model, server_registry, readiness_gate=lambda: waiting[0] or None)
    client = app.test_client()
    assert error_of(client.get("/readyz"), 503, "not_ready") == waiting[0]
    error_of(client.get("/v2/health/ready"), 503, "not_ready")
    waiting[0] = ""
    assert client.get("/readyz").status_code == 200
    assert client.get("/v2/health/ready").status_code == 200


def test_a_draining_server_is_not_ready_but_answers_and_closes_each_connection(
    server_settings: Settings, server_registry: CollectorRegistry
) -> None:
    draining = [False]
    model = FakeModel()
    model.load()
    app = create_app(server_settings, model, server_registry, draining=lambda: draining[0])
    client = app.test_client()
    image = {"inputs": image_with_digit(3).tolist()}
    assert "Connection" not in post_json(client, "/predict", image).headers

    draining[0] = True

    for path in ("/readyz", "/v2/health/ready", "/v2/models/mnist/ready"):
        response = client.get(path)
        assert "shutting down" in error_of(response, 503, "not_ready"), path
        assert response.headers["Connection"] == "close"
    answer = post_json(client, "/predict", image)
    assert answer.status_code == 200
    assert answer.get_json()["prediction"] == 3
    assert answer.headers["Connection"] == "close"
    assert error_of(post_json(client, "/predict", {}), 400, "missing_field")
    assert client.get("/healthz").status_code == 200


# --- POST /predict -------------------------------------------------------------------------


def test_predict_one_image_answers_the_tutorial_contract(
    server_client: FlaskClient, server_fake_model: FakeModel
) -> None:
    response = post_json(server_client, "/predict", {"inputs": image_with_digit(4).tolist()})
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert list(body) == ["prediction", "probability", "latency"]
    assert body["prediction"] == 4
    assert body["probability"] == pytest.approx(FAKE_CONFIDENCE)
    assert 0 <= body["latency"] < 5
    assert server_fake_model.calls == [1]


def test_predict_a_batch_answers_lists(server_client: FlaskClient, server_fake_model: FakeModel) -> None:
    images = [image_with_digit(d).tolist() for d in (7, 0, 9)]
    body = post_json(server_client, "/predict", {"inputs": images}).get_json()
    assert list(body) == ["predictions", "probabilities", "latency"]
    assert body["predictions"] == [7, 0, 9]
    assert body["probabilities"] == pytest.approx([FAKE_CONFIDENCE] * 3)
    assert server_fake_model.calls == [3]


def test_a_list_of_one_image_is_a_batch_of_one(server_client: FlaskClient) -> None:
    body = post_json(server_client, "/predict", {"inputs": [image_with_digit(2).tolist()]}).get_json()
    assert body["predictions"] == [2]


@pytest.mark.parametrize("content_type", [None, "application/json; charset=utf-8", "application/vnd.x+json"])
def test_predict_reads_json_without_or_with_a_json_content_type(
    server_client: FlaskClient, content_type: str | None
) -> None:
    data = json.dumps({"inputs": np.ones((28, 28), dtype=int).tolist()})
    response = server_client.post("/predict", data=data, content_type=content_type)
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["prediction"] == 9  # integer pixels are fine


def test_predict_accepts_a_raw_png_a_jpeg_and_a_multipart_upload(server_client: FlaskClient) -> None:
    digit = (image_with_digit(3) * 255).round().astype(np.uint8)
    png = server_client.post("/predict", data=png_bytes(digit), content_type="image/png")
    assert png.get_json()["prediction"] == 3
    jpeg = server_client.post("/predict", data=png_bytes(digit, fmt="JPEG"), content_type="image/jpeg")
    assert jpeg.get_json()["prediction"] == 3
    form = server_client.post(
        "/predict",
        data={"file": (io.BytesIO(png_bytes(digit)), "digit.png")},
        content_type="multipart/form-data",
    )
    assert form.status_code == 200
    assert form.get_json()["prediction"] == 3


# --- bad input: always a 4xx JSON error naming the problem ----------------------------------

ROW = [0.5] * 28
GOOD = [ROW] * 28


@pytest.mark.parametrize(
    ("body", "reason", "fragment"),
    [
        (b"this is not json", "invalid_json", "not valid JSON"),
        (b"", "invalid_json", "empty"),
        (b"[1, 2]", "invalid_json", "JSON object"),
        (b"\xff\xfe\x00garbage", "invalid_json", "not valid JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "invalid_json", "not valid JSON"),
        ({"input": GOOD}, "missing_field", "'inputs'"),
        ({"inputs": [ROW] * 27}, "wrong_shape", "[27, 28]"),
        ({"inputs": [[0.5] * 27] * 28}, "wrong_shape", "[28, 27]"),
        ({"inputs": [*[ROW] * 27, [0.5] * 27]}, "wrong_shape", "ragged"),
        ({"inputs": [GOOD, [ROW] * 27]}, "wrong_shape", "ragged"),
        ({"inputs": 0.5}, "wrong_shape", "shape []"),
        ({"inputs": [0.5] * 784}, "wrong_shape", "[784]"),
        ({"inputs": [[GOOD]]}, "wrong_shape", "[1, 1, 28, 28]"),
        ({"inputs": [["0.5"] * 28] * 28}, "wrong_dtype", "strings"),
        ({"inputs": [[0.5] * 27 + ["x"]] * 28}, "wrong_dtype", "strings"),
        ({"inputs": [[True] * 28] * 28}, "wrong_dtype", "booleans"),
        ({"inputs": [[0.5] * 27 + [True]] * 28}, "wrong_dtype", "booleans"),
        ({"inputs": [[0.5] * 27 + [None]] * 28}, "wrong_dtype", "null"),
        ({"inputs": [[0.5] * 27 + [{"a": 1}]] * 28}, "wrong_dtype", "objects"),
        ({"inputs": [[0.5] * 27 + [10**400]] * 28}, "wrong_dtype", "too large"),
        ({"inputs": [[0.5] * 27 + [float("nan")]] * 28}, "non_finite", "NaN"),
        (
            b'{"inputs": [' + b",".join([b"[" + b",".join([b"Infinity"] * 28) + b"]"] * 28) + b"]}",
            "non_finite",
            "Infinity",
        ),
        ({"inputs": [[0.5] * 27 + [1.5]] * 28}, "out_of_range", "max 1.5"),
        ({"inputs": [[0.5] * 27 + [-0.1]] * 28}, "out_of_range", "min -0.1"),
        ({"inputs": [[255] * 28] * 28}, "out_of_range", "1/255"),
        ({"inputs": []}, "empty_batch", "empty"),
        ({"inputs": [GOOD] * (SERVER_MAX_BATCH + 1)}, "batch_too_large", f"at most {SERVER_MAX_BATCH}"),
    ],
    ids=lambda value: None if isinstance(value, dict | bytes) else str(value)[:30],
)
def test_bad_json_input_is_a_4xx_naming_the_problem(
    server_client: FlaskClient,
    server_fake_model: FakeModel,
    body: Any,
    reason: str,
    fragment: str,
) -> None:
    data = body if isinstance(body, bytes) else json.dumps(body)
    response = server_client.post("/predict", data=data, content_type="application/json")
    status = 413 if reason == "batch_too_large" else 400
    assert fragment in error_of(response, status, reason)
    assert server_fake_model.calls == []


def random_json(rng: np.random.Generator, depth: int = 0) -> Any:
    kind = rng.integers(0, 9 if depth < 5 else 6)
    scalars: list[Any] = [None, True, "0.5", float(rng.random()), int(rng.integers(-3, 300)), float("nan")]
    if kind < len(scalars):
        return scalars[kind]
    if kind == 6:
        return {"images": random_json(rng, depth + 1)}
    size = int(rng.choice([0, 1, 2, 27, 28]))
    item = random_json(rng, depth + 1)
    return [item if rng.random() < 0.9 else random_json(rng, depth + 1) for _ in range(size)]


def test_random_json_never_gets_a_5xx(server_client: FlaskClient, server_registry: CollectorRegistry) -> None:
    rng = np.random.default_rng(11)
    for _ in range(60):
        value = random_json(rng)
        tensor = {"name": "x", "shape": [1, 28, 28], "datatype": "FP32", "data": value}
        for path, body in (
            ("/predict", {"inputs": value}),
            ("/v1/models/mnist:predict", {"instances": value}),
            ("/v2/models/mnist/infer", {"inputs": [tensor]}),
        ):
            response = post_json(server_client, path, body)
            assert response.status_code < 500, (path, response.get_json())
    assert sample(server_registry, "mnist_server_errors_total", reason="internal") == 0


def test_booleans_are_rejected_however_they_are_mixed(server_client: FlaskClient) -> None:
    # A `true` elsewhere in the body (not in the pixels) must not reject a good image.
    response = post_json(server_client, "/predict", {"inputs": GOOD, "debug": True})
    assert response.status_code == 200
    image = np.full((28, 28), 0.5).tolist()
    image[27][27] = False
    error_of(post_json(server_client, "/predict", {"inputs": image}), 400, "wrong_dtype")


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "image/gif"])
def test_predict_rejects_other_content_types_with_415(server_client: FlaskClient, content_type: str) -> None:
    response = server_client.post("/predict", data=json.dumps({"inputs": GOOD}), content_type=content_type)
    message = error_of(response, 415, "unsupported_media_type")
    assert content_type in message
    assert "application/json" in message


def test_an_oversize_body_is_413(server_client: FlaskClient) -> None:
    data = b'{"inputs": "' + b"x" * SERVER_MAX_BODY + b'"}'
    response = server_client.post("/predict", data=data, content_type="application/json")
    assert "MAX_BODY_BYTES" in error_of(response, 413, "body_too_large")


def _multipart(payload: bytes) -> tuple[bytes, str]:
    boundary, data = encode_multipart({"file": FileStorage(io.BytesIO(payload), "digit.png")})
    return data, f"multipart/form-data; boundary={boundary}"


@pytest.mark.parametrize(
    ("data", "content_type"),
    [
        (b'{"inputs": "' + b"x" * SERVER_MAX_BODY + b'"}', "application/json"),
        (b"\x89PNG" + b"x" * SERVER_MAX_BODY, "image/png"),
        _multipart(b"\x89PNG" + b"x" * SERVER_MAX_BODY),
    ],
    ids=["json", "png", "multipart"],
)
def test_an_oversize_chunked_body_is_413_too(
    server_client: FlaskClient, data: bytes, content_type: str
) -> None:
    # No Content-Length: the limit must hold while streaming (the server sets wsgi.input_terminated).
    response = server_client.post(
        "/predict",
        input_stream=io.BytesIO(data),
        headers={"Transfer-Encoding": "chunked", "Content-Type": content_type},
        environ_overrides={"wsgi.input_terminated": True},
    )
    error_of(response, 413, "body_too_large")


@pytest.mark.parametrize("form", [False, True], ids=["json", "multipart"])
def test_a_small_chunked_body_is_read(server_client: FlaskClient, form: bool) -> None:
    if form:  # digit 3 is dark enough (mean 0.3) not to be taken for paper and inverted
        data, content_type = _multipart(png_bytes((image_with_digit(3) * 255).round().astype(np.uint8)))
    else:
        data = json.dumps({"inputs": image_with_digit(3).tolist()}).encode()
        content_type = "application/json"
    response = server_client.post(
        "/predict",
        input_stream=io.BytesIO(data),
        headers={"Transfer-Encoding": "chunked", "Content-Type": content_type},
        environ_overrides={"wsgi.input_terminated": True},
    )
    assert response.get_json()["prediction"] == 3


NOISE_PNG = png_bytes(np.random.default_rng(1).integers(0, 256, (28, 28), dtype=np.uint8))


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"definitely not an image", "could not decode"),
        (b"", "empty"),
        (NOISE_PNG[: len(NOISE_PNG) // 2], "could not decode"),  # truncated
        (png_bytes(np.zeros((28, 28), np.uint8), fmt="GIF"), "could not decode"),  # not PNG/JPEG
    ],
)
def test_an_undecodable_image_is_400(server_client: FlaskClient, data: bytes, fragment: str) -> None:
    response = server_client.post("/predict", data=data, content_type="image/png")
    assert fragment in error_of(response, 400, "bad_image")


def test_an_image_declaring_a_huge_canvas_is_refused_before_decoding(server_client: FlaskClient) -> None:
    huge = png_bytes(np.zeros((5000, 5000), np.uint8))  # compresses to a few kB
    assert len(huge) < SERVER_MAX_BODY
    assert "5000x5000" in error_of(
        server_client.post("/predict", data=huge, content_type="image/png"), 400, "bad_image"
    )


def test_a_multipart_upload_without_the_file_field_is_400(server_client: FlaskClient) -> None:
    response = server_client.post(
        "/predict",
        data={"image": (io.BytesIO(b"x"), "digit.png")},
        content_type="multipart/form-data",
    )
    assert "'file'" in error_of(response, 400, "missing_field")


def test_unknown_routes_and_wrong_methods_are_json(server_client: FlaskClient) -> None:
    assert "/nope" in error_of(server_client.get("/nope"), 404, "route_not_found")
    response = server_client.get("/predict")
    assert "POST" in error_of(response, 405, "method_not_allowed")
    assert "POST" in response.headers["Allow"]
    error_of(server_client.get("/v1/models/mnist:predict"), 405, "method_not_allowed")
    error_of(server_client.post("/healthz"), 405, "method_not_allowed")


def test_an_unexpected_exception_is_a_counted_500_json(
    server_make_app: Callable[..., Flask], server_registry: CollectorRegistry
) -> None:
    class BrokenModel(FakeModel):
        def predict(self, images: np.ndarray) -> np.ndarray:
            raise RuntimeError("boom")

    model = BrokenModel()
    model.load()
    client = server_make_app(model).test_client()
    message = error_of(post_json(client, "/predict", {"inputs": GOOD}), 500, "internal")
    assert "RuntimeError" in message
    assert sample(server_registry, "mnist_server_errors_total", reason="internal") == 1
    assert (
        sample(server_registry, "mnist_server_requests_total", endpoint="/predict", status_class="5xx") == 1
    )
    # The worker is still fine afterwards.
    assert client.get("/healthz").status_code == 200


# --- Open Inference Protocol v2 ------------------------------------------------------------


def v2_request(images: np.ndarray, **extra: Any) -> dict[str, Any]:
    tensor = {
        "name": "images",
        "shape": list(images.shape),
        "datatype": "FP32",
        "data": images.ravel().tolist(),
    }
    return {"inputs": [tensor], **extra}


def test_v2_server_and_model_metadata(server_client: FlaskClient) -> None:
    server = server_client.get("/v2").get_json()
    assert server["name"] == "mnist-server"
    assert isinstance(server["version"], str)
    assert server["extensions"] == ["binary_tensor_data"]
    expected = {
        "name": "mnist",
        "versions": ["3"],
        "platform": "fake",
        "inputs": [{"name": "images", "datatype": "FP32", "shape": [-1, 28, 28]}],
        "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}],
    }
    assert server_client.get("/v2/models/mnist").get_json() == expected
    assert server_client.get("/v2/models/mnist/versions/3").get_json() == expected


def test_v2_infer_flat_data_honours_the_request_id(server_client: FlaskClient) -> None:
    images = np.stack([image_with_digit(5), image_with_digit(8)])
    response = post_json(server_client, "/v2/models/mnist/infer", v2_request(images, id="req-42"))
    assert response.status_code == 200
    body = response.get_json()
    assert body["model_name"] == "mnist"
    assert body["model_version"] == "3"
    assert body["id"] == "req-42"
    [output] = body["outputs"]
    assert output["name"] == "probabilities"
    assert output["datatype"] == "FP32"
    assert output["shape"] == [2, 10]
    probabilities = np.asarray(output["data"]).reshape(2, 10)
    assert probabilities.argmax(axis=1).tolist() == [5, 8]


def test_v2_infer_nested_fp64_data_a_version_path_and_a_generated_id(server_client: FlaskClient) -> None:
    tensor = {
        "name": "input-0",
        "shape": [1, 28, 28],
        "datatype": "FP64",
        "data": [image_with_digit(1).tolist()],
    }
    body = {"inputs": [tensor], "outputs": [{"name": "probabilities"}]}
    response = post_json(server_client, "/v2/models/mnist/versions/3/infer", body)
    assert response.status_code == 200, response.get_json()
    result = response.get_json()
    uuid.UUID(result["id"])
    assert np.argmax(result["outputs"][0]["data"]) == 1


@pytest.mark.parametrize(
    ("mutate", "status", "reason", "fragment"),
    [
        (lambda b: b.pop("inputs"), 400, "missing_field", "'inputs'"),
        (lambda b: b.update(inputs={"name": "images"}), 400, "wrong_shape", "exactly one"),
        (lambda b: b.update(inputs=[]), 400, "wrong_shape", "exactly one"),
        (lambda b: b["inputs"].append(b["inputs"][0]), 400, "wrong_shape", "exactly one"),
        (lambda b: b["inputs"][0].pop("datatype"), 400, "missing_field", "'datatype'"),
        (lambda b: b["inputs"][0].pop("data"), 400, "missing_field", "'data'"),
        (lambda b: b["inputs"][0].update(datatype="INT32"), 400, "wrong_dtype", "'INT32'"),
        (lambda b: b["inputs"][0].update(datatype="BYTES"), 400, "wrong_dtype", "FP32 or FP64"),
        (lambda b: b["inputs"][0].update(shape=[1, 784]), 400, "wrong_shape", "[1, 784]"),
        (lambda b: b["inputs"][0].update(shape="1,28,28"), 400, "wrong_shape", "list of integers"),
        (lambda b: b["inputs"][0].update(shape=[2, 28, 28]), 400, "wrong_shape", "needs 1568"),
        (lambda b: b["inputs"][0].update(shape=[0, 28, 28], data=[]), 400, "empty_batch", "empty"),
        (lambda b: b["inputs"][0]["data"].__setitem__(3, "x"), 400, "wrong_dtype", "strings"),
        (lambda b: b["inputs"][0]["data"].__setitem__(3, "0.5"), 400, "wrong_dtype", "strings"),
        # Quotes counted outside the data must not hide a string inside it.
        (
            lambda b: (b.update(id='say "hi"'), b["inputs"][0]["data"].__setitem__(3, "0.5")),
            400,
            "wrong_dtype",
            "strings",
        ),
        (lambda b: b["inputs"][0]["data"].__setitem__(3, float("nan")), 400, "non_finite", "NaN"),
        (lambda b: b["inputs"][0]["data"].__setitem__(3, 2.0), 400, "out_of_range", "[0, 1]"),
        (lambda b: b.update(id=7), 400, "bad_request", "'id'"),
        (lambda b: b.update(outputs=[{"name": "logits"}]), 400, "bad_request", "'logits'"),
        (
            lambda b: b.update(outputs=[{"name": "probabilities", "parameters": {"binary_data": True}}]),
            400,
            "bad_request",
            "binary",
        ),
        (
            lambda b: b["inputs"][0].update(
                shape=[SERVER_MAX_BATCH + 1, 28, 28], data=[0.0] * 784 * (SERVER_MAX_BATCH + 1)
            ),
            413,
            "batch_too_large",
            "at most",
        ),
    ],
)
def test_v2_bad_requests_are_4xx(
    server_client: FlaskClient,
    mutate: Callable[[dict[str, Any]], Any],
    status: int,
    reason: str,
    fragment: str,
) -> None:
    body = v2_request(np.zeros((1, 28, 28), np.float32))
    mutate(body)
    response = post_json(server_client, "/v2/models/mnist/infer", body)
    assert fragment in error_of(response, status, reason)


def test_unknown_model_names_and_versions_are_404(server_client: FlaskClient) -> None:
    body = v2_request(np.zeros((1, 28, 28), np.float32))
    assert "'fashion'" in error_of(
        post_json(server_client, "/v2/models/fashion/infer", body), 404, "model_not_found"
    )
    assert "'9'" in error_of(
        post_json(server_client, "/v2/models/mnist/versions/9/infer", body), 404, "version_not_found"
    )
    error_of(server_client.get("/v2/models/fashion"), 404, "model_not_found")
    error_of(server_client.get("/v2/models/mnist/versions/9/ready"), 404, "version_not_found")
    error_of(server_client.get("/v1/models/fashion"), 404, "model_not_found")
    error_of(
        post_json(server_client, "/v1/models/mnist/versions/9:predict", {"instances": [GOOD]}),
        404,
        "version_not_found",
    )
    error_of(
        post_json(server_client, "/v1/models/fashion:predict", {"instances": [GOOD]}), 404, "model_not_found"
    )


def test_v2_infer_rejects_a_non_json_content_type(server_client: FlaskClient) -> None:
    body = json.dumps(v2_request(np.zeros((1, 28, 28), np.float32)))
    response = server_client.post(
        "/v2/models/mnist/infer", data=body, content_type="application/octet-stream"
    )
    error_of(response, 415, "unsupported_media_type")


# --- TensorFlow Serving REST ---------------------------------------------------------------


def test_tfserving_row_format_answers_predictions(server_client: FlaskClient) -> None:
    images = [image_with_digit(2).tolist(), image_with_digit(6).tolist()]
    response = post_json(server_client, "/v1/models/mnist:predict", {"instances": images})
    assert response.status_code == 200, response.get_json()
    predictions = np.asarray(response.get_json()["predictions"])
    assert predictions.shape == (2, 10)
    assert predictions.argmax(axis=1).tolist() == [2, 6]
    named = [{"images": image} for image in images]
    body = {"signature_name": "serving_default", "instances": named}
    named_response = post_json(server_client, "/v1/models/mnist/versions/3:predict", body)
    assert named_response.get_json() == response.get_json()


def test_tfserving_columnar_format_answers_outputs(server_client: FlaskClient) -> None:
    batch = [image_with_digit(9).tolist()]
    plain = post_json(server_client, "/v1/models/mnist:predict", {"inputs": batch}).get_json()
    named = post_json(server_client, "/v1/models/mnist:predict", {"inputs": {"images": batch}}).get_json()
    assert plain == named
    assert np.argmax(plain["outputs"][0]) == 9


@pytest.mark.parametrize(
    ("body", "status", "reason", "fragment"),
    [
        ({}, 400, "missing_field", "exactly one"),
        ({"instances": [GOOD], "inputs": [GOOD]}, 400, "bad_request", "exactly one"),
        ({"instances": GOOD[0]}, 400, "wrong_shape", "[28]"),
        ({"instances": GOOD}, 400, "wrong_shape", "[28, 28]"),
        ({"instances": {"images": GOOD}}, 400, "wrong_shape", "list"),
        ({"instances": [{"images": GOOD}, GOOD]}, 400, "wrong_shape", "mixes"),
        ({"instances": [{"pixels": GOOD}]}, 400, "bad_request", "'images'"),
        ({"instances": [GOOD] * (SERVER_MAX_BATCH + 1)}, 413, "batch_too_large", "at most"),
        ({"signature_name": "classify", "instances": [GOOD]}, 400, "bad_request", "'classify'"),
        ({"inputs": [[[2.0] * 28] * 28]}, 400, "out_of_range", "[0, 1]"),
    ],
)
def test_tfserving_bad_requests_are_4xx(
    server_client: FlaskClient, body: dict[str, Any], status: int, reason: str, fragment: str
) -> None:
    response = post_json(server_client, "/v1/models/mnist:predict", body)
    assert fragment in error_of(response, status, reason)


def test_tfserving_model_status(server_client: FlaskClient) -> None:
    expected = {
        "model_version_status": [
            {"version": "3", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
        ]
    }
    assert server_client.get("/v1/models/mnist").get_json() == expected
    assert server_client.get("/v1/models/mnist/versions/3").get_json() == expected


# --- metrics ---------------------------------------------------------------------------------


def test_metrics_count_requests_by_route_template_and_status_class(
    server_client: FlaskClient, server_registry: CollectorRegistry
) -> None:
    post_json(server_client, "/predict", {"inputs": image_with_digit(4).tolist()})
    post_json(server_client, "/predict", {"inputs": [image_with_digit(d).tolist() for d in (4, 1, 1)]})
    post_json(server_client, "/predict", {"inputs": [ROW] * 27})
    post_json(server_client, "/v2/models/mnist/infer", v2_request(np.stack([image_with_digit(7)])))
    server_client.get("/no/such/route")

    def requests(endpoint: str, status_class: str) -> float:
        return sample(
            server_registry, "mnist_server_requests_total", endpoint=endpoint, status_class=status_class
        )

    assert requests("/predict", "2xx") == 2
    assert requests("/predict", "4xx") == 1
    assert requests("/v2/models/<name>/infer", "2xx") == 1
    assert requests("unmatched", "4xx") == 1
    labels = {"endpoint": "/predict", "status_class": "2xx"}
    assert server_registry.get_sample_value("mnist_server_request_duration_seconds_count", labels) == 2
    assert sample(server_registry, "mnist_server_inference_duration_seconds_count") == 3
    assert sample(server_registry, "mnist_server_inference_batch_size_sum") == 5
    assert sample(server_registry, "mnist_server_inference_batch_size_bucket", le="1.0") == 2
    assert sample(server_registry, "mnist_server_predictions_total", digit="4") == 2
    assert sample(server_registry, "mnist_server_predictions_total", digit="1") == 2
    assert sample(server_registry, "mnist_server_predictions_total", digit="7") == 1
    # One confidence observation per image classified, in the top class's probability bucket.
    assert sample(server_registry, "mnist_server_prediction_confidence_count") == 5
    assert sample(server_registry, "mnist_server_errors_total", reason="wrong_shape") == 1
    assert sample(server_registry, "mnist_server_errors_total", reason="route_not_found") == 1


def test_metrics_start_at_zero_and_name_the_model(
    server_client: FlaskClient, server_registry: CollectorRegistry
) -> None:
    for digit in range(10):
        assert server_registry.get_sample_value("mnist_server_predictions_total", {"digit": str(digit)}) == 0
    assert server_registry.get_sample_value("mnist_server_errors_total", {"reason": "non_finite"}) == 0
    info = {"model_name": "mnist", "model_version": "3"}
    assert server_registry.get_sample_value("mnist_server_model_info", info) == 1


def test_metrics_endpoint_serves_prometheus_text(server_client: FlaskClient) -> None:
    server_client.get("/healthz")
    response = server_client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=")
    text = response.get_data(as_text=True)
    assert 'mnist_server_requests_total{endpoint="/healthz",status_class="2xx"} 1.0' in text
    assert "# TYPE mnist_server_request_duration_seconds histogram" in text
    assert 'mnist_server_model_info{model_name="mnist",model_version="3"} 1.0' in text
