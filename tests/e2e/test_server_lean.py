"""The lean server: ``mnist-server`` on the onnx backend, over real HTTP, without TensorFlow.

A tiny Keras model is exported and converted to ONNX; the real server process (Granian, one
worker) serves it with MNIST_SERVER_BACKEND=onnx. Concurrent requests with distinct images must
each get their own answer through the micro-batcher, the v2 binary extension must work over a
real socket, and the worker must never have loaded TensorFlow's libraries.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import requests
from testkit import tiny_keras_model

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
STARTUP_DEADLINE_S = 120.0
TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Lean:
    url: str
    process: subprocess.Popen[bytes]
    expected: np.ndarray  # ONNX Runtime's probabilities for `images`, computed in this process
    images: np.ndarray


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def lean(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lean]:
    from mnist_server.backends import open_runner
    from mnist_server.backends.onnx_export import export_onnx
    from mnist_server.export import export_model

    model = tiny_keras_model(seed=5, hidden=32)
    root = tmp_path_factory.mktemp("lean-models")
    version = export_model(model, root, "mnist", "1", {"purpose": "lean server test"})
    export_onnx(version.path)
    images = np.random.default_rng(9).random((40, 28, 28), dtype=np.float32)
    expected = open_runner("onnx", version.path)(images)

    port = free_port()
    log_path = tmp_path_factory.mktemp("lean-server") / "server.log"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT / "model_server"),
        "MNIST_SERVER_MODEL_ROOT": str(root),
        "MNIST_SERVER_HOST": "127.0.0.1",
        "MNIST_SERVER_PORT": str(port),
        "MNIST_SERVER_WORKERS": "1",
        "MNIST_SERVER_BACKEND": "onnx",
        "MNIST_SERVER_BATCH_MAX_SIZE": "8",
    }
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "mnist_server.cli"], env=env, stdout=log_file, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_DEADLINE_S
        while True:
            assert process.poll() is None, log_path.read_text()
            try:
                if requests.get(f"{url}/readyz", timeout=5).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, f"not ready in time:\n{log_path.read_text()}"
            time.sleep(0.2)
        yield Lean(url, process, expected, images)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=TIMEOUT_S)


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
