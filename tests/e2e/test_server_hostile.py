"""The real ``mnist-server`` (lean, one worker) against hostile and excessive clients.

- 256 connections trickling their headers or their bodies a byte at a time hold no thread:
  probes and predictions keep answering quickly; a stalled body is cut with a JSON 408 after
  BODY_TIMEOUT (or, arriving in a burst beyond MAX_INFLIGHT, refused at once with a 503),
  trickled headers and idle keep-alive connections are closed after KEEP_ALIVE_TIMEOUT.
- A burst far beyond MAX_INFLIGHT gets fast JSON 503s with Retry-After for the excess, answers
  the rest, and the probes stay fast meanwhile.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
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
BODY_TIMEOUT_S = 4
KEEP_ALIVE_S = 2


@dataclass(frozen=True)
class Server:
    url: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture(scope="module")
def model_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mnist_server.backends.onnx_export import export_onnx
    from mnist_server.export import export_model

    root = tmp_path_factory.mktemp("hostile-models")
    version = export_model(tiny_keras_model(seed=7, hidden=16), root, "mnist", "1", {"purpose": "e2e"})
    export_onnx(version.path)
    return root


def start(model_root: Path, log_dir: Path, **settings: str) -> Server:
    port = free_port()
    log_path = log_dir / "server.log"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT / "model_server"),
        "MNIST_SERVER_MODEL_ROOT": str(model_root),
        "MNIST_SERVER_HOST": "127.0.0.1",
        "MNIST_SERVER_PORT": str(port),
        "MNIST_SERVER_BACKEND": "onnx",
        "MNIST_SERVER_BODY_TIMEOUT": str(BODY_TIMEOUT_S),
        "MNIST_SERVER_KEEP_ALIVE_TIMEOUT": str(KEEP_ALIVE_S),
        **{f"MNIST_SERVER_{name.upper()}": value for name, value in settings.items()},
    }
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "mnist_server.cli"], env=env, stdout=log_file, stderr=subprocess.STDOUT
        )
    server = Server(f"http://127.0.0.1:{port}", port, process, log_path)
    try:
        wait_until_ok(
            f"{server.url}/readyz", "mnist-server ready", STARTUP_DEADLINE_S, process=process, log=server.log
        )
    except WaitTimeoutError:
        process.kill()
        raise
    return server


def stop(server: Server) -> None:
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
    try:
        server.process.wait(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait(timeout=TIMEOUT_S)


@pytest.fixture
def server(model_root: Path, tmp_path: Path) -> Iterator[Server]:
    running = start(model_root, tmp_path, drain_delay="0")
    try:
        yield running
    finally:
        stop(running)
    assert "Traceback" not in running.log(), running.log()


IMAGE = json.dumps({"inputs": np.full((28, 28), 0.3).tolist()}).encode()


async def trickle(port: int, body: bool, outcome: dict[str, list[tuple[float, bytes]]]) -> None:
    """A client that sends a request a byte every half second; records when and how it ended."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    if body:
        writer.write(
            b"POST /predict HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(IMAGE)
        )
    else:
        writer.write(b"GET /healthz HTTP/1.1\r\n")
    answer = b""
    try:
        for _ in range(120):
            writer.write(b" " if body else b"X")
            await writer.drain()
            try:
                answer = await asyncio.wait_for(reader.read(4096), 0.5)
                break
            except TimeoutError:
                continue
    except ConnectionError:
        pass
    outcome["body" if body else "headers"].append((time.monotonic() - started, answer))
    writer.close()


def timed(session: requests.Session, method: str, url: str, **kwargs: object) -> tuple[int, float]:
    started = time.perf_counter()
    response = session.request(method, url, timeout=TIMEOUT_S, **kwargs)  # type: ignore[arg-type]
    return response.status_code, time.perf_counter() - started


