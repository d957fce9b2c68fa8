"""The lean server: ``mnist-server`` on the onnx backend, over real HTTP, without TensorFlow.

A tiny Keras model is exported and converted to ONNX; the real server process (Granian, one
worker) serves it with MNIST_SERVER_BACKEND=onnx. Concurrent requests with distinct images must
each get their own answer through the micro-batcher, the v2 binary extension must work over a
real socket, and the worker must never have loaded TensorFlow's libraries. On SIGTERM, a server
with two workers drains: readiness fails at once, requests are still answered (closing their
connections), a request in flight when the workers stop is finished, and the process exits in
time.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import requests
from testkit import WaitTimeoutError, free_port, tiny_keras_model, wait_until_ok

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
STARTUP_DEADLINE_S = 120.0
TIMEOUT_S = 30.0


@dataclass(frozen=True)
class LeanVersion:
    root: Path
    expected: np.ndarray  # ONNX Runtime's probabilities for `images`, computed in this process
    images: np.ndarray


@dataclass(frozen=True)
class Lean:
    url: str
    process: subprocess.Popen[bytes]
    expected: np.ndarray
    images: np.ndarray
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture(scope="module")
def lean_version(tmp_path_factory: pytest.TempPathFactory) -> LeanVersion:
    from mnist_server.backends import open_runner
    from mnist_server.backends.onnx_export import export_onnx
    from mnist_server.export import export_model

    model = tiny_keras_model(seed=5, hidden=32)
    root = tmp_path_factory.mktemp("lean-models")
    version = export_model(model, root, "mnist", "1", {"purpose": "lean server test"})
    export_onnx(version.path)
    images = np.random.default_rng(9).random((40, 28, 28), dtype=np.float32)
    return LeanVersion(root, open_runner("onnx", version.path)(images), images)


def start(version: LeanVersion, log_dir: Path, **settings: str) -> Lean:
    """The lean server on a free port, ready; ``settings`` are extra MNIST_SERVER_* variables."""
    port = free_port()
    log_path = log_dir / "server.log"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT / "model_server"),
        "MNIST_SERVER_MODEL_ROOT": str(version.root),
        "MNIST_SERVER_HOST": "127.0.0.1",
        "MNIST_SERVER_PORT": str(port),
        "MNIST_SERVER_WORKERS": "1",
        "MNIST_SERVER_BACKEND": "onnx",
        "MNIST_SERVER_BATCH_MAX_SIZE": "8",
        **{f"MNIST_SERVER_{name.upper()}": value for name, value in settings.items()},
    }
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "mnist_server.cli"], env=env, stdout=log_file, stderr=subprocess.STDOUT
        )
    lean = Lean(f"http://127.0.0.1:{port}", process, version.expected, version.images, log_path)
    try:
        wait_until_ok(
            f"{lean.url}/readyz", "lean mnist-server ready", STARTUP_DEADLINE_S, process=process, log=lean.log
        )
    except WaitTimeoutError:
        process.kill()
        raise
    return lean


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=TIMEOUT_S)


@pytest.fixture(scope="module")
def lean(lean_version: LeanVersion, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lean]:
    server = start(lean_version, tmp_path_factory.mktemp("lean-server"))
    try:
        yield server
    finally:
        stop(server.process)


def test_concurrent_distinct_images_each_get_their_own_answer(lean: Lean) -> None:
    def ask(index: int) -> np.ndarray:
        response = requests.post(
            f"{lean.url}/v2/models/mnist/infer",
            json={
                "inputs": [
                    {
                        "name": "images",
                        "shape": [1, 28, 28],
                        "datatype": "FP32",
                        "data": lean.images[index].ravel().tolist(),
                    }
                ]
            },
            timeout=TIMEOUT_S,
        )
        assert response.status_code == 200, response.text
        return np.asarray(response.json()["outputs"][0]["data"], dtype=np.float32)

    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(ask, range(len(lean.images))))
    for index, answer in enumerate(answers):
        np.testing.assert_allclose(
            answer, lean.expected[index], rtol=1e-5, atol=1e-7, err_msg=f"image {index}"
        )
    platform = requests.get(f"{lean.url}/v2/models/mnist", timeout=TIMEOUT_S).json()["platform"]
    assert platform == "onnxruntime_onnx"


def test_binary_batch_larger_than_the_model_batch_is_split_and_answered_in_order(lean: Lean) -> None:
    raw = lean.images[:20].astype("<f4").tobytes()  # 20 images, model calls of at most 8
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "images",
                    "shape": [20, 28, 28],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": len(raw)},
                }
            ]
        }
    ).encode()
    response = requests.post(
        f"{lean.url}/v2/models/mnist/infer",
        data=header + raw,
        headers={
            "Content-Type": "application/octet-stream",
            "Inference-Header-Content-Length": str(len(header)),
        },
        timeout=TIMEOUT_S,
    )
    assert response.status_code == 200, response.text
    output = response.json()["outputs"][0]
    np.testing.assert_allclose(
        np.reshape(output["data"], output["shape"]), lean.expected[:20], rtol=1e-5, atol=1e-7
    )


def test_the_worker_never_loads_tensorflow(lean: Lean) -> None:
    workers = [
        int(p) for p in Path(f"/proc/{lean.process.pid}/task/{lean.process.pid}/children").read_text().split()
    ]
    assert workers, "Granian has no worker process"
    for pid in [lean.process.pid, *workers]:
        maps = Path(f"/proc/{pid}/maps").read_text()
        assert "onnxruntime" in maps or pid == lean.process.pid
        assert "tensorflow" not in maps, f"process {pid} mapped TensorFlow's libraries"


def read_response(connection: socket.socket) -> bytes:
    connection.settimeout(TIMEOUT_S)
    received = b""
    while chunk := connection.recv(65536):  # the server closes the connection after answering
        received += chunk
    return received


def test_sigterm_drains_then_stops_without_failing_a_request(
    lean_version: LeanVersion, tmp_path: Path
) -> None:
    drain_s, graceful_s = 3, 10
    server = start(
        lean_version, tmp_path, workers="2", drain_delay=str(drain_s), graceful_timeout=str(graceful_s)
    )
    body = json.dumps({"inputs": lean_version.images[0].tolist()}).encode()
    json_headers = {"Content-Type": "application/json"}
    predict = f"{server.url}/predict"
    try:
        # In flight across the whole shutdown: headers and part of the body now, the rest only
        # once the workers have been told to stop.
        in_flight = socket.create_connection(("127.0.0.1", int(server.url.rsplit(":", 1)[1])))
        in_flight.sendall(
            b"POST /predict HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body[:100])
        )
        keep_alive = requests.Session()
        first = keep_alive.post(predict, data=body, headers=json_headers, timeout=TIMEOUT_S)
        assert first.status_code == 200
        assert "close" not in first.headers.get("Connection", "")

        # Steady traffic on new connections: (when sent, status and content type, or the error).
        outcomes: list[tuple[float, tuple[object, object]]] = []
        done = threading.Event()

        def traffic() -> None:
            while not done.is_set():
                sent = time.monotonic()
                try:
                    answer = requests.post(predict, data=body, headers=json_headers, timeout=5)
                    outcomes.append((sent, (answer.status_code, answer.headers.get("Content-Type"))))
                except requests.RequestException as exc:
                    outcomes.append((sent, (type(exc).__name__, None)))
                time.sleep(0.02)

        sender = threading.Thread(target=traffic, daemon=True)
        sender.start()
        time.sleep(0.3)
        signalled = time.monotonic()
        server.process.send_signal(signal.SIGTERM)

        # Not ready at once, whichever worker answers; still serving, closing each connection.
        for path in ("/readyz", "/v2/health/ready", "/v2/models/mnist/ready", "/readyz", "/readyz"):
            ready = requests.get(f"{server.url}{path}", timeout=TIMEOUT_S)
            assert ready.status_code == 503, (path, ready.text)
            assert ready.json()["reason"] == "not_ready"
            assert "shutting down" in ready.json()["error"]
        assert time.monotonic() - signalled < 1.0
        again = keep_alive.post(predict, data=body, headers=json_headers, timeout=TIMEOUT_S)
        assert again.status_code == 200
        assert again.headers["Connection"] == "close"
        assert requests.get(f"{server.url}/healthz", timeout=TIMEOUT_S).status_code == 200

        while "Stopping worker" not in server.log():
            assert time.monotonic() - signalled < graceful_s, server.log()
            time.sleep(0.05)
        assert time.monotonic() - signalled >= drain_s - 0.1
        in_flight.sendall(body[100:])
        answer = read_response(in_flight)
        assert answer.startswith(b"HTTP/1.1 200 "), answer
        assert b'"prediction"' in answer

        code = server.process.wait(timeout=graceful_s + 5)
        took = time.monotonic() - signalled
        done.set()
        sender.join(TIMEOUT_S)
    finally:
        stop(server.process)
    assert code == 0, server.log()
    assert drain_s <= took < graceful_s, f"took {took:.1f} s"
    assert "Traceback" not in server.log(), server.log()
    # Everything sent before the drain was nearly over was answered; none with a non-JSON error.
    answered = [outcome for sent, outcome in outcomes if sent < signalled + drain_s - 1.0]
    assert len(answered) > 10
    assert set(answered) == {(200, "application/json")}, answered
    assert all(outcome[1] == "application/json" for _, outcome in outcomes if isinstance(outcome[0], int))


def test_sigterm_before_the_model_is_ready_stops_at_once(lean_version: LeanVersion, tmp_path: Path) -> None:
    # A version that fails to load: the server never turns ready, so nothing was routed to it.
    broken = tmp_path / "models" / "mnist" / "1"
    broken.mkdir(parents=True)
    (broken / "saved_model.pb").write_bytes(b"")  # complete-looking, but no model.onnx
    server_log = tmp_path / "server.log"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT / "model_server"),
        "MNIST_SERVER_MODEL_ROOT": str(tmp_path / "models"),
        "MNIST_SERVER_HOST": "127.0.0.1",
        "MNIST_SERVER_PORT": str(free_port()),
        "MNIST_SERVER_BACKEND": "onnx",
        "MNIST_SERVER_DRAIN_DELAY": "20",
        "MNIST_SERVER_GRACEFUL_TIMEOUT": "25",
    }
    with server_log.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "mnist_server.cli"], env=env, stdout=log_file, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + STARTUP_DEADLINE_S
        while "is not being served" not in server_log.read_text():
            assert time.monotonic() < deadline, server_log.read_text()
            time.sleep(0.1)
        signalled = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=TIMEOUT_S) == 0
        assert time.monotonic() - signalled < 10
        assert "serving for" not in server_log.read_text()
    finally:
        stop(process)
