"""A real Prometheus scraping a real model server, the operator's metrics and kube-state-metrics.

- `model_server`: `mnist-server` on a free 127.0.0.1 port, serving a tiny Keras model exported
  with mnist_server.export.export_model, with traffic (`traffic`) on every protocol, good and bad;
- `operator_metrics`: the operator's real metric objects (mnist_operator.metrics.Metrics), fed
  reconciles by a thread and exposed by prometheus_client's HTTP server (running the operator
  itself needs a control plane; tests/integration/packaging does that);
- `kube_state_metrics`: a static kube-state-metrics exposition (kube-state-metrics.prom here),
  since there are no real Deployments to describe;
- `prometheus`: /usr/bin/prometheus with a temporary config and data dir, a 1 s scrape interval,
  the three targets labelled the way the Prometheus operator labels ServiceMonitor targets
  (namespace, service, pod; job = the Service name), and the shipped alert rules loaded.
"""

from __future__ import annotations

import http.server
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import yaml
from prometheus_client import CollectorRegistry, start_http_server
from testkit import tiny_keras_model

from mnist_operator.metrics import Metrics

sys.path.insert(0, str(Path(__file__).parent))
from monitoring_support import (
    MODEL_TARGET_LABELS,
    OPERATOR_TARGET_LABELS,
    Prometheus,
    running_prometheus,
    start_model_server,
    stop,
)
from testkit import free_port, wait_for

ROOT = Path(__file__).resolve().parents[3]
HERE = Path(__file__).resolve().parent
RULE_FILE = ROOT / "manifests" / "monitoring" / "prometheus-rule.yaml"


@pytest.fixture(scope="module")
def model_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`<root>/mnist/1`: a tiny seeded Keras model (untrained: the metrics are the point here)."""
    from mnist_server.export import export_model

    model = tiny_keras_model(seed=7)
    root = tmp_path_factory.mktemp("monitoring-models")
    export_model(model, root, "mnist", "1", {"purpose": "dashboard and alert tests"})
    return root


@pytest.fixture(scope="module")
def model_server(model_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log_path = tmp_path_factory.mktemp("monitoring-server") / "server.log"
    url, process = start_model_server(model_root, "1", log_path)
    try:
        yield url
    finally:
        stop(process)


@pytest.fixture(scope="module")
def traffic(model_server: str) -> Iterator[dict[str, int]]:
    """Requests on every protocol until the module ends: predictions, batches and bad input."""
    rng = np.random.default_rng(11)
    sent: dict[str, int] = {"ok": 0, "client_error": 0}
    stop = threading.Event()
    # Not from the environment: requests would read the proxy variables for every call, iterating
    # os.environ while pytest sets PYTEST_CURRENT_TEST for the next test, and a KeyError from that
    # race ended this thread in CI, leaving the later tests without traffic.
    session = requests.Session()
    session.trust_env = False

    def one_round() -> None:
        image = rng.random((28, 28), dtype=np.float32)
        batch = rng.random((4, 28, 28), dtype=np.float32)
        calls = [
            ("/predict", {"inputs": image.tolist()}),
            ("/predict", {"inputs": batch.tolist()}),
            (
                "/v2/models/mnist/infer",
                {
                    "inputs": [
                        {
                            "name": "images",
                            "shape": [1, 28, 28],
                            "datatype": "FP32",
                            "data": image.ravel().tolist(),
                        }
                    ]
                },
            ),
            ("/v1/models/mnist:predict", {"instances": batch.tolist()}),
            ("/predict", {"inputs": [[0.5] * 27] * 28}),  # wrong shape: a 400
            ("/predict", {"inputs": [[2.0] * 28] * 28}),  # out of range: a 400
        ]
        for path, body in calls:
            status = session.post(model_server + path, json=body, timeout=10).status_code
            sent["ok" if status < 400 else "client_error"] += 1

    def loop() -> None:
        while not stop.is_set():
            one_round()
            stop.wait(0.2)

    one_round()
    worker = threading.Thread(target=loop, name="traffic", daemon=True)
    worker.start()
    try:
        yield sent
    finally:
        stop.set()
        worker.join(15)
        session.close()


@pytest.fixture(scope="module")
def operator_metrics() -> Iterator[str]:
    """The operator's metric objects, kept busy like an operator reconciling a few models."""
    registry = CollectorRegistry()
    metrics = Metrics.create(registry)
    metrics.observe_error("InvalidSpec")  # once, long ago: no lasting error rate
    metrics.leader.set(1)  # it reconciles, so it is the replica holding the Lease
    stop_event = threading.Event()

    def reconcile_forever() -> None:
        durations = (0.004, 0.02, 0.08, 0.3)
        count = 0
        while not stop_event.wait(0.1):
            count += 1
            metrics.reconciles.labels(result="retry" if count % 10 == 0 else "success").inc()
            metrics.duration.observe(durations[count % len(durations)])
            if count % 5 == 0:
                metrics.observe_write("patch", "MnistModel")

    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    worker = threading.Thread(target=reconcile_forever, name="reconciles", daemon=True)
    worker.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        stop_event.set()
        worker.join(5)
        server.shutdown()
        thread.join(5)


@pytest.fixture(scope="module")
def kube_state_metrics() -> Iterator[str]:
    body = (HERE / "kube-state-metrics.prom").read_bytes()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/metrics" else 404)
            self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            self.end_headers()
            if self.path == "/metrics":
                self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, name="ksm", daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        thread.join(5)


@pytest.fixture(scope="module")
def prometheus(
    tmp_path_factory: pytest.TempPathFactory,
    model_server: str,
    operator_metrics: str,
    kube_state_metrics: str,
) -> Iterator[Prometheus]:
    work = tmp_path_factory.mktemp("prometheus")
    rules = yaml.safe_load(RULE_FILE.read_text())["spec"]
    (work / "rules.yaml").write_text(yaml.safe_dump(rules, sort_keys=False))
    server_target = model_server.removeprefix("http://")
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(work / "rules.yaml")],
        "scrape_configs": [
            {
                "job_name": MODEL_TARGET_LABELS["service"],
                "static_configs": [{"targets": [server_target], "labels": MODEL_TARGET_LABELS}],
            },
            {
                "job_name": "mnist-operator",
                "static_configs": [{"targets": [operator_metrics], "labels": OPERATOR_TARGET_LABELS}],
            },
            {
                # kube-state-metrics' own namespace/deployment labels describe the objects.
                "job_name": "kube-state-metrics",
                "honor_labels": True,
                "static_configs": [{"targets": [kube_state_metrics]}],
            },
        ],
    }

    def all_targets_up() -> bool | None:
        targets = handle.api("targets")["activeTargets"]
        return True if len(targets) == 3 and all(t["health"] == "up" for t in targets) else None

    with running_prometheus(config, work) as handle:
        wait_for(all_targets_up, "every scrape target up", timeout=60)
        yield handle