def test_slow_and_stalled_clients_hold_no_thread_and_are_cut_in_time(server: Server) -> None:
    outcome: dict[str, list[tuple[float, bytes]]] = {"body": [], "headers": []}

    async def tricklers() -> None:
        await asyncio.gather(*(trickle(server.port, index % 2 == 1, outcome) for index in range(256)))

    attack = threading.Thread(target=asyncio.run, args=(tricklers(),), daemon=True)
    attack.start()
    time.sleep(1.0)  # all 256 connected and trickling

    session = requests.Session()
    latencies: dict[str, list[float]] = {}
    requests_to_time = (("GET", "/healthz", None), ("GET", "/readyz", None), ("POST", "/predict", IMAGE))
    for _ in range(20):
        for method, path, body in requests_to_time:
            status, seconds = timed(
                session, method, server.url + path, data=body, headers={"Content-Type": "application/json"}
            )
            assert status == 200, path
            latencies.setdefault(path, []).append(seconds)
    for path, values in latencies.items():
        # Loose bounds for a shared test machine; docs/benchmarks.md has the measured figures.
        assert statistics.median(values) < 0.05, (path, values)
        assert max(values) < 1.0, (path, values)

    attack.join(BODY_TIMEOUT_S + KEEP_ALIVE_S + 30)
    assert len(outcome["body"]) == len(outcome["headers"]) == 128
    cut = 0
    for seconds, answer in outcome["body"]:
        if answer.startswith(b"HTTP/1.1 503 "):
            # Arrived in the burst while more than MAX_INFLIGHT requests were waiting for the
            # worker: refused at once, before its body was read (Granian's fast refusals).
            assert b'"reason":"overloaded"' in answer
            assert seconds < 1.5, seconds
            continue
        assert answer.startswith(b"HTTP/1.1 408 "), answer
        assert b'"reason":"body_timeout"' in answer
        assert b"connection: close" in answer.lower()
        assert BODY_TIMEOUT_S - 0.5 <= seconds <= BODY_TIMEOUT_S + 3, seconds
        cut += 1
    # Far more bodies held while they trickled than requests admitted at once (32).
    assert cut >= 64, cut
    for seconds, answer in outcome["headers"]:
        assert answer == b""  # closed without an answer: the request never began
        assert seconds <= KEEP_ALIVE_S + 3, seconds
    metrics = requests.get(f"{server.url}/metrics", timeout=TIMEOUT_S).text
    assert f'mnist_server_errors_total{{reason="body_timeout"}} {cut}.0' in metrics


def test_idle_keep_alive_connections_are_closed(server: Server) -> None:
    connection = socket.create_connection(("127.0.0.1", server.port))
    connection.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
    connection.settimeout(KEEP_ALIVE_S + 5)
    assert connection.recv(4096).startswith(b"HTTP/1.1 200 ")
    started = time.monotonic()
    assert connection.recv(4096) == b""  # closed by the server
    assert time.monotonic() - started <= KEEP_ALIVE_S + 2
    connection.close()


def test_a_burst_beyond_the_admission_limit_gets_fast_json_503s(model_root: Path, tmp_path: Path) -> None:
    # One decoding thread and room for two requests: a burst of large batches overflows at once.
    server = start(model_root, tmp_path, max_inflight="2", threads="1", drain_delay="0")
    try:
        # 50 images (~0.8 MB): 24 of them stay within the worker's body budget (8 x 4 MiB).
        batch = json.dumps({"inputs": np.random.default_rng(1).random((50, 28, 28)).tolist()}).encode()
        results: list[tuple[int, float, Mapping[str, str], bytes]] = []
        lock = threading.Lock()

        def client() -> None:
            with requests.Session() as session:
                for _ in range(6):
                    started = time.perf_counter()
                    try:
                        response = session.post(
                            f"{server.url}/predict",
                            data=batch,
                            headers={"Content-Type": "application/json"},
                            timeout=TIMEOUT_S,
                        )
                    except requests.ConnectionError:
                        # Refused before its body was read, the connection closed while this
                        # client was still sending it: a refusal the client could not read.
                        with lock:
                            results.append((0, time.perf_counter() - started, {}, b""))
                        continue
                    with lock:
                        results.append(
                            (
                                response.status_code,
                                time.perf_counter() - started,
                                response.headers,
                                response.content,
                            )
                        )

        clients = [threading.Thread(target=client) for _ in range(24)]
        for thread in clients:
            thread.start()
        probes = []
        with requests.Session() as session:
            while any(thread.is_alive() for thread in clients):
                probes.append(timed(session, "GET", f"{server.url}/healthz"))
                time.sleep(0.02)
        for thread in clients:
            thread.join(TIMEOUT_S)
    finally:
        stop(server)
    statuses = {status for status, *_ in results}
    assert {200, 503} <= statuses <= {200, 503, 0}, statuses
    refused = [(seconds, headers, body) for status, seconds, headers, body in results if status == 503]
    for _seconds, headers, body in refused:
        assert headers["Content-Type"] == "application/json"
        assert headers["Retry-After"] == "1"
        assert json.loads(body)["reason"] == "overloaded"
    # Refused without being queued: far quicker than the answered ones.
    answered = [seconds for status, seconds, *_ in results if status == 200]
    assert statistics.median(seconds for seconds, *_ in refused) < statistics.median(answered)
    assert all(status == 200 for status, _ in probes)
    assert statistics.median(seconds for _, seconds in probes) < 0.1
    assert "Traceback" not in server.log(), server.log()


