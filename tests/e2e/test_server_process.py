"""The real ``mnist-server`` process (Granian, 2 workers x 4 threads) over real HTTP.

A small model is trained through the trainer's Python API on a subset of real MNIST, the console
script is started on a free 127.0.0.1 port, and every protocol is exercised with real test
digits. Ends with SIGTERM, which must stop the server cleanly (exit 0) in time.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
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
from devkit import free_ports
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from testkit import free_port, wait_until_ok

from mnist_server.data import MnistData, Split, load_mnist
from mnist_server.training import TrainConfig, train

pytestmark = pytest.mark.slow

SERVER_SCRIPT = Path(sys.executable).parent / "mnist-server"
WORKERS = 2
MAX_BODY = 1024 * 1024
STARTUP_DEADLINE_S = 180.0
TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Trained:
    root: Path
    version: str
    test: Split  # held-out real digits the model never saw
    test_accuracy: float


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    url: str
    log_path: Path
    probe_url: str  # the probe listener (MNIST_SERVER_PROBE_PORT), which every worker binds

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    full = load_mnist()
    # Shrunk so training and evaluation take seconds: 2,000 training images, 2 epochs.
    data = MnistData(
        train=full.train.head(2000),
        validation=full.validation.head(500),
        test=full.test.head(1000),
        source=full.source,
        sha256=full.sha256,
    )
    root = tmp_path_factory.mktemp("e2e-models")
    result = train(TrainConfig(output=root, epochs=2, batch_size=64, quiet=True), data=data)
    return Trained(root, result.model_version.version, data.test, result.test_accuracy)


@pytest.fixture(scope="module")
def server(trained: Trained, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    if not SERVER_SCRIPT.exists():
        pytest.fail(f"{SERVER_SCRIPT} is missing: run `{sys.executable} -m pip install -e . --no-deps`")
    port, probe_port = free_ports(2)
    log_path = tmp_path_factory.mktemp("e2e-server") / "server.log"
    env = {
        **os.environ,
        "MNIST_SERVER_MODEL_ROOT": str(trained.root),
        "MNIST_SERVER_HOST": "127.0.0.1",
        "MNIST_SERVER_PORT": str(port),
        "MNIST_SERVER_PROBE_PORT": str(probe_port),
        "MNIST_SERVER_WORKERS": str(WORKERS),
        "MNIST_SERVER_THREADS": "4",
        "MNIST_SERVER_MAX_BODY_BYTES": str(MAX_BODY),
        "MNIST_SERVER_GRACEFUL_TIMEOUT": "10",
        "MNIST_SERVER_DRAIN_DELAY": "1",
        # The trainer wrote model.onnx too; the lean backend has its own e2e test (test_server_lean).
        "MNIST_SERVER_BACKEND": "tensorflow",
    }
    with log_path.open("wb") as log_file:
        process = subprocess.Popen([str(SERVER_SCRIPT)], env=env, stdout=log_file, stderr=subprocess.STDOUT)
    running = Server(process, f"http://127.0.0.1:{port}", log_path, f"http://127.0.0.1:{probe_port}")
    try:
        wait_until_every_worker_is_ready(running)
        yield running
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=TIMEOUT_S)


def wait_until_every_worker_is_ready(server: Server) -> None:
    # Whichever worker answers, /readyz is 200 only once every worker has loaded the model.
    wait_until_ok(
        f"{server.url}/readyz", "every mnist-server worker ready", STARTUP_DEADLINE_S,
        process=server.process, log=server.log,
    )  # fmt: skip
    log = server.log()
    assert log.count("loaded model mnist version") == WORKERS, log
    # Before it was marked ready, each worker put what lives as long as it out of the collector's
    # reach (serving.freeze_startup_heap).
    assert log.count("the collector now skips the") == WORKERS, log


def post(server: Server, path: str, body: object) -> requests.Response:
    return requests.post(f"{server.url}{path}", json=body, timeout=TIMEOUT_S)


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def scrape(server: Server) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = requests.get(f"{server.url}/metrics", timeout=TIMEOUT_S).text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def predict_count(samples: dict[tuple[str, frozenset[tuple[str, str]]], float]) -> float:
    key = ("mnist_server_requests_total", frozenset({("endpoint", "/predict"), ("status_class", "2xx")}))
    return samples.get(key, 0.0)


def test_the_trained_model_is_good_enough_to_judge_the_server(trained: Trained) -> None:
    assert trained.test_accuracy > 0.85


def test_readiness_and_liveness(server: Server) -> None:
    ready = requests.get(f"{server.url}/readyz", timeout=TIMEOUT_S).json()
    assert ready["status"] == "ready"
    assert ready["model"]["name"] == "mnist"
    assert "test_accuracy" in ready["model"]["metadata"]
    assert requests.get(f"{server.url}/healthz", timeout=TIMEOUT_S).json() == {"status": "alive"}
    assert requests.get(f"{server.url}/v2/health/ready", timeout=TIMEOUT_S).json() == {"ready": True}
    # The probe port answers the same, from whichever worker the kernel hands the connection.
    assert server.log().count("answers probes on port") == WORKERS, server.log()
    for _ in range(8):
        assert requests.get(f"{server.probe_url}/readyz", timeout=TIMEOUT_S).json() == ready
        assert requests.get(f"{server.probe_url}/healthz", timeout=TIMEOUT_S).json() == {"status": "alive"}
    assert requests.get(f"{server.probe_url}/predict", timeout=TIMEOUT_S).status_code == 404


def test_single_images_are_mostly_classified_correctly(server: Server, trained: Trained) -> None:
    correct = 0
    for image, label in zip(trained.test.images[:40], trained.test.labels[:40], strict=True):
        body = post(server, "/predict", {"inputs": image.tolist()}).json()
        assert set(body) == {"prediction", "probability", "latency"}
        assert 0 <= body["probability"] <= 1
        correct += body["prediction"] == int(label)
    assert correct >= 32  # >= 80 %


def test_a_batch_of_real_digits(server: Server, trained: Trained) -> None:
    images, labels = trained.test.images[:64], trained.test.labels[:64]
    body = post(server, "/predict", {"inputs": images.tolist()}).json()
    assert len(body["predictions"]) == len(body["probabilities"]) == 64
    assert np.mean(np.asarray(body["predictions"]) == labels) >= 0.8


def test_png_uploads_raw_and_multipart_including_a_scanned_looking_digit(
    server: Server, trained: Trained
) -> None:
    correct = 0
    for image, label in zip(trained.test.images[:10], trained.test.labels[:10], strict=True):
        pixels = (image * 255).round().astype(np.uint8)
        raw = requests.post(
            f"{server.url}/predict",
            data=png(pixels),
            headers={"Content-Type": "image/png"},
            timeout=TIMEOUT_S,
        )
        # Dark ink on white paper, 4x larger: inverted and resized back by the server.
        paper = 255 - np.kron(pixels, np.ones((4, 4), np.uint8))
        form = requests.post(
            f"{server.url}/predict", files={"file": ("digit.png", png(paper))}, timeout=TIMEOUT_S
        )
        correct += raw.json()["prediction"] == int(label)
        correct += form.json()["prediction"] == int(label)
    assert correct >= 16  # of 20


def test_open_inference_protocol_v2(server: Server, trained: Trained) -> None:
    metadata = requests.get(f"{server.url}/v2/models/mnist", timeout=TIMEOUT_S).json()
    assert metadata["inputs"] == [{"name": "images", "datatype": "FP32", "shape": [-1, 28, 28]}]
    assert metadata["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}]
    assert metadata["platform"] == "tensorflow_savedmodel"
    assert requests.get(f"{server.url}/v2", timeout=TIMEOUT_S).json()["name"] == "mnist-server"

    images = trained.test.images[:5]
    tensor = {"name": "images", "shape": [5, 28, 28], "datatype": "FP32", "data": images.ravel().tolist()}
    response = post(
        server,
        f"/v2/models/mnist/versions/{metadata['versions'][0]}/infer",
        {"id": "e2e", "inputs": [tensor]},
    )
    body = response.json()
    assert body["id"] == "e2e"
    [output] = body["outputs"]
    assert output["shape"] == [5, 10]
    probabilities = np.reshape(output["data"], (5, 10))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, atol=1e-4)


def test_tensorflow_serving_rest(server: Server, trained: Trained) -> None:
    status = requests.get(f"{server.url}/v1/models/mnist", timeout=TIMEOUT_S).json()
    assert status["model_version_status"][0]["state"] == "AVAILABLE"
    images, labels = trained.test.images[:8], trained.test.labels[:8]
    predictions = np.asarray(
        post(server, "/v1/models/mnist:predict", {"instances": images.tolist()}).json()["predictions"]
    )
    assert predictions.shape == (8, 10)
    assert np.mean(predictions.argmax(axis=1) == labels) >= 0.75
    outputs = post(server, "/v1/models/mnist:predict", {"inputs": {"images": images.tolist()}}).json()[
        "outputs"
    ]
    np.testing.assert_allclose(outputs, predictions, rtol=1e-5, atol=1e-6)


def test_bad_input_gets_4xx_json_and_the_workers_keep_serving(server: Server) -> None:
    url = f"{server.url}/predict"

    def error(response: requests.Response, status: int, reason: str) -> None:
        assert response.status_code == status, response.text
        assert response.json()["reason"] == reason

    error(
        requests.post(
            url, data=b"{not json", headers={"Content-Type": "application/json"}, timeout=TIMEOUT_S
        ),
        400,
        "invalid_json",
    )
    error(
        requests.post(url, data=b"x", headers={"Content-Type": "text/plain"}, timeout=TIMEOUT_S),
        415,
        "unsupported_media_type",
    )
    error(post(server, "/predict", {"inputs": [[0.5] * 28] * 27}), 400, "wrong_shape")
    nan = b'{"inputs": [' + b",".join([b"[" + b",".join([b"NaN"] * 28) + b"]"] * 28) + b"]}"
    error(
        requests.post(url, data=nan, headers={"Content-Type": "application/json"}, timeout=TIMEOUT_S),
        400,
        "non_finite",
    )
    error(post(server, "/predict", {"inputs": [[2.0] * 28] * 28}), 400, "out_of_range")
    error(
        requests.post(url, data=b"garbage", headers={"Content-Type": "image/png"}, timeout=TIMEOUT_S),
        400,
        "bad_image",
    )
    error(post(server, "/v2/models/other/infer", {}), 404, "model_not_found")
    error(requests.get(f"{server.url}/nowhere", timeout=TIMEOUT_S), 404, "route_not_found")
    error(requests.get(url, timeout=TIMEOUT_S), 405, "method_not_allowed")
    oversize = b'{"inputs": "' + b"x" * MAX_BODY + b'"}'
    error(
        requests.post(url, data=oversize, headers={"Content-Type": "application/json"}, timeout=TIMEOUT_S),
        413,
        "body_too_large",
    )

    def chunks() -> Iterator[bytes]:  # a generator body is sent chunked, with no Content-Length
        yield b'{"inputs": "'
        for _ in range(MAX_BODY // 65536 + 1):
            yield b"x" * 65536
        yield b'"}'

    chunked = requests.post(
        url, data=chunks(), headers={"Content-Type": "application/json"}, timeout=TIMEOUT_S
    )
    assert chunked.request.headers.get("Transfer-Encoding") == "chunked"
    error(chunked, 413, "body_too_large")

    assert requests.get(f"{server.url}/readyz", timeout=TIMEOUT_S).status_code == 200
    assert post(server, "/predict", {"inputs": [[0.0] * 28] * 28}).status_code == 200


def test_metrics_count_requests_across_both_workers(server: Server, trained: Trained) -> None:
    before = predict_count(scrape(server))
    sent = 40
    image = {"inputs": trained.test.images[0].tolist()}
    # Separate connections in parallel, so both workers take requests.
    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(lambda _: post(server, "/predict", image).status_code, range(sent)))
    assert statuses == [200] * sent
    # Each scrape is answered by one worker; every one must report the total of all workers.
    for _ in range(6):
        samples = scrape(server)
        assert predict_count(samples) == before + sent
        digit = str(int(trained.test.labels[0]))
        assert samples[("mnist_server_predictions_total", frozenset({("digit", digit)}))] >= sent * 0.5
        # Concurrent requests may share a model call (micro-batching): count images, not calls.
        assert samples[("mnist_server_inference_batch_size_sum", frozenset())] >= sent
    info = [key for key in samples if key[0] == "mnist_server_model_info"]
    assert info == [
        ("mnist_server_model_info", frozenset({("model_name", "mnist"), ("model_version", trained.version)}))
    ]


def worker_pids(server: Server) -> list[int]:
    pid = server.process.pid
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def test_a_killed_worker_is_replaced_and_the_server_recovers(server: Server, trained: Trained) -> None:
    before = predict_count(scrape(server))
    old = worker_pids(server)
    assert len(old) == WORKERS, old
    os.kill(old[0], signal.SIGKILL)
    # Not ready until the replacement has loaded the model; then ready, and serving, again.
    deadline = time.monotonic() + STARTUP_DEADLINE_S
    while True:
        assert server.process.poll() is None, server.log()
        pids = worker_pids(server)
        try:
            ready = requests.get(f"{server.url}/readyz", timeout=5).status_code == 200
        except requests.RequestException:
            ready = False
        if ready and len(pids) == WORKERS and old[0] not in pids:
            break
        assert time.monotonic() < deadline, f"no recovery from a killed worker:\n{server.log()}"
        time.sleep(0.2)
    image = {"inputs": trained.test.images[0].tolist()}
    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(lambda _: post(server, "/predict", image).status_code, range(20)))
    assert statuses == [200] * 20
    samples = scrape(server)
    # The dead worker's counts are kept (counters never go backwards); its live gauge is gone.
    assert predict_count(samples) == before + 20
    # The metrics directory, from the files a living worker has mapped.
    maps = Path(f"/proc/{worker_pids(server)[0]}/maps").read_text().split()
    metrics_dir = next(Path(m).parent for m in maps if "/mnist-server-metrics-" in m and m.endswith(".db"))
    assert list(metrics_dir.glob(f"counter_{old[0]}.db"))
    assert not list(metrics_dir.glob(f"gauge_live*_{old[0]}.db"))
    assert [key for key in samples if key[0] == "mnist_server_model_info"] == [
        ("mnist_server_model_info", frozenset({("model_name", "mnist"), ("model_version", trained.version)}))
    ]


def stop(process: subprocess.Popen[bytes], log: Path) -> tuple[int, float]:
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    try:
        code = process.wait(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"mnist-server did not stop within {TIMEOUT_S:.0f} s of SIGTERM:\n{log.read_text()}")
    return code, time.monotonic() - started


def test_sigterm_stops_the_server_cleanly(server: Server) -> None:
    readiness: list[int] = []

    def watch_readiness() -> None:  # as the kubelet's probe would, on the probe port
        while server.process.poll() is None:
            with contextlib.suppress(requests.RequestException):
                readiness.append(requests.get(f"{server.probe_url}/readyz", timeout=1).status_code)
            time.sleep(0.05)

    watcher = threading.Thread(target=watch_readiness, daemon=True)
    watcher.start()
    time.sleep(0.3)
    code, seconds = stop(server.process, server.log_path)
    watcher.join(5)
    # Ready until SIGTERM, then not ready at once while the server drains (1 s).
    assert readiness[0] == 200 and 503 in readiness, readiness
    assert readiness[readiness.index(503) :].count(200) == 0, readiness
    assert code == 0, server.log()
    assert 1 <= seconds < 10, f"took {seconds:.1f} s"  # the 1 s drain, then a quick stop
    assert "Traceback" not in server.log(), server.log()


def test_sigterm_while_the_workers_are_still_loading(trained: Trained, tmp_path: Path) -> None:
    log_path = tmp_path / "server.log"
    env = {
        **os.environ,
        "MNIST_SERVER_MODEL_ROOT": str(trained.root),
        "MNIST_SERVER_HOST": "127.0.0.1",
        "MNIST_SERVER_PORT": str(free_port()),
        "MNIST_SERVER_WORKERS": str(WORKERS),
        "MNIST_SERVER_BACKEND": "tensorflow",  # seconds to load: time to stop it mid-load
    }
    with log_path.open("wb") as log_file:
        process = subprocess.Popen([str(SERVER_SCRIPT)], env=env, stdout=log_file, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while log_path.read_text().count("is loading model") < WORKERS:
        assert time.monotonic() < deadline, log_path.read_text()
        time.sleep(0.1)
    code, seconds = stop(process, log_path)
    assert "loaded model" not in log_path.read_text()  # it really was stopped mid-load
    assert code == 0, log_path.read_text()
    assert seconds < 10, f"took {seconds:.1f} s"  # never ready, so no drain (5 s by default)
    assert "serving for" not in log_path.read_text()


def test_cli_help_and_a_bad_setting_need_no_tensorflow() -> None:
    help_text = subprocess.run(
        [str(SERVER_SCRIPT), "--help"], capture_output=True, text=True, timeout=60, check=True
    )
    assert "MNIST_SERVER_WORKERS" in help_text.stdout
    bad = subprocess.run(
        [str(SERVER_SCRIPT)],
        env={**os.environ, "MNIST_SERVER_THREADS": "many"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert bad.returncode == 2
    assert bad.stderr.strip() == "mnist-server: MNIST_SERVER_THREADS='many': not an integer"
    assert "Traceback" not in bad.stderr
