"""Raw HTTP from Hypothesis against the real ``mnist-server`` (lean, one worker): any request
line, headers and body get an answer below 500 (or the connection closed, for bytes that are
not HTTP), in bounded time, and the server keeps serving.

Malformed HTTP is refused by the HTTP layer (hyper) itself with 400 or 431 and no JSON body;
everything that parses as HTTP reaches the app and gets its JSON.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from testkit import free_port, tiny_keras_model, wait_until_ok

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
STATUS_LINE = re.compile(rb"HTTP/1\.[01] (\d{3}) ")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    from mnist_server.backends.onnx_export import export_onnx
    from mnist_server.export import export_model

    root = tmp_path_factory.mktemp("fuzz-models")
    version = export_model(tiny_keras_model(seed=2, hidden=16), root, "mnist", "1", {})
    export_onnx(version.path)
    port = free_port()
    log_path = tmp_path_factory.mktemp("fuzz-server") / "server.log"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT / "model_server"),
        "MNIST_SERVER_MODEL_ROOT": str(root),
        "MNIST_SERVER_HOST": "127.0.0.1",
        "MNIST_SERVER_PORT": str(port),
        "MNIST_SERVER_BACKEND": "onnx",
        "MNIST_SERVER_MAX_BODY_BYTES": "65536",
        "MNIST_SERVER_BODY_TIMEOUT": "2",
        "MNIST_SERVER_KEEP_ALIVE_TIMEOUT": "2",
        "MNIST_SERVER_DRAIN_DELAY": "0",
    }
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "mnist_server.cli"], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ok(f"{url}/readyz", "mnist-server ready", 120, process=process, log=log_path.read_text)
        yield url, port
        assert process.poll() is None, log_path.read_text()
        assert "Traceback" not in log_path.read_text(), log_path.read_text()
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)


TOKEN = st.text(st.characters(min_codepoint=33, max_codepoint=126, exclude_characters=":"), max_size=12)
METHODS = st.one_of(st.sampled_from(["GET", "POST", "HEAD", "OPTIONS", "PUT", "DELETE"]), TOKEN)
PATHS = st.one_of(
    st.sampled_from(
        [b"/predict", b"/healthz", b"/readyz", b"/v2/models/mnist/infer", b"/v1/models/mnist:predict"]
    ),
    st.binary(max_size=60).map(
        lambda raw: b"/" + raw.replace(b" ", b"").replace(b"\r", b"").replace(b"\n", b"")
    ),
)
HEADER_NAMES = st.one_of(
    st.sampled_from(
        [
            "Content-Type",
            "Content-Length",
            "Transfer-Encoding",
            "Inference-Header-Content-Length",
            "Connection",
            "Expect",
            "Host",
        ]
    ),
    TOKEN,
)
HEADER_VALUES = st.one_of(
    st.sampled_from(
        [
            b"application/json",
            b"image/png",
            b"multipart/form-data; boundary=b",
            b"chunked",
            b"0",
            b"7",
            b"100000000",
            b"-1",
            b"close",
            b"100-continue",
        ]
    ),
    st.binary(max_size=40).map(lambda raw: raw.replace(b"\r", b"").replace(b"\n", b"")),
)
BODIES = st.one_of(
    st.binary(max_size=2000),
    st.just(json.dumps({"inputs": np.full((28, 28), 0.5).tolist()}).encode()),
    st.just(b"3\r\nabc\r\n0\r\n\r\n"),
)


def exchange(port: int, raw: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        try:
            connection.sendall(raw)
            connection.shutdown(socket.SHUT_WR)  # the body ends here, whatever was announced
        except OSError:
            pass  # the server may answer and close before it has everything
        received = b""
        try:
            while chunk := connection.recv(65536):
                received += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    return received


# No example database: nothing is written into the working tree.
@settings(max_examples=120, deadline=15_000, suppress_health_check=list(HealthCheck), database=None)
@given(
    method=METHODS,
    path=PATHS,
    version=st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/x", b""]),
    headers=st.lists(st.tuples(HEADER_NAMES, HEADER_VALUES), max_size=6),
    body=BODIES,
)
def test_any_raw_request_is_answered_below_500_and_the_server_keeps_serving(
    server: tuple[str, int],
    *,
    method: str,
    path: bytes,
    version: bytes,
    headers: list[tuple[str, bytes]],
    body: bytes,
) -> None:
    url, port = server
    raw = method.encode() + b" " + path + b" " + version + b"\r\n"
    raw += b"Host: fuzz\r\n" + b"".join(name.encode() + b": " + value + b"\r\n" for name, value in headers)
    raw += b"\r\n" + body
    started = time.monotonic()
    answer = exchange(port, raw)
    assert time.monotonic() - started < 10
    for status in STATUS_LINE.findall(answer):
        assert int(status) < 500, answer[:500]
    assert requests.get(f"{url}/healthz", timeout=5).status_code == 200
