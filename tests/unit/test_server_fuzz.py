"""Property-based tests (Hypothesis): for any input, the decoders of the three protocols and the
app's HTTP layer answer a client error or a result, never a 5xx or an uncaught exception, and in
bounded time.

Each test runs Hypothesis' generated examples (and the shrunk failures it remembers); the
deadline bounds the time of one example.
"""

from __future__ import annotations

import asyncio
import io
import json
from dataclasses import replace
from typing import Any

import numpy as np
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image
from prometheus_client import CollectorRegistry
from server_support import FakeModel
from test_server_http import Protocol, Scope

from mnist_server.app import App, create_app
from mnist_server.decoding import images_from_upload, parse_json
from mnist_server.errors import ApiError
from mnist_server.protocols import tfserving, tutorial, v2
from mnist_server.settings import Settings

MAX_BATCH = 4
# No example database: nothing is written into the working tree (failures print their example,
# to be pinned with @example).
FUZZ = settings(max_examples=150, deadline=1000, suppress_health_check=[HealthCheck.too_slow], database=None)

# JSON values shaped like the protocols' payloads: numbers near [0, 1], the names the parsers
# look for, nested lists of the sizes that matter (0, 1, 27, 28), and anything else.
KEYS = st.sampled_from(
    [
        "inputs",
        "instances",
        "images",
        "name",
        "shape",
        "datatype",
        "data",
        "id",
        "outputs",
        "parameters",
        "binary_data_size",
        "signature_name",
        "binary_data",
        "x",
    ]
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=0, max_value=1),
    st.sampled_from(["FP32", "FP64", "INT8", "BYTES", "images", "probabilities", "serving_default", ""]),
    st.text(max_size=20),
)


def _lists(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    sizes = st.sampled_from([0, 1, 2, 27, 28])
    return st.one_of(
        sizes.flatmap(lambda size: st.lists(children, min_size=size, max_size=size)),
        sizes.flatmap(lambda size: st.lists(st.floats(0, 1), min_size=size, max_size=size)),
        st.dictionaries(KEYS, children, max_size=5),
    )


JSON_VALUES = st.recursive(SCALARS, _lists, max_leaves=80)
JSON_OBJECTS = st.dictionaries(KEYS, JSON_VALUES, max_size=6)


def _image(rows: int, columns: int, value: float = 0.5) -> list[list[float]]:
    return [[value] * columns for _ in range(rows)]


def _client_error(error: ApiError) -> None:
    assert 400 <= error.status < 500, (error.status, error.message)
    assert error.message


def _decode_all(raw: bytes) -> None:
    """Every decoder of the three protocols on one body: a result or a 4xx ApiError."""
    try:
        body = parse_json(raw, MAX_BATCH)
    except ApiError as error:
        _client_error(error)
        return
    for parse in (
        lambda: tutorial.parse_request(body, MAX_BATCH),
        lambda: tfserving.parse_predict_request(body, MAX_BATCH),
        lambda: v2.parse_infer_request(body, MAX_BATCH),
    ):
        try:
            images = parse()
        except ApiError as error:
            _client_error(error)
        else:
            array = images.images
            assert array.dtype == np.float32 and array.shape[1:] == (28, 28)
            assert 1 <= array.shape[0] <= MAX_BATCH
            assert np.isfinite(array).all() and array.min() >= 0 and array.max() <= 1


@FUZZ
@given(JSON_OBJECTS)
@example({"inputs": _image(28, 28)})
@example({"inputs": 0, "instances": False})  # found by Hypothesis: a 500 before
@example({"instances": [{"images": _image(28, 28)}]})
@example({"inputs": [{"name": "x", "shape": [1, 28, 28], "datatype": "FP32", "data": [0.5] * 784}]})
def test_any_json_object_is_decoded_or_refused_with_a_4xx(value: dict[str, Any]) -> None:
    _decode_all(json.dumps(value).encode())


@FUZZ
@given(st.binary(max_size=4096))
@example(b"[" * 5000)
@example(b'{"inputs": [' + b'"x",' * 100 + b"0]}")
@example(b'{"inputs": NaN}')
@example(b"\xef\xbb\xbf{}")
def test_any_bytes_are_decoded_or_refused_with_a_4xx(raw: bytes) -> None:
    _decode_all(raw)


@FUZZ
@given(st.text(max_size=12), st.binary(max_size=600), JSON_OBJECTS)
@example("\u00b2", b"", {})  # a digit to str.isdigit, not to int(): was a 500
def test_any_v2_binary_body_is_decoded_or_refused_with_a_4xx(
    header_length: str, tail: bytes, value: dict[str, Any]
) -> None:
    header = json.dumps(value).encode()
    for length in (header_length, str(len(header))):
        try:
            v2.parse_binary_infer_request(header + tail, length, MAX_BATCH)
        except ApiError as error:
            _client_error(error)


def _encoded(fmt: str, mode: str, size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, 128).save(buffer, format=fmt)
    return buffer.getvalue()


SEEDS = [
    _encoded("PNG", "L", (28, 28)),
    _encoded("PNG", "RGBA", (40, 30)),
    _encoded("PNG", "P", (16, 16)),
    _encoded("JPEG", "RGB", (32, 32)),
    _encoded("JPEG", "L", (300, 200)),
]


@FUZZ
@given(
    st.sampled_from(SEEDS),
    st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=12),
    st.integers(0, 10**6),
)
def test_any_corruption_of_an_image_is_decoded_or_a_bad_image_400(
    seed: bytes, flips: list[tuple[int, int]], cut: int
) -> None:
    data = bytearray(seed)
    for position, value in flips:
        data[position % len(data)] = value
    try:
        image = images_from_upload(bytes(data[: max(1, len(data) - cut % len(data))]))
    except ApiError as error:
        _client_error(error)
        assert error.reason.value == "bad_image"
    else:
        assert image.shape == (1, 28, 28) and image.dtype == np.float32