def refused_on_arrival(url: str) -> tuple[float, float]:
    """/metrics: requests refused before they reached Python, and all ``overloaded`` errors."""
    text = requests.get(f"{url}/metrics", timeout=TIMEOUT_S).text
    values = {"arrival": 0.0, "overloaded": 0.0}
    for line in text.splitlines():
        if line.startswith('mnist_server_requests_total{endpoint="(refused on arrival)"'):
            values["arrival"] = float(line.rsplit(" ", 1)[1])
        elif line.startswith('mnist_server_errors_total{reason="overloaded"}'):
            values["overloaded"] = float(line.rsplit(" ", 1)[1])
    return values["arrival"], values["overloaded"]


def test_granian_refuses_the_excess_before_python_and_a_body_being_read_holds_no_place(
    model_root: Path, tmp_path: Path
) -> None:
    """The server's Granian build (third_party/granian) refuses POSTs beyond MAX_INFLIGHT on its
    I/O thread, with the app's JSON 503; /metrics counts them under the endpoint "(refused on
    arrival)". A body still arriving does not count: with MAX_INFLIGHT=1 and four bodies
    trickling, a prediction is still answered."""
    from mnist_server.fast_refusals import FastRefusals

    assert FastRefusals.of_granian().available, "the venv's Granian is upstream's (run make install)"
    server = start(model_root, tmp_path, max_inflight="1", threads="1", drain_delay="0")
    statuses: dict[int, int] = {}
    lock = threading.Lock()
    try:
        head = b"POST /predict HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        trickling = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(4)]
        for connection in trickling:
            # One at a time: each is reading its body (so not counted) before the next arrives.
            connection.sendall(head + b"Content-Length: %d\r\n\r\n{" % len(IMAGE))
            time.sleep(0.2)
        headers = {"Content-Type": "application/json"}
        answer = requests.post(f"{server.url}/predict", data=IMAGE, headers=headers, timeout=TIMEOUT_S)
        assert answer.status_code == 200, answer.text
        for connection in trickling:
            connection.close()

        def client() -> None:
            with requests.Session() as session:
                for _ in range(25):
                    response = session.post(
                        f"{server.url}/predict", data=IMAGE, headers=headers, timeout=TIMEOUT_S
                    )
                    if response.status_code == 503:
                        assert response.headers["Retry-After"] == "1"
                        assert response.json()["reason"] == "overloaded"
                    with lock:
                        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1

        clients = [threading.Thread(target=client) for _ in range(16)]
        for thread in clients:
            thread.start()
        for thread in clients:
            thread.join(TIMEOUT_S)
        assert set(statuses) == {200, 503}, statuses
        # Every 503, Granian's and the app's own, counted once (Granian's within a second).
        deadline = time.monotonic() + 5
        arrival, overloaded = refused_on_arrival(server.url)
        while overloaded != statuses[503] and time.monotonic() < deadline:
            time.sleep(0.2)
            arrival, overloaded = refused_on_arrival(server.url)
        assert overloaded == statuses[503], (overloaded, statuses)
        assert 0 < arrival <= statuses[503], (arrival, statuses)
    finally:
        stop(server)
    assert "Traceback" not in server.log(), server.log()
    assert "without fast refusals" not in server.log()
