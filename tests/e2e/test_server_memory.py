"""A worker's memory under the worst-case corpus (bench/worst_case.py): the largest accepted image
of every kind, the largest JSON and v2 bodies, and 4 MiB bodies that would be costly to parse,
sent at once from more clients than the worker has decoding threads, several times over. The
worker's peak RSS must stay under the bound docs/server.md documents, and nothing may get a 5xx.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from types import ModuleType

import pytest
from testkit import free_port, tiny_keras_model, wait_until_ok

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
# docs/server.md#memory: a worker on the onnx backend at the default settings.
RSS_BOUND_MB = 400
THREADS = 4


def worst_case() -> ModuleType:
    spec = importlib.util.spec_from_file_location("worst_case", ROOT / "bench" / "worst_case.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["worst_case"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_the_worst_case_corpus_keeps_a_worker_under_its_memory_bound(tmp_path: Path) -> None:
    from mnist_server.backends.onnx_export import export_onnx
    from mnist_server.export import export_model

    version = export_model(tiny_keras_model(seed=3, hidden=16), tmp_path / "models", "mnist", "1", {})
    export_onnx(version.path)
    port = free_port()
    log_path = tmp_path / "server.log"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT / "model_server"),
        "MNIST_SERVER_MODEL_ROOT": str(tmp_path / "models"),
        "MNIST_SERVER_HOST": "127.0.0.1",
        "MNIST_SERVER_PORT": str(port),
        "MNIST_SERVER_BACKEND": "onnx",
        "MNIST_SERVER_THREADS": str(THREADS),
        "MNIST_SERVER_DRAIN_DELAY": "0",
    }
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "mnist_server.cli"], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ok(f"{url}/readyz", "mnist-server ready", 120, process=process, log=log_path.read_text)
        [worker] = [
            int(pid) for pid in Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
        ]

        corpus = worst_case()
        statuses: dict[str, set[int]] = {}
        lock = threading.Lock()

        def record(name: str, status: int) -> None:
            with lock:
                statuses.setdefault(name, set()).add(status)

        result = corpus.run(url, worker, corpus.corpus(), clients=4 * THREADS, rounds=2, on_result=record)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    peak = result["after"]["peak_rss_mb"]
    assert peak < RSS_BOUND_MB, result
    # Every image and full batch is answered (or refused for load: 503, or a closed connection
    # past the body budget); what must be refused is refused with a 4xx; never a 5xx otherwise.
    for name, codes in statuses.items():
        assert codes <= {200, 400, 413, 503, 0}, (name, codes)
        if name.startswith(("png-", "jpeg-", "json-tutorial", "json-tfserving", "json-v2", "v2-binary-max")):
            assert 200 in codes, (name, codes)
        else:
            assert codes & {400, 413}, (name, codes)
    assert "Traceback" not in log_path.read_text()