# --- the HTTP layer: any method, path, headers and body ------------------------------------

PATHS = st.one_of(
    st.sampled_from(
        [
            "/predict",
            "/healthz",
            "/readyz",
            "/metrics",
            "/v2",
            "/v2/models/mnist",
            "/v2/models/mnist/infer",
            "/v2/models/mnist/versions/3/infer",
            "/v1/models/mnist:predict",
            "/v1/models/mnist/versions/3:predict",
            "/v1/models/mnist",
        ]
    ),
    st.text(max_size=40).map(lambda text: "/" + text),
)
CONTENT_TYPES = st.one_of(
    st.sampled_from(
        [
            "application/json",
            "application/json; charset=utf-16",
            "image/png",
            "image/jpeg",
            "multipart/form-data",
            "multipart/form-data; boundary=xyz",
            "application/octet-stream",
            "text/plain",
            "",
        ]
    ),
    st.text(max_size=30),
)


def _app() -> App:
    model = FakeModel()
    model.load()
    settings = replace(Settings(), max_batch=MAX_BATCH, max_body_bytes=16 * 1024, body_timeout=1)
    return create_app(settings, model, CollectorRegistry())


@FUZZ
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH"]),
    path=PATHS,
    content_type=CONTENT_TYPES,
    declared=st.one_of(st.none(), st.integers(0, 40_000)),
    binary_header=st.one_of(st.none(), st.text(max_size=8), st.integers(0, 5000).map(str)),
    body=st.one_of(st.binary(max_size=2048), JSON_OBJECTS.map(lambda value: json.dumps(value).encode())),
    chunk=st.integers(1, 4096),
)
def test_any_request_gets_a_response_below_500_with_a_json_error(
    *,
    method: str,
    path: str,
    content_type: str,
    declared: int | None,
    binary_header: str | None,
    body: bytes,
    chunk: int,
) -> None:
    headers = {"content-type": content_type}
    if declared is not None:
        headers["content-length"] = str(declared)
    if binary_header is not None:
        headers["inference-header-content-length"] = binary_header
    protocol = Protocol([body[i : i + chunk] for i in range(0, len(body), chunk)])
    app = _app()
    asyncio.run(asyncio.wait_for(app.__rsgi__(Scope(method, path, headers), protocol), 5))
    assert 200 <= protocol.status < 500, (protocol.status, protocol.body[:300])
    if protocol.status >= 400:
        error = protocol.json()
        assert set(error) == {"error", "reason"}
    assert app.inflight() == 0 and app.budget.used == 0
